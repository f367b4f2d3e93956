"""Final-evaluation scores built from confusion counts, in the spirit of nnU-Net's summary.json.

Every aggregate is derived from per-image, per-plane TP/FP/FN/TN counts, and ``summarize``
returns those counts too, so any other aggregate can be recomputed from the written file.
Lesion- and image-level counts (``lesion_counts``, ``summarize_lesions``) and a memory-bounded
pixel precision-recall sweep (``PRAccumulator``) complement them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from retinaseg.core.outputs import EvalRecord

SCORE_NAMES = ("precision", "recall", "iou", "f1", "accuracy", "specificity")
COUNT_NAMES = ("tp", "fp", "fn", "tn")


def confusion_counts(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN per plane of one image: boolean [H,W,C] masks in, int64 [C,4] out."""
    if reference.ndim != 3 or reference.shape != prediction.shape:
        raise ValueError(
            f"expected two [H,W,C] masks of one shape, got {reference.shape} and {prediction.shape}"
        )
    if reference.dtype != bool or prediction.dtype != bool:
        raise TypeError("masks must be boolean; turn probabilities into masks with postprocess.threshold_masks")
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


def f_beta(tp: int, fp: int, fn: int, beta: float = 1.0) -> float:
    """F-score weighting recall ``beta`` times as much as precision (F1 = Dice at beta 1); NaN as ``scores``."""
    weight = beta**2
    return _ratio((1 + weight) * tp, (1 + weight) * tp + weight * fn + fp)


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
        "f1": f_beta(tp, fp, fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "specificity": _ratio(tn, tn + fp),
    }


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def scores_with_counts(counts: np.ndarray) -> dict[str, float | int]:
    totals = [int(value) for value in counts]
    return {**scores(*totals), **dict(zip(COUNT_NAMES, totals))}


