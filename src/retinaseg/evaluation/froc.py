"""Lesion detection over every threshold: the FROC curve and its competition performance metric (CPM).

The field judges lesion detection by how many lesions a model finds for how many false
alarms per image (Retinopathy Online Challenge; Niemeijer et al., IEEE TMI 2010), not by
pixel overlap. Here the probability of one class is thresholded at every value of a grid
and cleaned as evaluation cleans it (``postprocess.kept_labels``); at each threshold a
reference lesion is found when a kept component touches one of its pixels, and a kept
component touching no reference pixel is a false positive (the matching rule of
``metrics.lesion_counts``). The CPM is the mean sensitivity at 1/8 ... 8 FP per image.

That rule rewards painting: one component over a region finds every lesion in it. So
``Lesions`` can also credit each component with one lesion only, and spare the pixels
any annotator marked from counting as false alarms (``RULE`` states each reading).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from retinaseg.evaluation import metrics, postprocess

#: False positives per image at which the CPM reads the sensitivity, with the names eval.json gives them.
CPM_RATES = {"1/8": 0.125, "1/4": 0.25, "1/2": 0.5, "1": 1.0, "2": 2.0, "4": 4.0, "8": 8.0}
#: The thresholds swept: the validation grid of 0.01 steps and a finer tail, where models whose
#: probabilities saturate keep their most confident, fewest detections.
SWEEP_THRESHOLDS = np.concatenate([postprocess.THRESHOLD_GRID, np.round(0.99 + np.arange(1, 10) * 0.001, 3)])
#: How the curve is read at a false-positive rate; written into eval.json beside the figures.
RULE = ("sensitivity at a rate = the highest lesion sensitivity of any swept threshold with at most that many "
        "false-positive components per image (0 if none; predicting nothing is always possible); CPM = the mean "
        "over 1/8, 1/4, 1/2, 1, 2, 4 and 8; a class's own probability is thresholded and cleaned as in evaluation. "
        "core: a lesion is found when a kept component touches one of its pixels, a kept component touching no core "
        "pixel is a false positive; core outside marks: a component finds at most the one lesion it overlaps most, "
        "and is a false positive only when it touches no pixel any annotator marked; truth: a component finds at "
        "most the one drawn lesion it overlaps most, and is a false positive when it touches none")


@dataclass(frozen=True)
class Lesions:
    """The reference lesions of one image plane as (pixel, lesion) pairs: a pixel may belong to several.

    ``spared`` pixels are no lesion to find, but a component touching one is no false alarm
    either: the ignore regions of detection benchmarks (here, what any annotator marked).
    With ``one_per_component`` a component finds at most one lesion (the one it overlaps most), as a
    detection finds one finding: a component painted over a region of lesions finds one, not all.
    """

    pixels: np.ndarray
    owners: np.ndarray
    count: int
    spared: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    one_per_component: bool = False

    @classmethod
    def from_mask(cls, mask: np.ndarray, spared: np.ndarray | None = None, one_per_component: bool = False) -> Lesions:
        """Each 8-connected component of a boolean [H,W] reference is one lesion (the lesion core's rule)."""
        labels, count = ndimage.label(mask, structure=metrics.EIGHT_CONNECTED)
        pixels = np.flatnonzero(labels)
        spared_pixels = np.zeros(0, dtype=np.int64) if spared is None else np.flatnonzero(spared & ~mask)
        return cls(pixels, labels.ravel()[pixels].astype(np.int64) - 1, int(count), spared_pixels, one_per_component)


def match(labels: np.ndarray, keep: np.ndarray, lesions: Lesions) -> tuple[np.ndarray, int]:
    """Which lesions the kept components of ``labels`` find, and how many kept components touch none (nor a spared pixel)."""
    flat = labels.ravel()
    hit = keep[flat[lesions.pixels]]
    found = np.zeros(lesions.count, dtype=bool)
    if lesions.one_per_component:
        found[_largest_overlaps(flat[lesions.pixels[hit]], lesions.owners[hit])] = True
    else:
        found[lesions.owners[hit]] = True
    touched = flat[np.concatenate([lesions.pixels[hit], lesions.spared])]
    touching = int(np.count_nonzero(keep[np.unique(touched)]))
    return found, int(keep.sum()) - touching


def _largest_overlaps(components: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Per component, the lesion it shares most pixels with (the lowest index on ties), from (component, lesion) pixel pairs."""
    if not components.size:
        return owners[:0]
    pairs, overlap = np.unique(np.stack([components, owners]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -overlap, pairs[0]))
    first = np.r_[True, pairs[0, order][1:] != pairs[0, order][:-1]]
    return pairs[1, order][first]


@dataclass(frozen=True)
class Sweep:
    """At each swept threshold: which lesions are found [T, L] (pooled over images, ``lesion_image`` says
    whose), and each image's false-positive components [N, T], the counts behind every figure."""

    thresholds: np.ndarray
    found: np.ndarray
    lesion_image: np.ndarray
    image_false_positives: np.ndarray
    predicted_fov_share: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_false_positives)

    @property
    def false_positives(self) -> np.ndarray:
        return self.image_false_positives.sum(axis=0)

    @property
    def fp_per_image(self) -> np.ndarray:
        return self.false_positives / self.n_images

    @property
    def sensitivity(self) -> np.ndarray:
        lesions = self.found.shape[1]
        return self.found.sum(axis=1) / lesions if lesions else np.full(len(self.thresholds), math.nan)

    def index_at(self, rate: float) -> int | None:
        """The threshold index of the highest sensitivity with at most ``rate`` FP per image.

        Ties go to fewer false positives, then to the higher threshold, the cautious choice for unseen images.
        """
        allowed = np.flatnonzero(self.fp_per_image <= rate + 1e-12)
        if not allowed.size:
            return None
        order = np.lexsort((-allowed, self.fp_per_image[allowed], -self.found[allowed].sum(axis=1)))
        return int(allowed[order[0]])

    def summary(self, subsets: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> dict:
        """CPM, sensitivity and threshold at every rate, counts; per subset (e.g. lesion kind) the same reading.

        ``subsets`` maps a grouping ("kind", "size") to group name -> boolean lesion selector [L]; a
        group's sensitivity at a rate is read at the threshold the whole class uses for that rate.
        """
        indices = {name: self.index_at(rate) for name, rate in CPM_RATES.items()}
        at_rate = {name: self._sensitivity(index, slice(None)) for name, index in indices.items()}
        result = {"cpm": _mean(at_rate.values()), "sensitivity_at_1_fp": at_rate["1"],
                  "sensitivity_at_2_fp": at_rate["2"], "sensitivity_at_fp": at_rate,
                  "threshold_at_fp": {name: None if index is None else float(self.thresholds[index])
                                      for name, index in indices.items()},
                  "n_lesions": int(self.found.shape[1]), "n_images": self.n_images}
        for grouping, groups in (subsets or {}).items():
            result[f"by_{grouping}"] = {}
            for group, chosen in groups.items():
                reading = {name: self._sensitivity(index, chosen) for name, index in indices.items()}
                result[f"by_{grouping}"][group] = {"cpm": _mean(reading.values()), "sensitivity_at_fp": reading,
                                                   "n_lesions": int(np.count_nonzero(chosen))}
        return result

    def curve(self) -> list[dict[str, float]]:
        """One row per threshold, lowest first: threshold, FP per image, sensitivity (a DVC plot's rows)."""
        return [{"threshold": float(t), "fp_per_image": float(fp), "sensitivity": float(s),
                 "n_found_lesions": int(n), "n_fp_components": int(f), "predicted_fov_share": float(a)}
                for t, fp, s, n, f, a in zip(self.thresholds, self.fp_per_image, self.sensitivity,
                                             self.found.sum(axis=1), self.false_positives, self.predicted_fov_share)]

    def resampled_cpm(self, weights: np.ndarray) -> np.ndarray:
        """The CPM of each resample of the images: ``weights`` [B, N] says how often each image is drawn."""
        lesions = np.zeros((self.n_images, self.found.shape[1]))
        lesions[self.lesion_image, np.arange(self.found.shape[1])] = 1
        found = weights @ (lesions @ self.found.T.astype(float))
        totals = weights @ lesions.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivity = found / totals[:, None]
        fp_per_image = (weights @ self.image_false_positives) / weights.sum(axis=1, keepdims=True)
        readings = [np.where(fp_per_image <= rate + 1e-12, sensitivity, 0.0).max(axis=1) for rate in CPM_RATES.values()]
        return np.mean(readings, axis=0)

    def _sensitivity(self, index: int | None, chosen: np.ndarray | slice) -> float:
        found = self.found[:, chosen]
        if not found.shape[1]:
            return math.nan
        return 0.0 if index is None else float(found[index].mean())


def _mean(values) -> float:
    values = [value for value in values if not math.isnan(value)]
    return float(np.mean(values)) if values else math.nan


def sweep(probability: np.ndarray, fov: np.ndarray, discs: Sequence[np.ndarray | None], min_component_px: int,
          references: Sequence[Lesions], thresholds: np.ndarray = SWEEP_THRESHOLDS) -> Sweep:
    """Detections of one class over ``thresholds``: probabilities [N,H,W], one reference and disc per image."""
    return sweeps(probability, fov, discs, min_component_px, {"": references}, thresholds)[""]


def cleaned_components(plane: np.ndarray, threshold: float, fov: np.ndarray, min_component_px: int,
                       disc: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The detections of one plane [H,W] at ``threshold``: its components as evaluation cleans them."""
    return postprocess.kept_labels(plane >= threshold, fov, min_component_px, disc)


def sweeps(probability: np.ndarray, fov: np.ndarray, discs: Sequence[np.ndarray | None], min_component_px: int,
           references: Mapping[str, Sequence[Lesions]], thresholds: np.ndarray = SWEEP_THRESHOLDS,
           detections: Callable[..., tuple[np.ndarray, np.ndarray]] = cleaned_components) -> dict[str, Sweep]:
    """``sweep`` against several references at once (core, truth, ...): each threshold is cleaned once for all.

    ``detections`` (``cleaned_components``'s arguments and result) turns a plane and a threshold into labelled
    detections; another rule of forming them can be scored exactly as evaluation scores its own.
    """
    counted = {}
    for name, per_image in references.items():
        offsets = np.cumsum([0, *(reference.count for reference in per_image)])
        counted[name] = (offsets, np.zeros((len(thresholds), offsets[-1]), dtype=bool),
                         np.zeros((len(probability), len(thresholds)), dtype=np.int64))
    predicted = np.zeros(len(thresholds), dtype=np.int64)
    for image, (plane, disc) in enumerate(zip(probability, discs)):
        levels = np.asarray(thresholds, dtype=plane.dtype)  # compared as threshold_masks compares them
        top = plane[fov].max() if fov.any() else -np.inf
        for index, threshold in enumerate(levels):
            if threshold > top:  # nothing passes here or above: no detection, no false alarm
                break
            labels, keep = detections(plane, threshold, fov, min_component_px, disc)
            predicted[index] += np.count_nonzero(keep[labels])
            for name, (offsets, found, false_positives) in counted.items():
                found[index, offsets[image]:offsets[image + 1]], false_positives[image, index] = match(
                    labels, keep, references[name][image])
    # The predicted area beside each point shows a model that finds lesions by painting regions.
    share = predicted / max(len(probability) * int(np.count_nonzero(fov)), 1)
    return {name: Sweep(np.asarray(thresholds, dtype=float), found,
                        np.repeat(np.arange(len(probability)), np.diff(offsets)), false_positives, share)
            for name, (offsets, found, false_positives) in counted.items()}


def threshold_at_rate(probability: np.ndarray, reference: np.ndarray, marked: np.ndarray, fov: np.ndarray,
                      discs: Sequence[np.ndarray | None], min_component_px: int, rate: float,
                      max_area_ratio: float) -> float:
    """The swept threshold that finds the most lesions of ``reference`` [N,H,W] with at most ``rate`` false
    positives per image outside every annotator's mark (``marked`` [N,H,W]), each component finding one lesion
    at most, and with a predicted area at most ``max_area_ratio`` times the reference's.

    Lesion counts alone cannot tell painting on validation images whose reference is itself regions: the area
    bound can (and keeps the choice steady where a handful of images gives few false positives to count).
    Where no threshold qualifies, the highest one.
    """
    swept = sweep(probability, fov, discs, min_component_px,
                  [Lesions.from_mask(plane, spared, one_per_component=True) for plane, spared in zip(reference, marked)])
    reference_share = np.count_nonzero(reference & fov) / (len(reference) * max(int(np.count_nonzero(fov)), 1))
    allowed = (swept.fp_per_image <= rate + 1e-12) & (swept.predicted_fov_share <= max_area_ratio * reference_share)
    if not allowed.any():
        return float(swept.thresholds[-1])
    found = np.where(allowed, swept.found.sum(axis=1), -1)
    return float(swept.thresholds[np.flatnonzero(found == found.max())[-1]])
