"""Segment new fundus images with a trained model: class planes, a detection table and an overlay per image.

    retinaseg-predict IMAGE... --model PATH_OR_MLFLOW_URI --out DIR [--threshold 0.5 | --eval EVAL_JSON]
        [--no-crop] [--save-probabilities]

``--model`` is a ``model.keras`` file, a ``models/<variant>`` folder or an MLflow model URI
(``runs:/<run_id>/model``; from the Model Registry ``models:/retinaseg-<task>/<version>`` or
``models:/retinaseg-<task>@champion``, the best evaluated model of the task). Each image
gives ``DIR/<stem>.npy`` (uint8 {0,1} class planes [H,W,C] at the image's own size),
``DIR/<stem>_detections.json`` (each 8-connected lesion component of those planes, as evaluation
labels them: class, centroid [x, y], bbox [x0, y0, x1, y1) in image pixels, area, peak and mean
probability; with the thresholds used) and ``DIR/<stem>_overlay.png`` (each component outlined in
its class colour, so the lesion under it stays visible). An image's files are written all
together or not at all. Lesions are kept inside the field of view only. ``--eval
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
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from retinaseg.core import stage
from retinaseg.core.atomic import atomic_path
from retinaseg.core.errors import PipelineError, one_line
from retinaseg.core.tasks import Task
from retinaseg.evaluation import anatomy
from retinaseg.evaluation.metrics import EIGHT_CONNECTED
from retinaseg.evaluation.postprocess import Rules, probability
from retinaseg.evaluation.score import Scoring
from retinaseg.model.trained import TrainedModel, load_trained, predict_batches
from retinaseg.prepare.fundus import crop_resize, full_box, image_fundus_box, image_fundus_mask

#: Lesion colours of the overlay, chosen to stand out on an orange-red retina.
PALETTE = ((0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 128, 255), (255, 255, 255))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="retinaseg-predict", description=__doc__.splitlines()[0],
        epilog="Writes per image DIR/<stem>.npy (class planes), DIR/<stem>_detections.json (one row per kept "
               "lesion component: class, centroid, bbox, area, peak and mean probability; with the thresholds) "
               "and DIR/<stem>_overlay.png (components outlined in their class colour).")
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
    return [f"{stem}.npy", f"{stem}_overlay.png", f"{stem}_detections.json", *extra]


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
    detections: list[dict]  # the lesion components of ``planes`` (``find_detections``)


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
    probabilities = probabilities.astype(np.float32)
    image_planes = paste_back(planes.astype(np.uint8), box, (height, width))
    detections = find_detections(image_planes, paste_back(probabilities, box, (height, width)), trained.task)
    return Prediction(resized, probabilities, image_planes, detections)


def paste_back(planes: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [S,S,C] planes onto the box of a zero [H,W,C] canvas.

    Nearest neighbour keeps the planes binary and one-hot, and gives each image pixel the
    probability of the model pixel its class came from; pixel centres are sampled as Pillow's
    NEAREST does.
    """
    left, top, right, bottom = box
    rows = ((np.arange(bottom - top) + 0.5) * planes.shape[0] / (bottom - top)).astype(int)
    cols = ((np.arange(right - left) + 0.5) * planes.shape[1] / (right - left)).astype(int)
    full = np.zeros((*shape, planes.shape[-1]), dtype=planes.dtype)
    full[top:bottom, left:right] = planes[np.ix_(rows, cols)]
    return full


def find_detections(planes: np.ndarray, probabilities: np.ndarray, task: Task) -> list[dict]:
    """One row per 8-connected lesion component of uint8 planes [H,W,C], by class, then by falling peak.

    Labelled as evaluation labels components, on the planes as written (at the image's size),
    so the table and ``<stem>.npy`` agree component for component. ``probabilities`` [H,W,C]
    are the model's, resampled like the planes. Centroids are mean pixel indices [x, y]
    (``ndimage.center_of_mass``); bboxes are [x0, y0, x1, y1), as numpy slices take them.
    """
    rows = []
    for plane in task.lesion_planes:
        labels, count = ndimage.label(planes[..., plane], structure=EIGHT_CONNECTED)
        index = np.arange(1, count + 1)
        probability = probabilities[..., plane]
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        centres = ndimage.center_of_mass(labels > 0, labels, index)
        peaks, means = ndimage.maximum(probability, labels, index), ndimage.mean(probability, labels, index)
        found = [{"class": task.plane_names[plane],
                  "centroid": [round(float(x), 1), round(float(y), 1)],
                  "bbox": [box[1].start, box[0].start, box[1].stop, box[0].stop],
                  "area_px": int(area),
                  "peak_probability": round(float(peak), 4),
                  "mean_probability": round(float(mean), 4)}
                 for (y, x), box, area, peak, mean in zip(centres, ndimage.find_objects(labels), areas, peaks, means)]
        rows += sorted(found, key=lambda row: (-row["peak_probability"], -row["area_px"]))
    return rows


