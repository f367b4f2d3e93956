"""Evaluate stage: predict the test split, score it (``score``), draw overlays, log to MLflow and register the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retinaseg.core.arrays import load_set
from retinaseg.core.atomic import atomic_path, write_json
from retinaseg.core.outputs import EvalRecord, ScoringRules, operating_point_rule
from retinaseg.core.params import EvaluateParams
from retinaseg.core.tasks import Task
from retinaseg.evaluation import anatomy, froc, postprocess, registry
from retinaseg.evaluation.score import Curves, Scoring, score_folder, write_predictions
from retinaseg.model.trained import TrainedModel, load_trained, predict_batches
from retinaseg.tracking import mlflow_runs
from retinaseg.tracking.summary import evaluation_figures

#: Overlay colours: found lesion pixels, false alarms, missed lesion pixels.
OVERLAY_COLOURS = {"TP": (0, 230, 0), "FP": (255, 210, 0), "FN": (255, 0, 200)}


def error_overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, task: Task,
                  title: str) -> Image.Image:
    """The fundus beside one panel per lesion class with TP, FP and FN coloured, and a legend."""
    size = image.shape[0]
    panels = [Image.fromarray(image)]
    for plane in task.lesion_planes:
        painted = image.copy()
        ref, pred = reference[..., plane].astype(bool), prediction[..., plane]
        for name, where in (("TP", ref & pred), ("FP", ~ref & pred), ("FN", ref & ~pred)):
            painted[where] = OVERLAY_COLOURS[name]
        panels.append(Image.fromarray(painted))
    canvas = Image.new("RGB", (size * len(panels), size + 36), "white")
    draw = ImageDraw.Draw(canvas)
    for index, panel in enumerate(panels):
        canvas.paste(panel, (index * size, 20))
        label = title if index == 0 else task.plane_names[task.lesion_planes[index - 1]]
        draw.text((index * size + 4, 4), label, fill="black")
    x = 4
    for name, colour in OVERLAY_COLOURS.items():
        draw.rectangle((x, size + 24, x + 10, size + 34), fill=colour)
        draw.text((x + 14, size + 23), name, fill="black")
        x += 50
    return canvas


def choose_thresholds(trained: TrainedModel, prepared_dir: Path, params: EvaluateParams) -> tuple[list[float], str]:
    """Per-class probability thresholds and where they come from (validation images or params).

    ``auto`` chooses, per class, on the training run's held-out validation images against
    their lesion core, after the same cleaning as the test images: with ``operating_point``
    ``fp_per_image`` the threshold that finds the most core lesions with at most
    ``target_fp_per_image`` false-positive components per image outside every annotator's
    mark (``froc``; a component on a lesion that fewer annotators marked is not a false alarm:
    on synthetic data this count follows the false alarms against the drawn lesions) and a
    predicted area at most ``max_area_ratio`` times the core's, with
    ``f_beta`` the best pixel F-beta (``threshold_beta``).
    """
    task, variant = trained.task, trained.run.variant or trained.location
    if params.threshold != "auto":
        return [float(params.threshold)] * len(task.lesion_names), "params"
    val_ids = trained.require("val_ids")
    if not val_ids:
        print(f"evaluate {variant}: no validation images (train.val_fraction = 0); threshold 0.5")
        return [0.5] * len(task.lesion_names), "default"
    train = load_set(prepared_dir / "train", task.name, core=True)
    rows = np.isin(train["ids"], val_ids)
    images, fov, core = train["images"][rows], train["fov"], train[f"core_{task.name}"][rows].astype(bool)
    marked = train[f"marked_{task.name}"][rows]
    discs = ([anatomy.optic_disc_mask(image, fov) for image in images] if params.drop_on_optic_disc
             else [None] * len(images))
    probabilities = predict_batches(trained.model, images)
    if params.operating_point == "f_beta":
        chosen = postprocess.f_beta_thresholds(probabilities, core, fov, params.min_component_px, discs,
                                               params.threshold_beta)
    else:
        chosen = [froc.threshold_at_rate(probabilities[..., plane], core[..., plane], marked[..., plane], fov,
                                         discs, params.min_component_px, params.target_fp_per_image,
                                         params.max_area_ratio)
                  for plane in task.lesion_planes]
    rule = operating_point_rule(params.operating_point, params.target_fp_per_image, params.max_area_ratio,
                                params.threshold_beta)
    print(f"evaluate {variant}: thresholds chosen on {rows.sum()} validation images ({rule}): "
          + ", ".join(f"{name} {value:.3f}" for name, value in zip(task.lesion_names, chosen)))
    return chosen, "validation"


def evaluate_task(variant: str, *, prepared_dir: Path, model_dir: Path, run_path: Path, predictions_dir: Path,
                  out_dir: Path, params: EvaluateParams) -> EvalRecord:
    """Predict the test split into ``predictions_dir``, score that folder, draw and log to the training run.

    Predictions are thresholded per class (``evaluate.threshold``), limited to the field of
    view, cleaned of specks and optic-disc components, then scored against the training
    target and against the lesion core (``score``). Writes into ``out_dir``: ``eval.json``, its
    deciding figures ``summary.json`` (``summary``), ``pr_curves/<class>.json`` (precision-recall
    against the core), ``froc/`` and ``overlays/``. ``run_path`` names the training's MLflow run.
    """
    run_id = mlflow_runs.require_run(run_path)  # first: a store that cannot be used stops the stage before any work
    trained = load_trained(model_dir)
    task = trained.task
    thresholds, threshold_source = choose_thresholds(trained, prepared_dir, params)
    scoring = Scoring(thresholds=dict(zip(task.lesion_names, thresholds)), threshold_source=threshold_source,
                      **params.model_dump(include=set(ScoringRules.model_fields)))
    test = load_set(prepared_dir / "test", task.name, core=True)
    write_predictions(predictions_dir, test["ids"].tolist(), predict_batches(trained.model, test["images"]))
    summary, curves, predicted = score_folder(prepared_dir / "test", predictions_dir, task, scoring, variant)
    core = test[f"core_{task.name}"].astype(bool)
    _write_outputs(out_dir, summary, curves, test["images"][:params.n_overlays], core, predicted, task, variant)
    _log(run_id, out_dir, summary, params, task, variant, prepared_dir / "test", test)
    return summary


def _write_outputs(out_dir: Path, summary: EvalRecord, curves: Curves, images: np.ndarray, reference: np.ndarray,
                   predicted: np.ndarray, task: Task, variant: str) -> None:
    """PR and FROC curves, overlays of ``images`` (the first test images, against the core) and eval.json, each atomic."""
    ids = [entry["id"] for entry in summary.per_image]
    with atomic_path(out_dir / "pr_curves", is_dir=True) as tmp:
        for name, rows in curves.pr.items():
            write_json(tmp / f"{name}.json", rows)
    with atomic_path(out_dir / "froc", is_dir=True) as tmp:
        for against, by_class in (("core", curves.froc), ("core-outside-marks", curves.froc_outside_marks),
                                  ("truth", curves.froc_truth)):
            for name, rows in by_class.items():
                write_json(tmp / f"{name}_{against}.json", rows)
    with atomic_path(out_dir / "overlays", is_dir=True) as tmp:
        for row in range(len(images)):
            picture = error_overlay(images[row], reference[row], predicted[row], task,
                              title=f"{variant} image{ids[row]:03d} vs core")
            picture.save(tmp / f"image{ids[row]:03d}.png")
    summary.write(out_dir / "eval.json")
    write_json(out_dir / "summary.json", evaluation_figures(summary))


def _log(run_id: str, out_dir: Path, summary: EvalRecord, params: EvaluateParams, task: Task, variant: str,
         test_dir: Path, test: dict[str, np.ndarray]) -> None:
    """Log the test set, metrics and files to the training run, then register its model (``registry``)."""
    import mlflow

    metrics = flat_test_metrics(summary)
    with mlflow.start_run(run_id=run_id):
        mlflow_runs.log_dataset("test", test_dir.as_posix(), test["images"], test[f"core_{task.name}"])
        mlflow.set_tags({f"evaluate.{key}": value for key, value in params.model_dump().items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out_dir / "eval.json"), artifact_path="evaluation")
        mlflow.log_artifacts(str(out_dir / "pr_curves"), artifact_path="evaluation/pr_curves")
        mlflow.log_artifacts(str(out_dir / "froc"), artifact_path="evaluation/froc")
        mlflow.log_artifacts(str(out_dir / "overlays"), artifact_path="evaluation/overlays")
    score = registry.champion_score(metrics, summary.lesion_classes)
    version, champion = registry.register(run_id, task.name, variant, score)
    scored = "no score" if score is None else f"mean core Dice {score:.3f}"
    print(f"evaluate {variant}: registered as {registry.model_name(task.name)} version {version.version} ({scored}); "
          f"{registry.CHAMPION}: version {champion.version if champion else 'none'}")


def flat_test_metrics(summary: EvalRecord) -> dict[str, float]:
    """Flat ``test_<class>_<score>`` metrics for MLflow (``test_<class>_core_<score>`` against the core)."""
    flat = {}
    for name, scores in summary.by_class.items():
        groups = {"test_{name}_{score}": {**scores["micro"], **scores["lesion"]},
                  "test_{name}_{score}_per_image": scores["per_image_mean"],
                  "test_{name}_core_{score}": {**scores["core"]["micro"], **scores["core"]["lesion"],
                            "auc_pr": scores["core"]["pr"]["auc_pr"], **_froc_figures(scores["core"]["froc"]),
                            **{f"outside_marks_{key}": value for key, value in
                               _froc_figures(scores["core"].get("froc_outside_marks", {})).items()},
                            **{key: scores["core"][key] for key in ("predicted_fov_share", "area_ratio")}}}
        if "truth" in scores:
            groups["test_{name}_truth_{score}"] = {**_froc_figures(scores["truth"]["froc"]),
                                                   **{key: scores["truth"]["lesion"][key] for key in
                                                      ("lesion_sensitivity", "fp_components_per_image")}}
        for pattern, values in groups.items():
            for score, value in values.items():
                if isinstance(value, float) and not np.isnan(value):
                    flat[pattern.format(name=name, score=score)] = value
    for score, value in summary.macro.items():
        if isinstance(value, float) and not np.isnan(value):
            flat[f"test_macro_{score}"] = value
    return flat


def _froc_figures(summary: dict[str, Any]) -> dict[str, float]:
    """The FROC figures MLflow gets: the CPM and the sensitivity at 1 and 2 false positives per image."""
    return {key: summary[key] for key in ("cpm", "sensitivity_at_1_fp", "sensitivity_at_2_fp") if key in summary}
