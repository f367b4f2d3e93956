"""How the annotators' agreement on a haemorrhage follows what the image shows.

On real DIARETDB1 the number of annotators who mark a haemorrhage rises with how dark it is:
annotators mark what they can see. A synthetic set whose agreement is random with respect to the
image cannot teach a model which lesions the core holds. These figures measure that on any
folder in the official layout, over the haemorrhage map:

- a **region** is an 8-connected component of the map at level 1 or more (>= 21) inside the
  field of view; its **level** is its maximum in steps of 21 (1..12), its **annotator count**
  ``max(1, round(maximum / 63.75))`` (one annotator at full confidence stores 63), and it is in
  the **core** when its maximum reaches ``CORE_THRESHOLD`` of full scale (level 10: three
  annotators at full confidence store 189, under the core);
- its **darkness** is that of the darkest blob inside it, vessels suppressed: the green channel
  at half of full resolution (Gaussian, sigma 1 px); a background that fills dark spots narrower
  than an 82-px (full-size) line but keeps long vessels (the minimum over 12 orientations of a
  grey closing with that line); darkness = (background - green) / background, smoothed (sigma
  1.5 px), maximum over the region.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from retinaseg.core import layout

LESION = "hemorrhages"
#: The project's lesion core, as ``prepare.core_threshold`` defaults to (the dataset toolkit's 0.75).
CORE_THRESHOLD = 0.75
#: Full scale of one annotator at full confidence (255 / 4).
ANNOTATOR_SCALE = 255 / 4
#: Full-size length of the line that defines the background.
LINE_LENGTH = 82
ORIENTATIONS = 12
GREEN_SIGMA = 1.0
DARKNESS_SIGMA = 1.5
#: A region darker than its background by less than this shows "nothing".
VISIBLE_DARKNESS = 0.10
#: Bootstrap resamples of the AUC interval (seeded: the same regions give the same interval).
RESAMPLES = 1000
_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def darkness(green: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Darkness (0 = as the background) at half of full resolution, from a full- or reduced-size green channel."""
    scale = green.shape[0] / layout.IMAGE_SIZE[1]
    factor = 0.5 / scale
    size = (max(round(green.shape[1] * factor), 1), max(round(green.shape[0] * factor), 1))
    half = np.asarray(Image.fromarray(green.astype(np.float32), mode="F").resize(size, Image.BOX), dtype=np.float32)
    inside = np.asarray(Image.fromarray(fov.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    half = ndimage.gaussian_filter(half, GREEN_SIGMA)
    # Outside the field of view is black: fill it with the fundus so the closing sees no dark rim.
    half = np.where(inside, half, np.median(half[inside]) if inside.any() else 0.0).astype(np.float32)
    length = max(round(LINE_LENGTH / 2), 3) | 1
    background = np.min([line_closing(half, _line(length, math.pi * k / ORIENTATIONS))
                         for k in range(ORIENTATIONS)], axis=0)
    dark = (background - half) / np.maximum(background, 1.0)
    return ndimage.gaussian_filter(dark, DARKNESS_SIGMA)


def line_closing(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Grey closing (dilation, then erosion) by a centrally symmetric footprint, edges mirrored.

    The same as ``scipy.ndimage.grey_closing(image, footprint=footprint)`` (its ``reflect`` mode), as
    the maximum and minimum of shifted copies: a thin line has few pixels, so this is about three
    times faster than scipy's general filter.
    """
    offsets = np.argwhere(footprint) - np.array(footprint.shape) // 2
    reach = int(np.abs(offsets).max())
    return _extreme(_extreme(image, offsets, reach, np.maximum), offsets, reach, np.minimum)


def _extreme(image: np.ndarray, offsets: np.ndarray, reach: int, pick) -> np.ndarray:
    padded = np.pad(image, reach, mode="symmetric")
    rows, cols = image.shape
    out = padded[reach : reach + rows, reach : reach + cols].copy()
    for dr, dc in offsets.tolist():
        pick(out, padded[reach + dr : reach + dr + rows, reach + dc : reach + dc + cols], out=out)
    return out


def _line(length: int, angle: float) -> np.ndarray:
    """A one-pixel line of ``length`` pixels through the centre of a square footprint."""
    footprint = np.zeros((length, length), dtype=bool)
    centre = (length - 1) / 2
    steps = np.linspace(-centre, centre, 2 * length)
    rows = np.round(centre - steps * math.sin(angle)).astype(int)
    cols = np.round(centre + steps * math.cos(angle)).astype(int)
    footprint[rows, cols] = True
    return footprint


def regions(level_map: np.ndarray, fov: np.ndarray, dark: np.ndarray) -> dict[str, np.ndarray]:
    """Per region of one map: maximum value, area (full-size pixels) and darkness (maximum over the region)."""
    scale = level_map.shape[0] / layout.IMAGE_SIZE[1]
    labels, count = ndimage.label((level_map >= layout.CONFIDENCE_STEP) & fov, structure=_NEIGHBOURS)
    if not count:
        return {"maximum": np.zeros(0), "area": np.zeros(0), "darkness": np.zeros(0)}
    index = np.arange(1, count + 1)
    rows = np.minimum((np.arange(level_map.shape[0]) * dark.shape[0]) // level_map.shape[0], dark.shape[0] - 1)
    cols = np.minimum((np.arange(level_map.shape[1]) * dark.shape[1]) // level_map.shape[1], dark.shape[1] - 1)
    dark_here = dark[rows[:, None], cols[None, :]]
    return {
        "maximum": ndimage.maximum(level_map, labels, index).astype(np.float64),
        "area": ndimage.sum_labels(np.ones_like(labels), labels, index) / scale**2,
        "darkness": ndimage.maximum(dark_here, labels, index).astype(np.float64),
    }


def pooled(per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The regions of several images (``regions`` of each) as one set."""
    keys = ("maximum", "area", "darkness")
    return {key: np.concatenate([np.zeros(0), *(found[key] for found in per_image)]) for key in keys}


def figures(found: dict[str, np.ndarray]) -> dict:
    """Agreement figures of pooled regions (``maximum``, ``area``, ``darkness`` per region)."""
    maximum, area, dark = found["maximum"], found["area"], found["darkness"]
    count = np.maximum(np.round(maximum / ANNOTATOR_SCALE), 1).astype(int)
    core = maximum >= CORE_THRESHOLD * 255
    levels = np.clip(np.round(maximum / layout.CONFIDENCE_STEP).astype(int), 1, 12)
    n = len(maximum)
    one = count == 1
    return {
        "regions": n,
        "annotator_share": {str(k): _share(count == k) for k in range(1, 5)},
        "core_share": _share(core),
        "level_counts": np.bincount(levels, minlength=13)[1:].tolist(),
        "median_darkness_by_annotators": {str(k): _median(dark[count == k]) for k in range(1, 5)},
        "spearman": _spearman(count, dark),
        "spearman_area_partialled": _partial_spearman(count, dark, area),
        "auc_core": auc(dark[core], dark[~core]),
        "auc_core_interval": _auc_interval(dark, core),
        "auc_core_by_area_third": _auc_by_thirds(dark, core, area),
        "one_annotator_empty_share": _share(dark[one] < VISIBLE_DARKNESS) if one.any() else None,
        "one_annotator_regions": int(one.sum()),
    }


def auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Chance that a positive scores above a negative (ties count half): Mann-Whitney U / (n1 n0)."""
    if not len(positive) or not len(negative):
        return None
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _auc_interval(dark: np.ndarray, core: np.ndarray) -> list[float] | None:
    """95 % percentile interval of the AUC over regions resampled with replacement."""
    if core.all() or not core.any():
        return None
    rng = np.random.default_rng(0)
    values = []
    for _ in range(RESAMPLES):
        pick = rng.integers(0, len(dark), len(dark))
        value = auc(dark[pick][core[pick]], dark[pick][~core[pick]])
        if value is not None:
            values.append(value)
    return np.percentile(values, [2.5, 97.5]).tolist()


def _auc_by_thirds(dark: np.ndarray, core: np.ndarray, area: np.ndarray) -> list[float | None]:
    """The AUC within the smallest, middle and largest third of regions by area."""
    if len(area) < 3:
        return [None, None, None]
    edges = np.quantile(area, [1 / 3, 2 / 3])
    third = np.searchsorted(edges, area, side="right")
    return [auc(dark[(third == t) & core], dark[(third == t) & ~core]) for t in range(3)]


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(stats.spearmanr(x, y).statistic)


def _partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float | None:
    """Rank correlation of x and y with z's ranks partialled out of both."""
    r_xy, r_xz, r_yz = _spearman(x, y), _spearman(x, z), _spearman(y, z)
    if None in (r_xy, r_xz, r_yz) or max(abs(r_xz), abs(r_yz)) >= 1:
        return None
    return float((r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2)))


def _share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None
