"""Score prediction files against a prepared reference set into ``eval.json``.

    retinaseg-score --reference data/prepared/test --predictions data/predictions/multiclass \
        --task multiclass [--rules metrics/eval/multiclass/eval.json | --threshold 0.5] --out eval.json

In the spirit of nnU-Net's ``compute_metrics_on_folder(reference, predictions)``: the
evaluate stage writes its test predictions to a folder and scores that folder with this
code, so predictions from any other tool are scored by the same rules. A prediction is
``imageNNN.npy``, float class probabilities [S,S,C] at the reference's size (planes as the
task's: the one class, or background then classes). Probabilities are thresholded per
class, limited to the field of view and cleaned, then scored against the training target
and against the lesion core, per image and class with TP/FP/FN/TN counts.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaseg.core import stage
from retinaseg.core.arrays import load_set
from retinaseg.core.atomic import atomic_path, save_npy
from retinaseg.core.errors import PipelineError
from retinaseg.core.layout import image_name
from retinaseg.core.outputs import EvalRecord, ScoringRules
from retinaseg.core.tasks import Task
from retinaseg.evaluation import anatomy, bootstrap, froc, metrics, truth
from retinaseg.evaluation.postprocess import Rules, probability


class Scoring(ScoringRules):
    """The post-processing and the curve grid of a score, and where the thresholds came from, as eval.json records
    them (``ScoringRules``), with what applying them takes."""

    @property
    def rules(self) -> Rules:
        return Rules(list(self.thresholds.values()), self.min_component_px, self.drop_on_optic_disc)

    @classmethod
    def fixed(cls, thresholds: dict[str, float], source: str = "argument", pr_thresholds: int = 101) -> Scoring:
        """The given thresholds and no cleaning (no speck or optic-disc removal): the rules of ``--threshold``."""
        return cls(thresholds=thresholds, threshold_source=source, operating_point="fixed", target_fp_per_image=None,
                   max_area_ratio=None, threshold_beta=1.0, min_component_px=1, drop_on_optic_disc=False,
                   pr_thresholds=pr_thresholds)

    @classmethod
    def from_eval_json(cls, path: Path, lesion_names: list[str]) -> Scoring:
        """The rules an earlier evaluation of the same classes applied (``metrics/eval/<variant>/eval.json``)."""
        evaluation = EvalRecord.read(path)
        if not set(lesion_names) <= set(evaluation.lesion_classes):
            raise PipelineError(f"{path}: an eval.json of the classes {', '.join(evaluation.lesion_classes)}, not "
                                f"{', '.join(lesion_names)}; pass metrics/eval/<variant>/eval.json of the same task")
        rules = evaluation.model_dump(include=set(ScoringRules.model_fields))
        return cls(**{**rules, "thresholds": {name: evaluation.thresholds[name] for name in lesion_names}})


def prediction_path(folder: Path, image_id: int) -> Path:
    return folder / image_name(image_id).replace(".png", ".npy")


def write_predictions(folder: Path, ids: list[int], probabilities: np.ndarray) -> None:
    """One ``imageNNN.npy`` of probabilities [S,S,C] per image; the folder is replaced atomically."""
    with atomic_path(folder, is_dir=True) as tmp:
        for image_id, planes in zip(ids, probabilities):
            save_npy(prediction_path(tmp, image_id), planes)


def read_predictions(folder: Path, ids: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """The probabilities of every reference image, each checked for its shape and range."""
    planes = []
    for image_id in ids:
        path = prediction_path(folder, image_id)
        try:
            prediction = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise PipelineError(f"{path}: missing; the predictions must cover every reference image") from None
        except (OSError, ValueError) as error:
            raise PipelineError(f"{path}: not a .npy array ({error})") from None
        if not isinstance(prediction, np.ndarray):
            raise PipelineError(f"{path}: an .npz archive, expected one .npy array of probabilities")
        if prediction.shape != shape or not np.issubdtype(prediction.dtype, np.floating):
            raise PipelineError(f"{path}: {prediction.dtype} {list(prediction.shape)}, expected float "
                                f"probabilities {list(shape)} like the reference")
        if not np.all((prediction >= 0) & (prediction <= 1)):
            raise PipelineError(f"{path}: values outside [0, 1] (or NaN); expected probabilities, not logits "
                                "or 0..255 levels")
        planes.append(prediction)
    return np.stack(planes)


def score_folder(reference_dir: Path, predictions_dir: Path, task: Task, scoring: Scoring,
                 variant: str) -> tuple[EvalRecord, Curves, np.ndarray]:
    """Score a folder of predictions against a prepared set (``data/prepared/test``).

    Returns the eval.json summary, the curves of every lesion class (``Curves``) and the
    cleaned masks [N,S,S,C].
    """
    recorded = reference_task(reference_dir, task.name)
    if recorded.plane_names == task.plane_names:  # the manifest also knows each class's lesion types
        task = recorded
    reference = load_set(reference_dir, task.name, core=True)
    ids = reference["ids"].tolist()
    shape = (*reference[task.name].shape[1:3], task.num_planes)
    probabilities = read_predictions(predictions_dir, ids, shape)
    return score(reference, probabilities, task, scoring, variant, read_manifest(reference_dir)["core_threshold"],
                 truth.read_truth(reference_dir))


@dataclass(frozen=True)
class Curves:
    """The curves of one scoring, per lesion class: precision-recall and FROC against the core (false positives
    off the core, and only outside every annotator's mark), FROC against the truth."""

    pr: dict[str, list[dict]]
    froc: dict[str, list[dict]]
    froc_outside_marks: dict[str, list[dict]]
    froc_truth: dict[str, list[dict]]


def score(reference: dict[str, np.ndarray], probabilities: np.ndarray, task: Task, scoring: Scoring,
          variant: str, core_threshold: float,
          simulated: dict | None = None) -> tuple[EvalRecord, Curves, np.ndarray]:
    """Score probabilities [N,S,S,C] against a reference set read with ``load_set(..., core=True)``.

    With ``marked_<task>`` in the reference (boolean [N,S,S,C]: any annotator's mark), the core's FROC
    is also read with false positives counted only outside the marks. With the ``simulated`` truth of
    synthetic data (``truth.read_truth``), each class of known lesion types is also scored against the
    lesions the generator drew.
    """
    fov, ids = reference["fov"], reference["ids"].tolist()
    discs = [anatomy.optic_disc_mask(image, fov) for image in reference["images"]]
    rules = scoring.rules
    predicted = np.stack([rules.apply(probability, fov, disc) for probability, disc in zip(probabilities, discs)])
    target, core = reference[task.name].astype(bool), reference[f"core_{task.name}"].astype(bool)
    marked = reference.get(f"marked_{task.name}")
    counts = np.stack([metrics.confusion_counts(ref, pred) for ref, pred in zip(target, predicted)])
    pooled = metrics.summarize(ids, counts, task.plane_names, task.lesion_planes)
    summary = EvalRecord(variant=variant, task=task.name, **scoring.model_dump(), core_threshold=core_threshold,
                         n_images=len(ids), lesion_classes=task.lesion_names, froc_rule=froc.RULE,
                         by_class={name: pooled[name] for name in task.lesion_names}, macro=pooled["macro"],
                         micro=pooled["micro"], per_image=pooled["per_image"])
    curves = Curves({}, {}, {}, {})
    sweep_discs = discs if scoring.drop_on_optic_disc else [None] * len(ids)
    resamples = bootstrap.weights(len(ids))
    for plane, name in zip(task.lesion_planes, task.lesion_names):
        lesions = [metrics.lesion_counts(ref[..., plane], pred[..., plane], scoring.min_component_px)
                   for ref, pred in zip(target, predicted)]
        scores = summary.by_class[name]
        scores["lesion"] = metrics.summarize_lesions(lesions)
        scores["core"], core_per_image, curves.pr[name] = _score_core(
            probabilities[..., plane], core[..., plane], predicted[..., plane], fov, discs, scoring)
        drawn = ([truth.class_lesions(simulated, image_id, task.classes[name]) for image_id in ids]
                 if simulated is not None and task.classes[name] else None)
        references = detection_references(core[..., plane], None if marked is None else marked[..., plane], drawn,
                                          simulated)
        swept = froc.sweeps(probabilities[..., plane], fov, sweep_discs, scoring.min_component_px, references)
        _add_detection(scores["core"], swept, core_per_image, resamples)
        curves.froc[name] = swept["core"].curve()
        if "outside_marks" in swept:
            curves.froc_outside_marks[name] = swept["outside_marks"].curve()
        for entry, counted, at_core in zip(summary.per_image, lesions, core_per_image):
            entry[name]["lesions"] = counted
            entry[name]["core"] = at_core
        if drawn is not None:
            scores["truth"] = _score_truth(swept["truth"], predicted[..., plane], drawn, references["truth"], resamples)
            curves.froc_truth[name] = swept["truth"].curve()
    return summary, curves, predicted


def detection_references(core: np.ndarray, marked: np.ndarray | None, drawn: list[list[dict]] | None,
                simulated: dict | None) -> dict[str, list[froc.Lesions]]:
    """The lesions each FROC of one class counts: the core's components; the same, one per component, with what
    any annotator marked spared (``marked`` [N,S,S]); the drawn lesions of synthetic data."""
    references = {"core": [froc.Lesions.from_mask(plane) for plane in core]}
    if marked is not None:
        references["outside_marks"] = [froc.Lesions.from_mask(plane, spared, one_per_component=True)
                                       for plane, spared in zip(core, marked)]
    if drawn is not None:
        references["truth"] = [truth.footprints(lesions, simulated["crop_box"], simulated["image_size"])
                               for lesions in drawn]
    return references


def _add_detection(at_core: dict, swept: dict[str, froc.Sweep], per_image: list[dict], resamples: np.ndarray) -> None:
    """In place: the core's FROC summaries and their bootstrap intervals (CPM, and Dice from the per-image counts)."""
    counts = np.array([[entry[key] for key in metrics.COUNT_NAMES] for entry in per_image])
    at_core["froc"] = swept["core"].summary()
    at_core["bootstrap"] = {"samples": bootstrap.SAMPLES, "seed": bootstrap.SEED, "unit": "test image",
                            "cpm_ci95": bootstrap.interval(swept["core"].resampled_cpm(resamples)),
                            "f1_ci95": bootstrap.interval(bootstrap.dice(counts, resamples))}
    if "outside_marks" in swept:
        at_core["froc_outside_marks"] = swept["outside_marks"].summary()
        at_core["bootstrap"]["cpm_outside_marks_ci95"] = bootstrap.interval(
            swept["outside_marks"].resampled_cpm(resamples))


def _score_truth(swept: froc.Sweep, predicted: np.ndarray, drawn: list[list[dict]], references: list[froc.Lesions],
                 resamples: np.ndarray) -> dict:
    """One class against the lesions the generator drew: the FROC by kind, size and annotators, and the operating
    point (the cleaned masks [N,S,S]), matched as in the sweep."""
    found, false_positives = [], 0
    for plane, reference in zip(predicted, references):
        labels, keep = metrics.kept_components(plane, 1)
        hits, fp = froc.match(labels, keep, reference)
        found.append(hits)
        false_positives += fp
    found = np.concatenate(found) if found else np.zeros(0, dtype=bool)
    selected = truth.groups([lesion for lesions in drawn for lesion in lesions])
    at_point = {"lesion_sensitivity": float(found.mean()) if found.size else None,
                "fp_components_per_image": false_positives / len(predicted),
                "n_reference_lesions": int(found.size), "n_found_lesions": int(found.sum()),
                "n_fp_components": false_positives, "n_images": len(predicted),
                **{f"by_{grouping}": {group: {"lesion_sensitivity": float(found[chosen].mean()) if chosen.any() else None,
                                              "n_lesions": int(chosen.sum())}
                                      for group, chosen in groups.items()}
                   for grouping, groups in selected.items()}}
    interval = {"samples": bootstrap.SAMPLES, "seed": bootstrap.SEED, "unit": "test image",
                "cpm_ci95": bootstrap.interval(swept.resampled_cpm(resamples))}
    return {"lesion": at_point, "froc": swept.summary(selected), "bootstrap": interval}


def _score_core(probability: np.ndarray, core: np.ndarray, predicted: np.ndarray, fov: np.ndarray,
                discs: list[np.ndarray], scoring: Scoring) -> tuple[dict, list[dict], list[dict]]:
    """One class against its lesion core: pixel counts, lesions found, area shares, disc hits, PR curve."""
    counts = np.stack([metrics.confusion_counts(ref[..., None], pred[..., None])[0]
                       for ref, pred in zip(core, predicted)])
    lesions = [metrics.lesion_counts(ref, pred, scoring.min_component_px, disc)
               for ref, pred, disc in zip(core, predicted, discs)]
    fov_pixels = int(np.count_nonzero(fov))
    predicted_share = predicted[:, fov].sum(axis=1) / fov_pixels
    reference_share = core[:, fov].sum(axis=1) / fov_pixels
    sweep = metrics.PRAccumulator(scoring.pr_thresholds)
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="retinaseg-score", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, metavar="DIR",
                        help="a prepared set, e.g. data/prepared/test (its manifest.json one level up)")
    parser.add_argument("--predictions", required=True, type=Path, metavar="DIR", help="imageNNN.npy probabilities")
    parser.add_argument("--task", required=True, help="task name, as in the manifest (e.g. binary, multiclass)")
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--rules", type=Path, metavar="EVAL_JSON",
                       help="thresholds and cleaning of this eval.json (default: --threshold, no cleaning)")
    rules.add_argument("--threshold", type=probability, default=0.5, help="threshold of every lesion class (0.5)")
    parser.add_argument("--variant", help="name written into eval.json (default: the predictions folder's name)")
    parser.add_argument("--out", required=True, type=Path, metavar="EVAL_JSON", help="where to write eval.json")
    return parser.parse_args(argv)