def detection_table(path: Path, image: np.ndarray, prediction: Prediction, task: Task, rules: Rules) -> dict:
    """The content of ``<stem>_detections.json``: the detections with what a reviewer needs to read them."""
    return {"image": path.name, "width": image.shape[1], "height": image.shape[0],
            "classes": task.lesion_names,
            "thresholds": dict(zip(task.lesion_names, map(float, rules.thresholds))),
            "detections": prediction.detections}


def table_text(table: dict) -> str:
    """``detection_table`` as JSON with one detection a line, so that it reads (and greps) like a table."""
    rows = ",\n".join(f"    {json.dumps(row)}" for row in table["detections"])
    before, _, after = json.dumps({**table, "detections": []}, indent=2).rpartition("[]")
    return before + (f"[\n{rows}\n  ]" if rows else "[]") + after + "\n"


def legend_height(image_height: int, rows: int) -> int:
    """Height of the legend strip under the overlay: one row per lesion class."""
    return rows * (_font_size(image_height) + 8) + 8


def _font_size(image_height: int) -> int:
    return max(10, image_height // 40)


def outline_width(shape: tuple[int, int]) -> int:
    """Outline thickness in pixels: 1 on small images, 2 at 1500x1152, so a reviewer sees it unzoomed."""
    return 1 + max(shape) // 1000


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of boolean ``mask`` within ``width`` pixels of its edge (the image border counts as edge).

    Drawn inside the components, so an outline never covers the retina around a lesion or
    another class's component.
    """
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def class_overlay(image: np.ndarray, planes: np.ndarray, task: Task) -> Image.Image:
    """The image with each lesion component outlined in its class colour, above a legend strip.

    Outlines rather than fills, so the lesion under each detection stays visible to a reviewer.
    """
    outlined, lesions = image.copy(), task.lesion_planes
    height, width = image.shape[:2]
    thickness = outline_width((height, width))
    for index, plane in enumerate(lesions):
        outlined[outline(planes[..., plane].astype(bool), thickness)] = PALETTE[index % len(PALETTE)]
    canvas = Image.new("RGB", (width, height + legend_height(height, len(lesions))), "white")
    canvas.paste(Image.fromarray(outlined), (0, 0))
    draw, size = ImageDraw.Draw(canvas), _font_size(height)
    font = ImageFont.load_default(size)
    for index, plane in enumerate(lesions):
        y = height + 8 + index * (size + 8)
        draw.rectangle((8, y, 8 + size, y + size), fill=PALETTE[index % len(PALETTE)], outline="black")
        draw.text((16 + size, y), task.plane_names[plane], fill="black", font=font)
    return canvas


def write_outputs(path: Path, image: np.ndarray, prediction: Prediction, task: Task, rules: Rules, out_dir: Path,
                  save_probabilities: bool) -> list[Path]:
    """Write the files of ``output_names``, all or none; return their paths.

    Each file goes to a temporary name inside its own ``atomic_path``, nested, and all are
    renamed into place once the last is written: a failure (a full disk) leaves every earlier
    version as it was, never a new ``.npy`` beside an old table.
    """
    table = table_text(detection_table(path, image, prediction, task, rules))
    writers: list[Callable[[Path], object]] = [
        lambda tmp: np.save(tmp, prediction.planes),
        lambda tmp: class_overlay(image, prediction.planes, task).save(tmp, format="PNG"),
        lambda tmp: tmp.write_text(table, encoding="utf-8"),
    ]
    if save_probabilities:
        writers += [lambda tmp: np.save(tmp, prediction.model_input), lambda tmp: np.save(tmp, prediction.probabilities)]
    paths = [out_dir / name for name in output_names(path.stem, save_probabilities)]
    with contextlib.ExitStack() as stack:
        for target, write in zip(paths, writers, strict=True):
            write(stack.enter_context(atomic_path(target)))
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
        written = write_outputs(path, image, prediction, trained.task, rules, args.out, args.save_probabilities)
        counts = prediction.planes.sum(axis=(0, 1), dtype=np.int64)
        pixels = ", ".join(f"{name} {count}" for name, count in zip(trained.task.plane_names, counts.tolist()))
        print(f"{path.name}: {image.shape[1]}x{image.shape[0]} -> {', '.join(map(str, written))}; {pixels} px")


def cli() -> None:
    """The ``retinaseg-predict`` command (``python -m retinaseg.evaluation.predict`` too)."""
    stage.run(main)


if __name__ == "__main__":
    cli()
