"""Segment new fundus images with a trained model: class planes and an overlay per image.

    python -m retinaseg.predict IMAGE... --model PATH_OR_MLFLOW_URI --out DIR [--threshold 0.5 | --eval EVAL_JSON]
        [--no-crop]

``--model`` is a ``model.keras`` file, a ``models/<variant>`` folder or an MLflow model URI
(``runs:/<run_id>/model``, ``models:/<name>/<version>``). Each image gives ``DIR/<stem>.npy``
(uint8 {0,1} class planes [H,W,C] at the image's own size) and ``DIR/<stem>_overlay.png``.
Lesions are kept inside the field of view only. ``--eval metrics/<variant>/eval.json`` applies
that evaluation's post-processing: its per-class thresholds (chosen on validation images),
smallest component and optic-disc rule.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retinaseg import anatomy, evaluation, metrics, postprocess, stage, tracking
from retinaseg.atomic import atomic_path, save_npy
from retinaseg.errors import PipelineError
from retinaseg.preprocess import fundus_box

#: A pixel is fundus when its brightest channel exceeds this (of 255): above the noise of a
#: near-black camera margin, below the retina's red channel; on the synthetic set it gives
#: exactly the box of fmask.tif.
FUNDUS_LEVEL = 20
#: Lesion colours of the overlay, chosen to stand out on an orange-red retina.
PALETTE = ((0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 128, 255), (255, 255, 255))
#: Weight of the lesion colour where it is painted over the image.
ALPHA = 0.55
_MODEL_HELP = "pass a model.keras file, a models/<variant> folder or an MLflow URI such as runs:/<run_id>/model"


@dataclass(frozen=True)
class Predictor:
    """A loaded model and the preprocessing it was trained with."""

    model: Any
    task: str
    classes: list[str]
    image_size: int
    crop_to_fundus: bool

    @property
    def lesion_planes(self) -> list[int]:
        """Planes that hold lesions: the only one, or all but the leading background."""
        return metrics.lesion_planes(len(self.classes))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m retinaseg.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="fundus images (any size and mode)")
    parser.add_argument("--model", required=True, metavar="PATH_OR_MLFLOW_URI",
                        help="model.keras, models/<variant>, runs:/<run_id>/model or models:/<name>/<version>")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--threshold", type=_probability, default=0.5,
                       help="probability threshold of every lesion class (default 0.5)")
    rules.add_argument("--eval", type=Path, metavar="EVAL_JSON",
                       help="take thresholds, smallest component and optic-disc rule from this eval.json")
    parser.add_argument("--no-crop", action="store_true",
                        help="resize the whole image instead of the fundus' bounding box")
    return parser.parse_args(argv)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def read_image(path: Path) -> np.ndarray:
    """Decode the whole file as uint8 RGB [H,W,3]; truncation shows up here, not mid-run."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split())
        raise PipelineError(f"{path}: unreadable or corrupt image ({reason}); pass a PNG, JPEG or TIFF file") from None


def check_inputs(paths: list[Path]) -> None:
    """Decode every image and reject clashing names before any output is written.

    Images are decoded again when predicted, so memory holds one image at a time.
    """
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise PipelineError(f"{path} and {seen[path.stem]} would both write {path.stem}.npy; rename one")
        seen[path.stem] = path
        read_image(path)


def is_mlflow_uri(spec: str) -> bool:
    """MLflow's own schemes have a single slash (runs:/, models:/); any other has '://'."""
    return spec.startswith(("runs:/", "models:/")) or "://" in spec


def load_predictor(spec: str) -> Predictor:
    """Load ``--model`` and the training settings of its run.json (or defaults from the model)."""
    if is_mlflow_uri(spec):
        model, run = _load_mlflow(spec)
    else:
        model_file = _model_file(Path(spec))
        model, run = _load_keras(model_file), _read_json(model_file.parent / "run.json")
    return _predictor(model, run, spec)


def _model_file(path: Path) -> Path:
    model_file = path / "model.keras" if path.is_dir() else path
    if not model_file.is_file():
        raise PipelineError(f"--model {path}: no such file or no model.keras in it; {_MODEL_HELP}")
    return model_file


def _load_keras(path: Path):
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors and more for bad files
        raise PipelineError(f"--model {path}: not a readable Keras model ({_first_line(error)}); "
                            f"{_MODEL_HELP}") from None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise PipelineError(f"{path}: not valid JSON ({error}); restore the run.json written by training") from None


def _load_mlflow(uri: str) -> tuple[Any, dict[str, Any] | None]:
    """The Keras model behind an MLflow URI, and the run.json of its run if it has one.

    The store is only read, so no experiment is created (unlike ``tracking.setup``), and a
    missing sqlite file is an error rather than a new empty store in the current folder.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    store = tracking.tracking_uri()
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        raise PipelineError(f"--model {uri}: no MLflow store at {store}; run from the project folder "
                            "or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one output line per image
    try:
        model = mlflow.tensorflow.load_model(uri)
    except (MlflowException, OSError, ValueError) as error:
        raise PipelineError(f"--model {uri}: cannot load it from {store} ({_first_line(error)}); "
                            f"check the run id or model name with `mlflow ui --backend-store-uri {store}`") from None
    return model, _mlflow_run_json(uri)


def _mlflow_run_json(uri: str) -> dict[str, Any] | None:
    """run.json from the artifact root of the run that logged the model; None if absent.

    Older runs lack it, and some URIs resolve to no run, so every failure means "absent".
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run_id = mlflow.models.get_model_info(uri).run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json", dst_path=tmp)
            return _read_json(Path(path))
    except (MlflowException, OSError, ValueError, TypeError):
        return None


