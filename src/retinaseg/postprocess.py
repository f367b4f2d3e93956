"""From class probabilities to lesion masks: thresholds, field of view, specks and the optic disc.

Evaluation and prediction share these rules, so a threshold chosen on validation images
means the same thing wherever it is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from retinaseg import metrics

#: Candidate thresholds of the validation search: 0.01, 0.02, ..., 0.99. Models trained on wide
#: annotator regions put the lesion cores in a narrow band near 1, where 0.05 steps are too coarse.
THRESHOLD_GRID = np.round(np.arange(1, 100) * 0.01, 2)


def threshold_masks(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Boolean masks [..., C] from probabilities [..., C], one threshold per lesion plane.

    One plane: p >= t. Several (background first): a pixel is lesion when some class reaches
    its threshold, and goes to the most probable of the classes that do; else background.
    """
    planes = probabilities.shape[-1]
    lesion = metrics.lesion_planes(planes)
    if len(thresholds) != len(lesion):
        raise ValueError(f"expected {len(lesion)} thresholds (one per lesion plane), got {len(thresholds)}")
    if planes == 1:
        return probabilities >= thresholds[0]
    scores = probabilities[..., 1:]
    passing = scores >= np.asarray(thresholds, dtype=scores.dtype)
    best = np.argmax(np.where(passing, scores, -1.0), axis=-1)
    masks = np.zeros(probabilities.shape, dtype=bool)
    any_lesion = passing.any(axis=-1)
    for index in range(planes - 1):
        masks[..., index + 1] = any_lesion & (best == index)
    masks[..., 0] = ~any_lesion
    return masks


def clean(masks: np.ndarray, fov: np.ndarray, min_component_px: int,
          disc: np.ndarray | None = None) -> np.ndarray:
    """Lesion masks [H,W,C] of one image limited to the field of view, without specks and disc hits.

    8-connected components smaller than ``min_component_px`` are dropped, and, given a
    ``disc`` mask, so is every component whose centre of mass lies on the optic disc.
    Several planes: the background plane is recomputed as "no lesion".
    """
    cleaned = masks.copy()
    lesion = metrics.lesion_planes(masks.shape[-1])
    for plane in lesion:
        labels, keep = metrics.kept_components(masks[..., plane] & fov, min_component_px)
        count = len(keep) - 1
        if disc is not None and count:
            centres = ndimage.center_of_mass(np.ones_like(labels), labels, range(1, count + 1))
            on_disc = [disc[int(round(r)), int(round(c))] for r, c in centres]
            keep[1:] &= ~np.asarray(on_disc, dtype=bool)
        cleaned[..., plane] = keep[labels]
    if masks.shape[-1] > 1:
        cleaned[..., 0] = ~cleaned[..., 1:].any(axis=-1)
    return cleaned


def f_beta(tp: int, fp: int, fn: int, beta: float) -> float:
    """F-score weighting recall ``beta`` times as much as precision (F1 = Dice at beta 1)."""
    weight = beta**2
    denominator = (1 + weight) * tp + weight * fn + fp
    return (1 + weight) * tp / denominator if denominator else 0.0


def choose_thresholds(probabilities: np.ndarray, reference: np.ndarray, fov: np.ndarray,
                      min_component_px: int, discs: Sequence[np.ndarray | None], beta: float = 1.0) -> list[float]:
    """Per lesion plane, the grid threshold with the best pooled F-beta against ``reference``.

    ``probabilities`` [N,H,W,C] and boolean ``reference`` [N,H,W,C] are validation images;
    each class is thresholded on its own probability and cleaned as in evaluation. Ties go
    to the lower threshold.
    """
    chosen = []
    for plane in metrics.lesion_planes(probabilities.shape[-1]):
        best_score, best_threshold = -1.0, float(THRESHOLD_GRID[0])
        for threshold in THRESHOLD_GRID:
            counts = sum(
                metrics.confusion_counts(truth[..., plane, None],
                                         clean((probability[..., plane] >= threshold)[..., None], fov,
                                               min_component_px, disc))[0]
                for probability, truth, disc in zip(probabilities, reference, discs))
            tp, fp, fn, _ = (int(value) for value in counts)
            score = f_beta(tp, fp, fn, beta)
            if score > best_score:
                best_score, best_threshold = score, float(threshold)
        chosen.append(best_threshold)
    return chosen
