"""Evaluate a trained task on the test split: counts per image and class, then aggregates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retinaseg import anatomy, metrics, postprocess, tracking
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


def optic_discs(images: np.ndarray, fov: np.ndarray) -> list[np.ndarray]:
    """The optic-disc mask of every image, located in the image itself."""
    return [anatomy.disc_mask(fov.shape, anatomy.locate_optic_disc(image, fov)) for image in images]


def choose_thresholds(model, run: dict[str, Any], prepared_dir: Path, params: dict[str, Any],
                      lesion_names: list[str]) -> tuple[list[float], str]:
    """Per-class probability thresholds and where they come from (validation images or params).

    ``auto`` picks, per class, the threshold with the best F-beta (``evaluate.threshold_beta``)
    against the lesion core on the training run's held-out validation images, after the same
    cleaning as the test images.
    """
    if params["threshold"] != "auto":
        return [float(params["threshold"])] * len(lesion_names), "params"
    if "val_ids" not in run:
        raise PipelineError(f"run.json of {run['variant']}: no val_ids; retrain it with `dvc repro`")
    if not run["val_ids"]:
        print(f"evaluate {run['variant']}: no validation images (train.val_fraction = 0); threshold 0.5")
        return [0.5] * len(lesion_names), "default"
    task = run["task"]
    train = load_set(prepared_dir / "train", task, core=True)
    rows = np.isin(train["ids"], run["val_ids"])
    images, fov = train["images"][rows], train["fov"]
    discs = optic_discs(images, fov) if params["drop_on_optic_disc"] else [None] * len(images)
    chosen = postprocess.choose_thresholds(predict(model, images), train[f"core_{task}"][rows].astype(bool), fov,
                                           params["min_component_px"], discs, params["threshold_beta"])
    print(f"evaluate {run['variant']}: thresholds chosen on {rows.sum()} validation images: "
          + ", ".join(f"{name} {value:.2f}" for name, value in zip(lesion_names, chosen)))
    return chosen, "validation"


def evaluate_task(variant: str, *, prepared_dir: Path, model_dir: Path, out_dir: Path,
                  params: dict[str, Any]) -> dict[str, Any]:
    """Score a trained variant on the test split; log everything to its training run.

    Predictions are thresholded per class (``evaluate.threshold``), limited to the field of
    view, cleaned of specks and optic-disc components, then scored against the training
    target and against the lesion core. Writes into ``out_dir``: ``eval.json``,
    ``pr_curves/<class>.json`` (precision-recall against the core) and ``overlays/``.
    """
    import keras

    model_file = model_dir / "model.keras"
    if not model_file.exists():
        raise PipelineError(f"{model_file}: missing; run `dvc repro` to train it first")
    run = json.loads((model_dir / "run.json").read_text())
    task = run["task"]
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    class_names = manifest["tasks"][task]["classes"]
    planes = metrics.lesion_planes(len(class_names))
    lesion_names = [class_names[plane] for plane in planes]
    model = keras.saving.load_model(model_file, compile=False)
    thresholds, threshold_source = choose_thresholds(model, run, prepared_dir, params, lesion_names)

    test = load_set(prepared_dir / "test", task, core=True)
    fov = test["fov"]
    probabilities = predict(model, test["images"])
    discs = optic_discs(test["images"], fov)
    predicted = np.stack([
        postprocess.clean(postprocess.threshold_masks(probability, thresholds), fov, params["min_component_px"],
                          disc if params["drop_on_optic_disc"] else None)
        for probability, disc in zip(probabilities, discs)])
    reference, core = test[task].astype(bool), test[f"core_{task}"].astype(bool)
    ids = test["ids"].tolist()
    counts = np.stack([metrics.confusion_counts(ref, pred) for ref, pred in zip(reference, predicted)])
    summary = {"variant": variant, "task": task, "thresholds": dict(zip(lesion_names, thresholds)),
               "threshold_source": threshold_source, "threshold_beta": params["threshold_beta"],
               "min_component_px": params["min_component_px"], "drop_on_optic_disc": params["drop_on_optic_disc"],
               "pr_thresholds": params["pr_thresholds"],
               "core_threshold": manifest["core_threshold"], "n_images": len(ids), "lesion_classes": lesion_names,
               **metrics.summarize(ids, counts, class_names, planes)}
    curves = {}
    for plane, name in zip(planes, lesion_names):
        lesions = [metrics.lesion_counts(ref[..., plane], pred[..., plane], params["min_component_px"])
                   for ref, pred in zip(reference, predicted)]
        summary[name]["lesion"] = metrics.summarize_lesions(lesions)
        core_summary, core_per_image, curves[name] = _score_core(
            probabilities[..., plane], core[..., plane], predicted[..., plane], fov, discs, params)
        summary[name]["core"] = core_summary
        for entry, counted, at_core in zip(summary["per_image"], lesions, core_per_image):
            entry[name]["lesions"] = counted
            entry[name]["core"] = at_core
    _write_outputs(out_dir, summary, curves, test["images"][:params["n_overlays"]], core, predicted,
                   class_names, planes, variant)
    _log(run, model_dir, out_dir, summary, params)
    return summary


def _score_core(probability: np.ndarray, core: np.ndarray, predicted: np.ndarray, fov: np.ndarray,
                discs: list[np.ndarray], params: dict[str, Any]) -> tuple[dict, list[dict], list[dict]]:
    """One class against its lesion core: pixel counts, lesions found, area shares, disc hits, PR curve."""
    counts = np.stack([metrics.confusion_counts(ref[..., None], pred[..., None])[0]
                       for ref, pred in zip(core, predicted)])
    lesions = [metrics.lesion_counts(ref, pred, params["min_component_px"], disc)
               for ref, pred, disc in zip(core, predicted, discs)]
    fov_pixels = int(np.count_nonzero(fov))
    predicted_share = predicted[:, fov].sum(axis=1) / fov_pixels
    reference_share = core[:, fov].sum(axis=1) / fov_pixels
    sweep = metrics.PRAccumulator(params["pr_thresholds"])
    sweep.update(probability[:, fov], core[:, fov])
    summary = {"micro": metrics.scores_with_counts(counts.sum(axis=0)),
               "lesion": metrics.summarize_lesions(lesions),
               "predicted_fov_share": float(predicted_share.mean()),
               "reference_fov_share": float(reference_share.mean()),
               "area_ratio": float(predicted_share.sum() / reference_share.sum()) if reference_share.sum() else None,
               "pr": {"auc_pr": sweep.auc_pr(), "best_f1": sweep.best_f1()}}
    per_image = [{**dict(zip(metrics.COUNT_NAMES, map(int, row))), "lesions": counted}
                 for row, counted in zip(counts, lesions)]
    return summary, per_image, sweep.curve()


def _write_outputs(out_dir: Path, summary: dict, curves: dict, images: np.ndarray, reference: np.ndarray,
                   predicted: np.ndarray, class_names: list[str], planes: list[int], variant: str) -> None:
    """PR curves, overlays of ``images`` (the first test images, against the core) and eval.json, each atomic."""
    ids = [entry["id"] for entry in summary["per_image"]]
    with atomic_path(out_dir / "pr_curves", is_dir=True) as tmp:
        for name, rows in curves.items():
            write_json(tmp / f"{name}.json", rows)
    with atomic_path(out_dir / "overlays", is_dir=True) as tmp:
        for row in range(len(images)):
            picture = overlay(images[row], reference[row], predicted[row], class_names, planes,
                              title=f"{variant} image{ids[row]:03d} vs core")
            picture.save(tmp / f"image{ids[row]:03d}.png")
    write_json(out_dir / "eval.json", summary)


def _log(run: dict, model_dir: Path, out_dir: Path, summary: dict, params: dict[str, Any]) -> None:
    import mlflow

    tracking.require_run(run["run_id"], model_dir)
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.set_tags({f"evaluate.{key}": value for key, value in params.items()})
        mlflow.log_metrics(flat_test_metrics(summary))
        mlflow.log_artifact(str(out_dir / "eval.json"), artifact_path="evaluation")
        mlflow.log_artifacts(str(out_dir / "pr_curves"), artifact_path="evaluation/pr_curves")
        mlflow.log_artifacts(str(out_dir / "overlays"), artifact_path="evaluation/overlays")


def flat_test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat ``test_<class>_<score>`` metrics for MLflow (``test_<class>_core_<score>`` against the core)."""
    flat = {}
    for name in summary["lesion_classes"]:
        scores = summary[name]
        groups = {"test_{name}_{score}": {**scores["micro"], **scores["lesion"]},
                  "test_{name}_{score}_per_image": scores["per_image_mean"],
                  "test_{name}_core_{score}": {**scores["core"]["micro"], **scores["core"]["lesion"],
                            "auc_pr": scores["core"]["pr"]["auc_pr"],
                            **{key: scores["core"][key] for key in ("predicted_fov_share", "area_ratio")}}}
        for pattern, values in groups.items():
            for score, value in values.items():
                if isinstance(value, float) and not np.isnan(value):
                    flat[pattern.format(name=name, score=score)] = value
    for score, value in summary["macro"].items():
        if isinstance(value, float) and not np.isnan(value):
            flat[f"test_macro_{score}"] = value
    return flat
