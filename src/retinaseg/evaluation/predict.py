"""Segment new fundus images with a trained model: class planes and an overlay per image.

    retinaseg-predict IMAGE... --model PATH_OR_MLFLOW_URI --out DIR [--threshold 0.5 | --eval EVAL_JSON]
        [--no-crop] [--save-probabilities]

``--model`` is a ``model.keras`` file, a ``models/<variant>`` folder or an MLflow model URI
(``runs:/<run_id>/model``; from the Model Registry ``models:/retinaseg-<task>/<version>`` or
``models:/retinaseg-<task>@champion``, the best evaluated model of the task). Each image
gives ``DIR/<stem>.npy`` (uint8 {0,1} class planes [H,W,C] at the image's own size) and
``DIR/<stem>_overlay.png``. Lesions are kept inside the field of view only. ``--eval
metrics/eval/<variant>/eval.json`` applies that evaluation's post-processing: its per-class
thresholds (chosen on validation images), smallest component and optic-disc rule.

Serving. ``mlflow models serve -m models:/retinaseg-<task>@champion --env-manager local -p 5001``
serves the Keras model alone; what happens before and after it stays here. Request: POST
``/invocations`` with JSON ``{"inputs": X}``, X of shape [N, S, S, 3]: N images of the
model's input size S (run.json ``image_size``), RGB pixel values 0-255 as numbers (float32
in the model's signature; the model scales them to [0, 1] itself), each the fundus cut to
its bounding box and resized to S x S with ``fundus.crop_resize`` (``predict_image``). Answer:
``{"predictions": P}``, P of shape [N, S, S, C], the class probabilities (a sigmoid plane
for one class; softmax over background and classes otherwise), before thresholds, cleaning
and the field-of-view rule. ``--save-probabilities`` writes both sides for each image:
``DIR/<stem>_input.npy`` (uint8 [S, S, 3], the request's image) and
``DIR/<stem>_probabilities.npy`` (float32 [S, S, C], the answer to expect, to float precision).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retinaseg.core import stage
from retinaseg.core.atomic import atomic_path, save_npy
from retinaseg.core.errors import PipelineError, one_line
from retinaseg.evaluation import anatomy
from retinaseg.evaluation.postprocess import Rules, probability
from retinaseg.evaluation.score import Scoring
from retinaseg.model.trained import TrainedModel, load_trained, predict_batches
from retinaseg.prepare.fundus import crop_resize, full_box, image_fundus_box, image_fundus_mask

#: Lesion colours of the overlay, chosen to stand out on an orange-red retina.
PALETTE = ((0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 128, 255), (255, 255, 255))
#: Weight of the lesion colour where it is painted over the image.
ALPHA = 0.55


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="retinaseg-predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="fundus images (any size and mode)")
    parser.add_argument("--model", required=True, metavar="PATH_OR_MLFLOW_URI",
                        help="model.keras, models/<variant>, runs:/<run_id>/model, models:/<name>/<version> "
                             "or models:/<name>@<alias> (e.g. models:/retinaseg-multiclass@champion)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--threshold", type=probability, default=0.5,
                       help="probability threshold of every lesion class (default 0.5)")
    rules.add_argument("--eval", type=Path, metavar="EVAL_JSON",
                       help="take thresholds, smallest component and optic-disc rule from this eval.json")
    parser.add_argument("--no-crop", action="store_true",
                        help="resize the whole image instead of the fundus' bounding box")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <stem>_input.npy (uint8, the image as the model sees it: what to send a "
                             "served model) and <stem>_probabilities.npy (float32, the model's answer)")
    return parser.parse_args(argv)


def output_names(stem: str, save_probabilities: bool) -> list[str]:
    """The files one image writes into the output folder."""
    extra = [f"{stem}_input.npy", f"{stem}_probabilities.npy"] if save_probabilities else []
    return [f"{stem}.npy", f"{stem}_overlay.png", *extra]


def read_image(path: Path) -> np.ndarray:
    """Decode the whole file as uint8 RGB [H,W,3]; truncation shows up here, not mid-run."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PipelineError(f"{path}: unreadable or corrupt image ({one_line(error)}); "
                            "pass a PNG, JPEG or TIFF file") from None


def check_inputs(paths: list[Path], save_probabilities: bool = False) -> None:
    """Decode every image and reject clashing output names before any output is written.

    Images are decoded again when predicted, so memory holds one image at a time.
    """
    seen: dict[str, Path] = {}
    for path in paths:
        for name in output_names(path.stem, save_probabilities):
            if name in seen:
                raise PipelineError(f"{path} and {seen[name]} would both write {name}; rename one")
            seen[name] = path
        read_image(path)


def rules_from_args(args: argparse.Namespace, trained: TrainedModel) -> Rules:
    """``--threshold`` for every class, or the thresholds and cleaning of ``--eval``."""
    lesion_names = trained.task.lesion_names
    if args.eval is None:
        return Rules([args.threshold] * len(lesion_names))
    return Scoring.from_eval_json(args.eval, lesion_names).rules


