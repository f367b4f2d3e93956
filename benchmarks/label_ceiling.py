"""How far can a model trained on the annotators' labels go? ``python -m benchmarks.label_ceiling``.

Scores the labels themselves as if a model had predicted them, with evaluation's rules (the
cleaning and FROC of ``--rules``, an eval.json): the summed annotator confidence (the default
training target, ``train.target: confidence``, learnt perfectly), any annotator's mark (confidence
above 0, wider than the tutorial's 0.1 target, which leaves out a lone mark at the lowest level) and
the core. What such a perfect learner of the labels does not reach against the simulator's
truth, no model trained on them can be expected to reach: the labels cap it. On synthetic data it
also scores a perfect detector: every drawn lesion predicted, ranked by its visibility or its size
(what an image shows) or by how many annotators marked it (what no image shows). What that detector
ranked by what the image shows does not reach against the core, no model can: the core's label noise
caps it.

    python -m benchmarks.label_ceiling [--reference data/prepared/test] [--task binary] \\
        [--rules metrics/eval/binary/eval.json]

Prints, per label and lesion class, the CPM against the core, the core with false positives
only outside every mark, and (synthetic data) the truth with its CPM per lesion size, and the sensitivity at 4 and 8
false positives per image against each; the perfect detectors are scored for one-class tasks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from retinaseg.core.arrays import TARGET_SCALE, load_set
from retinaseg.core.outputs import EvalRecord
from retinaseg.evaluation import score, truth

#: The labels scored as predictions: name -> (confidence planes, core planes) -> lesion-plane probabilities.
LABELS = {
    "annotator confidence": lambda confidence, core: confidence.astype(np.float32) / TARGET_SCALE["confidence"],
    "any annotator's mark (confidence > 0)": lambda confidence, core: (confidence > 0).astype(np.float32),
    "core": lambda confidence, core: core.astype(np.float32),
}


def as_probabilities(lesion_planes: np.ndarray, multiclass: bool) -> np.ndarray:
    """Lesion planes [N,S,S,K] in [0,1] -> a task's planes: a background plane first for a softmax task."""
    if not multiclass:
        return lesion_planes
    total = lesion_planes.sum(axis=-1, keepdims=True)
    lesion_planes = lesion_planes / np.maximum(total, 1.0)  # overlapping classes share one pixel
    return np.concatenate([1.0 - np.minimum(total, 1.0), lesion_planes], axis=-1).astype(np.float32)


#: Perfect detectors: a drawn lesion -> its score (higher: found at higher thresholds).
RANKS = {
    "drawn lesions by visibility": lambda lesion: float(lesion["visibility"]) + float(lesion["major"]) / 1e3,
    "drawn lesions by size": lambda lesion: float(lesion["major"]),
    "drawn lesions by annotators": lambda lesion: int(lesion["annotators"]) + float(lesion["major"]) / 1e3,
}


def perfect_detector(simulated: dict, ids: list[int], lesion_types: list[str], rank) -> np.ndarray:
    """Planes [N,S,S,1] with every drawn lesion of ``lesion_types`` at a probability that grows with ``rank``.

    Ranks are spread over [0.05, 0.99] (every lesion above the lowest swept threshold); where two
    lesions overlap, the higher one keeps the pixel.
    """
    size = int(simulated["image_size"])
    drawn = [truth.class_lesions(simulated, image_id, lesion_types) for image_id in ids]
    scores = [rank(lesion) for lesions in drawn for lesion in lesions]
    low, span = min(scores, default=0.0), (max(scores, default=0.0) - min(scores, default=0.0)) or 1.0
    planes = np.zeros((len(ids), size * size), dtype=np.float32)
    for plane, lesions in zip(planes, drawn):
        for lesion in lesions:
            pixels = truth.footprints([lesion], simulated["crop_box"], size).pixels
            plane[pixels] = np.maximum(plane[pixels], 0.05 + 0.94 * (rank(lesion) - low) / span)
    return planes.reshape(len(ids), size, size, 1)


def _frocs(summary: EvalRecord) -> dict[str, dict]:
    return {name: {"core": scores["core"]["froc"], "outside_marks": scores["core"]["froc_outside_marks"],
                   **({"truth": scores["truth"]["froc"]} if "truth" in scores else {})}
            for name, scores in summary.by_class.items()}


def ceilings(reference_dir: Path, task_name: str, scoring: score.Scoring) -> dict[str, dict[str, dict]]:
    """Label name -> lesion class -> the FROC summaries (``core``, ``outside_marks``, ``truth``) of that label."""
    task = score.reference_task(reference_dir, task_name)
    reference = load_set(reference_dir, task.name, core=True)
    confidence = load_set(reference_dir, task.name, target="confidence")[task.name][..., task.lesion_planes]
    core = reference[f"core_{task.name}"][..., task.lesion_planes]
    simulated = truth.read_truth(reference_dir)
    core_threshold = score.read_manifest(reference_dir)["core_threshold"]
    results = {}
    for label, planes_of in LABELS.items():
        probabilities = as_probabilities(planes_of(confidence, core), task.is_multiclass)
        summary, _, _ = score.score(reference, probabilities, task, scoring, label, core_threshold, simulated)
        results[label] = _frocs(summary)
    if simulated is None or task.is_multiclass:
        return results
    ids, name = reference["ids"].tolist(), task.lesion_names[0]
    drawn = [lesion for lesions in simulated["images"].values() for lesion in lesions]
    for label, rank in RANKS.items():
        if label == "drawn lesions by visibility" and not all("visibility" in lesion for lesion in drawn):
            continue  # a truth written before the generator recorded what annotators see
        planes = perfect_detector(simulated, ids, task.classes[name], rank)
        summary, _, _ = score.score(reference, planes, task, scoring, label, core_threshold, simulated)
        results[label] = _frocs(summary)
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.label_ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=Path("data/prepared/test"))
    parser.add_argument("--task", default="binary")
    parser.add_argument("--rules", type=Path, help="an eval.json whose cleaning applies "
                        "(default: metrics/eval/<task>/eval.json)")
    args = parser.parse_args(argv)
    task = score.reference_task(args.reference, args.task)
    scoring = score.Scoring.from_eval_json(args.rules or Path(f"metrics/eval/{args.task}/eval.json"),
                                           task.lesion_names)
    for label, by_class in ceilings(args.reference, args.task, scoring).items():
        for name, frocs in by_class.items():
            line = ", ".join(f"{reference} CPM {summary['cpm']:.3f}" for reference, summary in frocs.items())
            if "truth" in frocs:
                line += " (truth by size: " + ", ".join(f"{size} {group['cpm']:.3f}"
                                                        for size, group in frocs["truth"]["by_size"].items()) + ")"
            for reference in ("core", "truth") if "truth" in frocs else ("core",):
                at = frocs[reference]["sensitivity_at_fp"]
                line += f" ({reference} sensitivity at 4 FP {at['4']:.3f}, at 8 FP {at['8']:.3f})"
            print(f"{label}, {name}: {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
