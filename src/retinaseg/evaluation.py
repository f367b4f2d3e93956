"""Evaluate a trained task on the test split: counts per image and class, then aggregates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retinaseg import metrics, tracking
from retinaseg.atomic import atomic_path, write_json
from retinaseg.errors import PipelineError
from retinaseg.preprocess import load_set

#: Overlay colours: found lesion pixels, false alarms, missed lesion pixels.
OVERLAY_COLOURS = {"TP": (0, 230, 0), "FP": (255, 210, 0), "FN": (255, 0, 200)}


def predict(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class probabilities for uint8 images, in batches to bound memory."""
    return np.concatenate([model.predict(images[start:start + batch_size].astype(np.float32) / 255.0, verbose=0)
                           for start in range(0, len(images), batch_size)])


def overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, class_names: list[str],
            lesion_planes: list[int], title: str) -> Image.Image:
    """The fundus beside one panel per lesion class with TP, FP and FN coloured, and a legend."""
    size = image.shape[0]
    panels = [Image.fromarray(image)]
    for plane in lesion_planes:
        painted = image.copy()
        ref, pred = reference[..., plane].astype(bool), prediction[..., plane]
        for name, where in (("TP", ref & pred), ("FP", ~ref & pred), ("FN", ref & ~pred)):
            painted[where] = OVERLAY_COLOURS[name]
        panels.append(Image.fromarray(painted))
    canvas = Image.new("RGB", (size * len(panels), size + 36), "white")
    draw = ImageDraw.Draw(canvas)
    for index, panel in enumerate(panels):
        canvas.paste(panel, (index * size, 20))
        label = title if index == 0 else class_names[lesion_planes[index - 1]]
        draw.text((index * size + 4, 4), label, fill="black")
    x = 4
    for name, colour in OVERLAY_COLOURS.items():
        draw.rectangle((x, size + 24, x + 10, size + 34), fill=colour)
        draw.text((x + 14, size + 23), name, fill="black")
        x += 50
    return canvas


def evaluate_task(variant: str, *, prepared_dir: Path, model_dir: Path, out_dir: Path,
                  params: dict[str, Any]) -> dict[str, Any]:
    """Score a trained variant on the test split; log everything to its training run.

    Writes into ``out_dir``: ``eval.json`` (summary, lesion and image-level figures,
    per-image counts), ``pr_curves/<class>.json`` (precision-recall over probability
    thresholds) and ``overlays/``.
    """
    import keras
    import mlflow

    model_file = model_dir / "model.keras"
    if not model_file.exists():
        raise PipelineError(f"{model_file}: missing; run `dvc repro` to train it first")
    run = json.loads((model_dir / "run.json").read_text())
    task = run["task"]
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    class_names = manifest["tasks"][task]["classes"]
    lesion_planes = metrics.lesion_planes(len(class_names))

    test = load_set(prepared_dir / "test", task)
    model = keras.saving.load_model(model_file, compile=False)
    probabilities = predict(model, test["images"])
    predicted = metrics.predictions_to_masks(probabilities, metrics.output_kind(len(class_names)),
                                             params["threshold"])
    reference = test[task].astype(bool)
    counts = np.stack([metrics.confusion_counts(ref, pred) for ref, pred in zip(reference, predicted)])
    ids = test["ids"].tolist()
    summary = {"variant": variant, "task": task, "threshold": params["threshold"],
               "min_component_px": params["min_component_px"], "pr_thresholds": params["pr_thresholds"],
               "n_images": len(ids),
               "lesion_classes": [class_names[plane] for plane in lesion_planes],
               **metrics.summarize(ids, counts, class_names, lesion_planes)}
    curves = {}
    for plane in lesion_planes:
        name = class_names[plane]
        lesions = [metrics.lesion_counts(ref[..., plane], pred[..., plane], params["min_component_px"])
                   for ref, pred in zip(reference, predicted)]
        for entry, counted in zip(summary["per_image"], lesions):
            entry[name]["lesions"] = counted
        sweep = metrics.PRAccumulator(params["pr_thresholds"])
        for probability, ref in zip(probabilities, reference):
            sweep.update(probability[..., plane], ref[..., plane])
        curves[name] = sweep.curve()
        summary[name]["lesion"] = metrics.summarize_lesions(lesions)
        summary[name]["pr"] = {"auc_pr": sweep.auc_pr(), "best_f1": sweep.best_f1()}

    with atomic_path(out_dir / "pr_curves", is_dir=True) as tmp:
        for name, rows in curves.items():
            write_json(tmp / f"{name}.json", rows)
    with atomic_path(out_dir / "overlays", is_dir=True) as tmp:
        for row in range(min(params["n_overlays"], len(ids))):
            picture = overlay(test["images"][row], reference[row], predicted[row], class_names, lesion_planes,
                              title=f"{variant} image{ids[row]:03d}")
            picture.save(tmp / f"image{ids[row]:03d}.png")
    write_json(out_dir / "eval.json", summary)

    tracking.require_run(run["run_id"], model_dir)
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.set_tags({f"evaluate.{key}": value for key, value in params.items()})
        mlflow.log_metrics(flat_test_metrics(summary))
        mlflow.log_artifact(str(out_dir / "eval.json"), artifact_path="evaluation")
        mlflow.log_artifacts(str(out_dir / "pr_curves"), artifact_path="evaluation/pr_curves")
        mlflow.log_artifacts(str(out_dir / "overlays"), artifact_path="evaluation/overlays")
    return summary


def flat_test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat ``test_<class>_<score>`` metrics for MLflow, skipping undefined (NaN) values."""
    flat = {}
    for name in summary["lesion_classes"]:
        for aggregate in ("micro", "per_image_mean"):
            for score, value in summary[name][aggregate].items():
                if isinstance(value, float) and not np.isnan(value):
                    suffix = "" if aggregate == "micro" else "_per_image"
                    flat[f"test_{name}_{score}{suffix}"] = value
        for score, value in {**summary[name]["lesion"], "auc_pr": summary[name]["pr"]["auc_pr"]}.items():
            if isinstance(value, float) and not np.isnan(value):
                flat[f"test_{name}_{score}"] = value
    for score, value in summary["macro"].items():
        if isinstance(value, float) and not np.isnan(value):
            flat[f"test_macro_{score}"] = value
    return flat