def _class_summary(counts: np.ndarray) -> dict[str, dict]:
    """Aggregates of one class from its per-image counts [N,4]."""
    per_image = [scores(*row) for row in counts]
    values = {name: np.array([item[name] for item in per_image]) for name in SCORE_NAMES}
    scored = {name: ~np.isnan(value) for name, value in values.items()}
    return {
        "micro": scores_with_counts(counts.sum(axis=0)),
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
    clashes = set(EvalRecord.reserved_keys()) & set(class_names)
    if clashes:  # macro, micro and per_image sit beside the classes here, the rest beside them in eval.json
        raise ValueError(f"class names {sorted(clashes)} clash with keys of eval.json")

    summary: dict = {class_names[plane]: _class_summary(counts[:, plane]) for plane in lesion_planes}
    class_micro = [summary[class_names[plane]]["micro"] for plane in lesion_planes]
    macro = {}
    for name in SCORE_NAMES:
        values = np.array([micro[name] for micro in class_micro])
        macro[name] = _mean(values[~np.isnan(values)])
    summary["macro"] = macro
    summary["micro"] = scores_with_counts(counts[:, lesion_planes].sum(axis=(0, 1)))
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


_CURVE_SCORES = ("precision", "recall", "f1")
#: 8-connectivity: diagonal neighbours belong to one lesion, as a grader tracing it would see it.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_plane(name: str, plane: np.ndarray) -> None:
    if plane.ndim != 2 or plane.dtype != bool:
        raise ValueError(f"{name} must be a boolean [H,W] plane, got {plane.dtype} {plane.shape}")


def kept_components(prediction: np.ndarray, min_component_px: int) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of ``prediction`` and, per label, whether it is big enough to count.

    Label 0 (background) is never kept.
    """
    labels, count = ndimage.label(prediction, structure=EIGHT_CONNECTED)
    kept = np.bincount(labels.ravel(), minlength=count + 1) >= min_component_px
    kept[0] = False
    return labels, kept


def lesion_counts(reference: np.ndarray, prediction: np.ndarray, min_component_px: int,
                  disc: np.ndarray | None = None) -> dict:
    """Lesion- and image-level counts of one class plane [H,W] of one image.

    Lesions and predicted components are 8-connected. Predicted components smaller than
    ``min_component_px`` pixels are dropped first, for everything below, so specks neither
    detect a lesion nor count as false positives. Matching rule: a reference lesion is found
    when it shares at least one pixel with a kept predicted component; a kept component that
    shares no pixel with any reference lesion is a false-positive component. One component
    may find several lesions, and several components may find one lesion. Given the
    optic ``disc`` mask, kept components touching it are counted as ``optic_disc_components``.
    """
    _check_plane("reference", reference)
    _check_plane("prediction", prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"planes differ in shape: {reference.shape} and {prediction.shape}")
    reference_labels, reference_lesions = ndimage.label(reference, structure=EIGHT_CONNECTED)
    prediction_labels, kept = kept_components(prediction, min_component_px)
    kept_mask = kept[prediction_labels]
    found = np.unique(reference_labels[kept_mask])
    touching = np.unique(prediction_labels[kept_mask & reference])
    predicted_components = int(kept.sum())
    on_disc = {}
    if disc is not None:
        on_disc["optic_disc_components"] = int(np.count_nonzero(np.unique(prediction_labels[kept_mask & disc])))
    return {
        "reference_lesions": int(reference_lesions),
        "found_lesions": int(np.count_nonzero(found)),
        "predicted_components": predicted_components,
        "false_positive_components": predicted_components - touching.size,
        "reference_positive": bool(reference_lesions > 0),
        "predicted_positive": predicted_components > 0,
        **on_disc,
    }


def summarize_lesions(per_image: list[dict]) -> dict:
    """Lesion- and image-level aggregates of one class from its ``lesion_counts`` over images.

    Lesion sensitivity pools lesions over images, so an image with many lesions weighs more.
    Image-level scores read "positive" as ``reference_positive`` / ``predicted_positive``.
    Undefined scores are NaN (no reference lesions, no positive or no negative images).
    """
    reference = [bool(item["reference_positive"]) for item in per_image]
    predicted = [bool(item["predicted_positive"]) for item in per_image]
    image_tp = sum(r and p for r, p in zip(reference, predicted))
    image_fp = sum(p and not r for r, p in zip(reference, predicted))
    image_fn = sum(r and not p for r, p in zip(reference, predicted))
    image_tn = len(per_image) - image_tp - image_fp - image_fn
    n_reference = sum(int(item["reference_lesions"]) for item in per_image)
    n_found = sum(int(item["found_lesions"]) for item in per_image)
    n_fp_components = sum(int(item["false_positive_components"]) for item in per_image)
    on_disc = {}
    if per_image and all("optic_disc_components" in item for item in per_image):
        n_disc = sum(int(item["optic_disc_components"]) for item in per_image)
        on_disc = {"optic_disc_components_per_image": _ratio(n_disc, len(per_image)), "n_optic_disc_components": n_disc}
    return {
        "lesion_sensitivity": _ratio(n_found, n_reference),
        "fp_components_per_image": _ratio(n_fp_components, len(per_image)),
        "n_reference_lesions": n_reference,
        "n_found_lesions": n_found,
        "n_fp_components": n_fp_components,
        "n_images": len(per_image),
        "image_sensitivity": _ratio(image_tp, image_tp + image_fn),
        "image_specificity": _ratio(image_tn, image_tn + image_fp),
        "image_tp": image_tp,
        "image_fp": image_fp,
        "image_fn": image_fn,
        "image_tn": image_tn,
        **on_disc,
    }


class PRAccumulator:
    """Pixel-level precision-recall over a fixed threshold grid, in O(num_thresholds) memory.

    Thresholds are t_k = k / (num_thresholds - 1); a pixel is predicted positive at t_k when
    p >= t_k, compared in the probabilities' own dtype as ``postprocess.threshold_masks`` does. So
    each pixel is counted in the bin of the largest threshold it reaches, and the counts at
    t_k are those of bins k and above: a probability exactly on t_k is positive at t_k.
    """

    def __init__(self, num_thresholds: int = 101) -> None:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
        # k / (n - 1), one correctly rounded division each; linspace (k * step) misses some.
        self.thresholds = np.arange(num_thresholds) / (num_thresholds - 1)
        self.positives = np.zeros(num_thresholds, dtype=np.int64)
        self.negatives = np.zeros(num_thresholds, dtype=np.int64)

    def update(self, probabilities: np.ndarray, reference: np.ndarray) -> None:
        """Add the pixels of one batch: probabilities in [0, 1] and a boolean reference, one shape."""
        if probabilities.shape != reference.shape:
            raise ValueError(f"shapes differ: {probabilities.shape} and {reference.shape}")
        if reference.dtype != bool or not np.issubdtype(probabilities.dtype, np.floating):
            raise TypeError("expected floating probabilities and a boolean reference")
        if not np.all((probabilities >= 0) & (probabilities <= 1)):
            raise ValueError("probabilities must lie in [0, 1] (and not be NaN)")
        grid = self.thresholds.astype(probabilities.dtype)
        bins = np.searchsorted(grid, probabilities.ravel(), side="right") - 1
        reference = reference.ravel()
        size = self.thresholds.size
        self.positives += np.bincount(bins[reference], minlength=size)
        self.negatives += np.bincount(bins[~reference], minlength=size)

    def _at_thresholds(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """TP and FP at every threshold (pixels in that bin or above), and the pixel totals."""
        tp = np.cumsum(self.positives[::-1])[::-1]
        fp = np.cumsum(self.negatives[::-1])[::-1]
        return tp, fp, int(self.positives.sum()), int(self.negatives.sum())

    def curve(self) -> list[dict[str, float]]:
        """One row per threshold, lowest first: threshold, precision, recall, f1.

        Precision is NaN where nothing is predicted, recall and F1 where nothing is positive.
        """
        tp, fp, positives, negatives = self._at_thresholds()
        rows = []
        for threshold, hits, false_alarms in zip(self.thresholds, tp, fp):
            fn = positives - int(hits)
            tn = negatives - int(false_alarms)
            row = scores(hits, false_alarms, fn, tn)
            rows.append({"threshold": float(threshold), **{name: row[name] for name in _CURVE_SCORES}})
        return rows

    def auc_pr(self) -> float:
        """Average precision: sum over thresholds of (R_k - R_{k+1}) * P_k, with R beyond 1 = 0.

        The step-wise sum of sklearn's ``average_precision_score``, not a trapezoid, which
        would overrate a curve interpolated between sparse points. NaN without positives.
        """
        tp, fp, positives, _ = self._at_thresholds()
        if positives == 0:
            return math.nan
        recall_gain = (tp - np.append(tp[1:], 0)) / positives
        gained = recall_gain > 0  # tp > 0 there, so precision is defined
        precision = tp[gained] / (tp[gained] + fp[gained])
        return float(np.sum(recall_gain[gained] * precision))

    def best_f1(self) -> dict[str, float]:
        """Threshold, F1, precision and recall where F1 peaks (the lowest such threshold on ties).

        All NaN without positives, where recall and so the trade-off are undefined.
        """
        keys = ("threshold", "f1", "precision", "recall")
        if not self.positives.any():
            return {name: math.nan for name in keys}
        best = max(self.curve(), key=lambda row: row["f1"])
        return {name: best[name] for name in keys}
