"""Final-evaluation scores built from confusion counts, in the spirit of nnU-Net's summary.json.

Every aggregate is derived from per-image, per-plane TP/FP/FN/TN counts, and ``summarize``
returns those counts too, so any other aggregate can be recomputed from the written file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCORE_NAMES = ("precision", "recall", "iou", "f1", "accuracy", "specificity")
COUNT_NAMES = ("tp", "fp", "fn", "tn")
TASKS = ("binary", "multiclass")
#: Top-level keys of ``summarize`` besides the class names.
SUMMARY_KEYS = ("macro", "micro", "per_image")


def confusion_counts(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN per plane of one image: boolean [H,W,C] masks in, int64 [C,4] out."""
    if reference.ndim != 3 or reference.shape != prediction.shape:
        raise ValueError(
            f"expected two [H,W,C] masks of one shape, got {reference.shape} and {prediction.shape}"
        )
    if reference.dtype != bool or prediction.dtype != bool:
        raise TypeError("masks must be boolean; turn probabilities into masks with predictions_to_masks")
    planes = reference.shape[-1]
    reference = reference.reshape(-1, planes)
    prediction = prediction.reshape(-1, planes)
    tp = np.count_nonzero(reference & prediction, axis=0)
    fp = np.count_nonzero(prediction, axis=0) - tp
    fn = np.count_nonzero(reference, axis=0) - tp
    tn = reference.shape[0] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Precision, recall, IoU, F1 (= Dice), accuracy and specificity from one set of counts.

    A score whose denominator is 0 is NaN: precision with nothing predicted, say, is
    undefined, and reporting it as 0 or 1 would bias any mean taken over it.
    """
    tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "specificity": _ratio(tn, tn + fp),
    }


def predictions_to_masks(probabilities: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Boolean masks of the same shape [..., C] as the model's probabilities.

    binary: p >= threshold. multiclass: the one-hot of the argmax over planes, because softmax
    planes are mutually exclusive; ``threshold`` is unused there and ties go to the lower plane.
    """
    if task == "binary":
        return probabilities >= threshold
    if task == "multiclass":
        planes = probabilities.shape[-1]
        return np.argmax(probabilities, axis=-1)[..., None] == np.arange(planes)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _scores_with_counts(counts: np.ndarray) -> dict[str, float | int]:
    totals = [int(value) for value in counts]
    return {**scores(*totals), **dict(zip(COUNT_NAMES, totals))}


def _class_summary(counts: np.ndarray) -> dict[str, dict]:
    """Aggregates of one class from its per-image counts [N,4]."""
    per_image = [scores(*row) for row in counts]
    values = {name: np.array([item[name] for item in per_image]) for name in SCORE_NAMES}
    scored = {name: ~np.isnan(value) for name, value in values.items()}
    return {
        "micro": _scores_with_counts(counts.sum(axis=0)),
        # nnU-Net's rule: an image where a score is undefined does not enter its mean.
        "per_image_mean": {
            **{name: _mean(values[name][scored[name]]) for name in SCORE_NAMES},
            "n_images_scored": {name: int(scored[name].sum()) for name in SCORE_NAMES},
        },
        # Undefined scores counted as 0, as sklearn's default zero_division and the
        # published tutorial's per-image figures do.
        "per_image_mean_zero_filled": {
            name: _mean(np.nan_to_num(values[name], nan=0.0)) for name in SCORE_NAMES
        },
    }


def summarize(
    image_ids: Sequence[str | int],
    counts: np.ndarray,
    class_names: list[str],
    lesion_planes: list[int],
) -> dict:
    """JSON-ready evaluation summary from per-image counts [N,C,4] (TP, FP, FN, TN).

    One entry per lesion class (micro, per_image_mean, per_image_mean_zero_filled), then
    "macro" (mean of the lesion classes' micro scores, NaN excluded), "micro" (scores of the
    counts pooled over lesion classes) and "per_image" (the counts of every image and plane).
    Undefined scores stay NaN; the JSON writer turns them into null.
    """
    counts = np.asarray(counts, dtype=np.int64)
    expected = (len(image_ids), len(class_names), len(COUNT_NAMES))
    if counts.shape != expected:
        raise ValueError(f"counts must have shape {expected} (images, planes, 4), got {counts.shape}")
    clashes = set(SUMMARY_KEYS) & set(class_names)
    if clashes:
        raise ValueError(f"class names {sorted(clashes)} clash with summary keys {SUMMARY_KEYS}")

    summary: dict = {class_names[plane]: _class_summary(counts[:, plane]) for plane in lesion_planes}
    class_micro = [summary[class_names[plane]]["micro"] for plane in lesion_planes]
    macro = {}
    for name in SCORE_NAMES:
        values = np.array([micro[name] for micro in class_micro])
        macro[name] = _mean(values[~np.isnan(values)])
    summary["macro"] = macro
    summary["micro"] = _scores_with_counts(counts[:, lesion_planes].sum(axis=(0, 1)))
    summary["per_image"] = [
        {
            "id": image_id.item() if isinstance(image_id, np.generic) else image_id,
            **{
                name: dict(zip(COUNT_NAMES, (int(value) for value in counts[index, plane])))
                for plane, name in enumerate(class_names)
            },
        }
        for index, image_id in enumerate(image_ids)
    ]
    return summary