@dataclass(frozen=True)
class Prediction:
    """One image through the model: what the model saw, what it answered, and the class planes of the image."""

    model_input: np.ndarray  # uint8 [S,S,3]: the fundus cropped and resized
    probabilities: np.ndarray  # float32 [S,S,C]
    planes: np.ndarray  # uint8 {0,1} [H,W,C] at the image's size


def predict_image(trained: TrainedModel, image: np.ndarray, rules: Rules, crop: bool) -> Prediction:
    """Class planes of one RGB image, preprocessed as in training, with the model's input and output.

    Pixels outside the field of view (found from the image) get no class (all planes 0).
    """
    height, width = image.shape[:2]
    box = image_fundus_box(image) if crop else full_box(image)
    resized = crop_resize(image, box, trained.image_size)
    probabilities = predict_batches(trained.model, resized[None])[0]
    fov = image_fundus_mask(resized)
    disc = anatomy.optic_disc_mask(resized, fov) if rules.drop_on_optic_disc else None
    planes = rules.apply(probabilities, fov, disc)
    if trained.task.is_multiclass:
        planes[~fov, 0] = False  # no class outside the field of view
    return Prediction(resized, probabilities.astype(np.float32),
                      paste_back(planes.astype(np.uint8), box, (height, width)))


def paste_back(planes: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [S,S,C] planes onto the box of a zero [H,W,C] canvas.

    Nearest neighbour keeps the planes binary and one-hot; pixel centres are sampled as
    Pillow's NEAREST does.
    """
    left, top, right, bottom = box
    rows = ((np.arange(bottom - top) + 0.5) * planes.shape[0] / (bottom - top)).astype(int)
    cols = ((np.arange(right - left) + 0.5) * planes.shape[1] / (right - left)).astype(int)
    full = np.zeros((*shape, planes.shape[-1]), dtype=np.uint8)
    full[top:bottom, left:right] = planes[np.ix_(rows, cols)]
    return full


def legend_height(image_height: int, rows: int) -> int:
    """Height of the legend strip under the overlay: one row per lesion class."""
    return rows * (_font_size(image_height) + 8) + 8


def _font_size(image_height: int) -> int:
    return max(10, image_height // 40)


def class_overlay(image: np.ndarray, planes: np.ndarray, trained: TrainedModel) -> Image.Image:
    """The image with each lesion class blended in its colour, above a legend strip."""
    painted = image.astype(np.float32)
    lesions = trained.task.lesion_planes
    for index, plane in enumerate(lesions):
        where = planes[..., plane].astype(bool)
        painted[where] = (1 - ALPHA) * painted[where] + ALPHA * np.array(PALETTE[index % len(PALETTE)])
    height, width = image.shape[:2]
    canvas = Image.new("RGB", (width, height + legend_height(height, len(lesions))), "white")
    canvas.paste(Image.fromarray(np.rint(painted).astype(np.uint8)), (0, 0))
    draw, size = ImageDraw.Draw(canvas), _font_size(height)
    font = ImageFont.load_default(size)
    for index, plane in enumerate(lesions):
        y = height + 8 + index * (size + 8)
        draw.rectangle((8, y, 8 + size, y + size), fill=PALETTE[index % len(PALETTE)], outline="black")
        draw.text((16 + size, y), trained.task.plane_names[plane], fill="black", font=font)
    return canvas


def write_outputs(path: Path, image: np.ndarray, prediction: Prediction, trained: TrainedModel, out_dir: Path,
                  save_probabilities: bool) -> list[Path]:
    """Write the files of ``output_names`` atomically; return their paths."""
    paths = [out_dir / name for name in output_names(path.stem, save_probabilities)]
    save_npy(paths[0], prediction.planes)
    with atomic_path(paths[1]) as tmp:
        class_overlay(image, prediction.planes, trained).save(tmp, format="PNG")
    if save_probabilities:
        save_npy(paths[2], prediction.model_input)
        save_npy(paths[3], prediction.probabilities)
    return paths


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_inputs(args.images, args.save_probabilities)
    trained = load_trained(args.model)
    rules = rules_from_args(args, trained)
    crop = trained.crop_to_fundus and not args.no_crop
    print(f"model {args.model}: task {trained.task.name}, classes {', '.join(trained.task.plane_names)}, "
          f"{trained.image_size} px, {'cropped to the fundus' if crop else 'whole image'}")
    for path in args.images:
        image = read_image(path)
        prediction = predict_image(trained, image, rules, crop)
        written = write_outputs(path, image, prediction, trained, args.out, args.save_probabilities)
        counts = prediction.planes.sum(axis=(0, 1), dtype=np.int64)
        pixels = ", ".join(f"{name} {count}" for name, count in zip(trained.task.plane_names, counts.tolist()))
        print(f"{path.name}: {image.shape[1]}x{image.shape[0]} -> {', '.join(map(str, written))}; {pixels} px")


def cli() -> None:
    """The ``retinaseg-predict`` command (``python -m retinaseg.evaluation.predict`` too)."""
    stage.run(main)


if __name__ == "__main__":
    cli()