def _predictor(model, run: dict[str, Any] | None, spec: str) -> Predictor:
    """Merge run.json over defaults read from the model, noting what had to be guessed."""
    size, planes = model.input_shape[1], model.output_shape[-1]
    defaults = {"task": metrics.output_kind(planes),
                "classes": [f"class{i}" for i in range(1, planes + 1)], "image_size": size, "crop_to_fundus": True}
    run = run or {}
    guessed = [key for key in defaults if key not in run]
    if guessed:
        missing = f"the run.json of {spec} lacks {', '.join(guessed)}" if run else f"no run.json found for {spec}"
        print(f"note: {missing}; using " + ", ".join(f"{key}={defaults[key]}" for key in guessed))
    settings = {**defaults, **{key: run[key] for key in defaults if key in run}}
    if len(settings["classes"]) != planes or settings["image_size"] != size:
        raise PipelineError(f"--model {spec}: run.json says {len(settings['classes'])} classes at "
                            f"{settings['image_size']} px but the model has {planes} planes at {size} px; "
                            "pass the run.json written with this model")
    return Predictor(model, **settings)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def field_of_view_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of the fundus, derived from the image since new images have no fmask.

    A pixel is fundus when its brightest channel exceeds ``FUNDUS_LEVEL``; an image with no
    such pixel (all black) keeps its full frame rather than failing.
    """
    mask = image.max(axis=-1) > FUNDUS_LEVEL
    return fundus_box(mask) if mask.any() else (0, 0, image.shape[1], image.shape[0])


@dataclass(frozen=True)
class Rules:
    """How probabilities become lesion masks, as in evaluation."""

    thresholds: list[float]
    min_component_px: int = 1
    drop_on_optic_disc: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, predictor: Predictor) -> Rules:
        lesion_names = [predictor.classes[plane] for plane in predictor.lesion_planes]
        if args.eval is None:
            return cls([args.threshold] * len(lesion_names))
        try:
            summary = json.loads(args.eval.read_text())
            return cls([float(summary["thresholds"][name]) for name in lesion_names],
                       int(summary["min_component_px"]), bool(summary["drop_on_optic_disc"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PipelineError(f"--eval {args.eval}: not an eval.json of this model's classes "
                                f"({', '.join(lesion_names)}): {_first_line(error)}; "
                                "pass metrics/<variant>/eval.json of the same variant") from None


def predict_image(predictor: Predictor, image: np.ndarray, rules: Rules, crop: bool) -> np.ndarray:
    """uint8 {0,1} class planes [H,W,C] for one RGB image, preprocessed as in training.

    Pixels outside the field of view (found from the image) get no class (all planes 0).
    """
    height, width = image.shape[:2]
    box = field_of_view_box(image) if crop else (0, 0, width, height)
    size = predictor.image_size
    # The same call as preprocess.load_sample, so the model sees what it was trained on.
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, box=box,
                                                       reducing_gap=3.0))
    probabilities = evaluation.predict(predictor.model, resized[None])[0]
    fov = resized.max(axis=-1) > FUNDUS_LEVEL
    disc = anatomy.disc_mask(fov.shape, anatomy.locate_optic_disc(resized, fov)) if rules.drop_on_optic_disc else None
    planes = postprocess.clean(postprocess.threshold_masks(probabilities, rules.thresholds), fov,
                               rules.min_component_px, disc)
    if planes.shape[-1] > 1:
        planes[~fov, 0] = False  # no class outside the field of view
    return paste_back(planes.astype(np.uint8), box, (height, width))


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


def overlay(image: np.ndarray, planes: np.ndarray, predictor: Predictor) -> Image.Image:
    """The image with each lesion class blended in its colour, above a legend strip."""
    painted = image.astype(np.float32)
    lesions = predictor.lesion_planes
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
        draw.text((16 + size, y), predictor.classes[plane], fill="black", font=font)
    return canvas


def write_outputs(path: Path, image: np.ndarray, planes: np.ndarray, predictor: Predictor,
                  out_dir: Path) -> list[Path]:
    """Write ``<stem>.npy`` and ``<stem>_overlay.png`` atomically; return their paths."""
    array_path, overlay_path = out_dir / f"{path.stem}.npy", out_dir / f"{path.stem}_overlay.png"
    save_npy(array_path, planes)
    with atomic_path(overlay_path) as tmp:
        overlay(image, planes, predictor).save(tmp, format="PNG")
    return [array_path, overlay_path]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_inputs(args.images)
    predictor = load_predictor(args.model)
    rules = Rules.from_args(args, predictor)
    crop = predictor.crop_to_fundus and not args.no_crop
    print(f"model {args.model}: task {predictor.task}, classes {', '.join(predictor.classes)}, "
          f"{predictor.image_size} px, {'cropped to the fundus' if crop else 'whole image'}")
    for path in args.images:
        image = read_image(path)
        planes = predict_image(predictor, image, rules, crop)
        written = write_outputs(path, image, planes, predictor, args.out)
        counts = planes.sum(axis=(0, 1), dtype=np.int64)
        pixels = ", ".join(f"{name} {count}" for name, count in zip(predictor.classes, counts.tolist()))
        print(f"{path.name}: {image.shape[1]}x{image.shape[0]} -> {', '.join(map(str, written))}; {pixels} px")


if __name__ == "__main__":
    stage.run(main)