def read_manifest(reference_dir: Path) -> dict[str, Any]:
    """The manifest.json the prepare stage wrote beside the reference set."""
    path = reference_dir.parent / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        manifest["tasks"], manifest["core_threshold"]  # noqa: B018 - the keys scoring needs
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{path}: no readable manifest of a prepared set ({type(error).__name__}: {error}); "
                            "pass --reference data/prepared/<split>") from None
    return manifest


def reference_task(reference_dir: Path, name: str) -> Task:
    """The task ``name`` with the plane names the prepare stage recorded for it."""
    tasks = read_manifest(reference_dir)["tasks"]
    manifest_path = reference_dir.parent / "manifest.json"
    if name not in tasks:
        raise PipelineError(f"--task {name}: not in {manifest_path}; known tasks: {', '.join(tasks)}")
    planes = tasks[name]["classes"]
    if "lesion_types" in tasks[name]:  # written by prepare since the simulated truth is scored
        return Task(name, {class_name: tuple(types) for class_name, types in tasks[name]["lesion_types"].items()})
    return Task.from_planes(name, planes)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    task = reference_task(args.reference, args.task)
    scoring = (Scoring.from_eval_json(args.rules, task.lesion_names) if args.rules else
               Scoring.fixed(dict.fromkeys(task.lesion_names, args.threshold)))
    summary, _, _ = score_folder(args.reference, args.predictions, task, scoring,
                                 args.variant or args.predictions.name)
    summary.write(args.out)
    for name in task.lesion_names:
        scores = summary.by_class[name]
        print(f"{name}: Dice against the core {scores['core']['micro']['f1']:.3f}, "
              f"against the training target {scores['micro']['f1']:.3f}")
    print(f"wrote {args.out}")


def cli() -> None:
    """The ``retinaseg-score`` command (``python -m retinaseg.evaluation.score`` too)."""
    stage.run(main)


if __name__ == "__main__":
    cli()
