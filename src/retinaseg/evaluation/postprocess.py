"""From class probabilities to lesion masks: thresholds, field of view, specks and the optic disc.

Evaluation and prediction share these rules, so a threshold chosen on validation images
means the same thing wherever it is applied.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retinaseg.core.tasks import lesion_planes
from retinaseg.evaluation import metrics

#: Candidate thresholds of the validation search: 0.01, 0.02, ..., 0.99. Models trained on wide
#: annotator regions put the lesion cores in a narrow band near 1, where 0.05 steps are too coarse.
THRESHOLD_GRID = np.round(np.arange(1, 100) * 0.01, 2)


def probability(text: str) -> float:
    """A command-line threshold: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


@dataclass(frozen=True)
class Rules:
    """How one image's probabilities become lesion masks: per-class thresholds, then cleaning."""

    thresholds: Sequence[float]
    min_component_px: int = 1
    drop_on_optic_disc: bool = False

    def apply(self, probabilities: np.ndarray, fov: np.ndarray, disc: np.ndarray | None) -> np.ndarray:
        """Boolean masks [H,W,C] of probabilities [H,W,C]; ``disc`` is used when the rules drop disc hits."""
        return clean(threshold_masks(probabilities, self.thresholds), fov, self.min_component_px,
                     disc if self.drop_on_optic_disc else None)


def threshold_masks(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Boolean masks [..., C] from probabilities [..., C], one threshold per lesion plane.

    One plane: p >= t. Several (background first): a pixel is lesion when some class reaches
    its threshold, and goes to the most probable of the classes that do; else background.
    """
    planes = probabilities.shape[-1]
    lesion = lesion_planes(planes)
    if len(thresholds) != len(lesion):
        raise ValueError(f"expected {len(lesion)} thresholds (one per lesion plane), got {len(thresholds)}")
    if lesion == [0]:
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
    lesion = lesion_planes(masks.shape[-1])
    for plane in lesion:
        labels, keep = kept_labels(masks[..., plane], fov, min_component_px, disc)
        cleaned[..., plane] = keep[labels]
    if lesion != [0]:
        cleaned[..., 0] = ~cleaned[..., 1:].any(axis=-1)
    return cleaned


def kept_labels(mask: np.ndarray, fov: np.ndarray, min_component_px: int,
                disc: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of one plane [H,W] inside the field of view, and which labels the cleaning keeps.

    The rule of ``clean``: big enough, and, given ``disc``, not centred on the optic disc.
    """
    labels, keep = metrics.kept_components(mask & fov, min_component_px)
    if disc is not None and len(keep) > 1:
        # Centres of mass from pixel sums per label: what ndimage.center_of_mass gives, several times faster.
        flat = labels.ravel()
        rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
        sizes = np.maximum(np.bincount(flat, minlength=len(keep)), 1)
        centre_rows = np.rint(np.bincount(flat, rows, len(keep)) / sizes).astype(int)
        centre_cols = np.rint(np.bincount(flat, cols, len(keep)) / sizes).astype(int)
        keep[1:] &= ~disc[centre_rows[1:], centre_cols[1:]]
    return labels, keep


def f_beta_thresholds(probabilities: np.ndarray, reference: np.ndarray, fov: np.ndarray,
                      min_component_px: int, discs: Sequence[np.ndarray | None], beta: float = 1.0) -> list[float]:
    """Per lesion plane, the grid threshold with the best pooled F-beta against ``reference``.

    ``probabilities`` [N,H,W,C] and boolean ``reference`` [N,H,W,C] are validation images;
    each class is thresholded on its own probability and cleaned as in evaluation. Ties go
    to the lower threshold; a threshold with nothing predicted or marked (F-beta NaN) never wins.
    """
    chosen = []
    for plane in lesion_planes(probabilities.shape[-1]):
        best_score, best_threshold = -1.0, float(THRESHOLD_GRID[0])
        for threshold in THRESHOLD_GRID:
            counts = sum(
                metrics.confusion_counts(truth[..., plane, None],
                                         clean((probability[..., plane] >= threshold)[..., None], fov,
                                               min_component_px, disc))[0]
                for probability, truth, disc in zip(probabilities, reference, discs))
            tp, fp, fn, _ = (int(value) for value in counts)
            score = metrics.f_beta(tp, fp, fn, beta)
            if score > best_score:
                best_score, best_threshold = score, float(threshold)
        chosen.append(best_threshold)
    return chosen
