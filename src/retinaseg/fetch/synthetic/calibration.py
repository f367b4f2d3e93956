"""Label statistics, contrast of marked regions and annotator agreement, to compare a synthetic set with the real one.

``retinaseg-calibration PATH [--ids 1-27]`` prints the figures of any folder in
the official layout as JSON. Areas are in full-resolution pixels (1500x1152) and the ring
around a region is 15 full-resolution pixels wide, so a smaller copy gives comparable figures.
``agreement`` holds how the annotators' agreement on haemorrhages follows their darkness
(``retinaseg.fetch.synthetic.agreement``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from retinaseg.core import layout, stage
from retinaseg.core.params import parse_id_ranges
from retinaseg.fetch.dataset import DiaretDB1
from retinaseg.fetch.synthetic import agreement

#: Figures measured on the real DIARETDB1 v1.1 training images 1-27 at full resolution.
DIARETDB1_TRAIN_FIGURES = {
    "hemorrhages": {
        "0.1": {"share_mean": 0.15, "share_median": 0.12, "components_per_image": 18.0, "images_with": 1.0},
        "0.75": {"share_mean": 0.018, "share_median": 0.009, "components_per_image": 10.0},
    },
    "redsmalldots": {"0.1": {"share_mean": 0.10, "components_per_image": 29.0}},
    "exudates": {"0.1": {"share_mean": 0.15, "components_per_image": 7.6}},
    "red": {"0.1": {"area_p10": 33.0, "area_median": 1160.0, "area_p90": 24500.0}},
    "contrast": {"red": -0.03, "bright": 0.24},
    # 502 haemorrhage regions (level >= 1 inside the field of view) of images 1-27, measured as
    # ``agreement`` does on the summed-confidence maps (12 levels of 21 up to 252).
    "agreement": {
        "regions": 502,
        "annotator_share": {"1": 0.41, "2": 0.22, "3": 0.15, "4": 0.22},
        "core_share": 0.235,
        "level_counts": [7, 72, 113, 15, 38, 59, 13, 22, 45, 10, 21, 87],
        "median_darkness_by_annotators": {"1": 0.116, "2": 0.152, "3": 0.212, "4": 0.266},
        "spearman": 0.68,
        "spearman_area_partialled": 0.48,
        "auc_core": 0.88,
        "auc_core_interval": [0.83, 0.91],
        "auc_core_by_area_third": [0.90, 0.79, 0.77],
        "one_annotator_empty_share": 0.39,
    },
}

#: Lesion groups measured: each is the union of these ground-truth maps.
GROUPS = {
    "hemorrhages": ("hemorrhages",),
    "redsmalldots": ("redsmalldots",),
    "exudates": ("hardexudates", "softexudates"),
    "red": ("hemorrhages", "redsmalldots"),
}
#: Regions whose green contrast is measured at the lower threshold.
CONTRAST_GROUPS = {"red": "red", "bright": "exudates"}
THRESHOLDS = (0.1, 0.75)
RING_WIDTH = 15
#: 8-connectivity, as the reference figures were counted.
_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def measure(root: Path, image_ids: list[int] | None = None) -> dict:
    """All figures of the dataset under ``root`` over ``image_ids`` (default: every image), as plain data."""
    dataset = DiaretDB1(root)
    ids = dataset.image_ids() if image_ids is None else list(image_ids)
    fov = dataset.read_fundus_mask()
    scale = fov.shape[0] / layout.IMAGE_SIZE[1]
    regions = {group: {t: [] for t in THRESHOLDS} for group in GROUPS}
    contrasts = {name: [] for name in CONTRAST_GROUPS}
    haemorrhage_regions = []
    for image_id in ids:
        maps = {lesion: dataset.read_groundtruth(lesion, image_id) for lesion in layout.LESION_TYPES}
        for group, lesions in GROUPS.items():
            for threshold in THRESHOLDS:
                regions[group][threshold].append(_marked(maps, lesions, threshold) & fov)
        green = dataset.read_image(image_id)[:, :, 1].astype(np.float32)
        for name, group in CONTRAST_GROUPS.items():
            contrast = region_contrast(green, regions[group][THRESHOLDS[0]][-1], fov, RING_WIDTH * scale)
            if contrast is not None:
                contrasts[name].append(contrast)
        haemorrhage_regions.append(agreement.regions(maps[agreement.LESION], fov, agreement.darkness(green, fov)))
    figures = {"images": len(ids), "scale": scale}
    for group, by_threshold in regions.items():
        figures[group] = {str(t): region_figures(masks, fov, scale) for t, masks in by_threshold.items()}
    figures["contrast"] = {name: _mean(values) for name, values in contrasts.items()}
    figures["agreement"] = agreement.figures(agreement.pooled(haemorrhage_regions))
    return figures


def _marked(maps: dict[str, np.ndarray], lesions: tuple[str, ...], threshold: float) -> np.ndarray:
    """Pixels whose summed confidence reaches ``threshold`` in any of the ``lesions`` maps."""
    return np.logical_or.reduce([maps[lesion] / 255 >= threshold for lesion in lesions])


def region_figures(masks: list[np.ndarray], fov: np.ndarray, scale: float) -> dict:
    """Share of the field of view (mean, median over images), components per image, pooled component areas."""
    shares = [mask.sum() / fov.sum() for mask in masks]
    areas = np.concatenate([_component_areas(mask) for mask in masks]) / scale**2
    percentiles = np.percentile(areas, [10, 50, 90]).tolist() if len(areas) else [None] * 3
    return {
        "share_mean": float(np.mean(shares)),
        "share_median": float(np.median(shares)),
        "components_per_image": len(areas) / len(masks),
        "images_with": float(np.mean([mask.any() for mask in masks])),
        **dict(zip(("area_p10", "area_median", "area_p90"), percentiles)),
    }


def _component_areas(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=_NEIGHBOURS)
    return np.bincount(labels.ravel(), minlength=count + 1)[1:]


def region_contrast(green: np.ndarray, region: np.ndarray, fov: np.ndarray, ring_width: float) -> float | None:
    """Mean green in ``region`` minus mean green in a ring around it, in standard deviations of the fundus.

    None when the region or its ring is empty, so such images do not enter the average.
    """
    if not region.any():
        return None
    ring = (ndimage.distance_transform_edt(~region) <= ring_width) & ~region & fov
    if not ring.any():
        return None
    return float((green[region].mean() - green[ring].mean()) / green[fov].std())


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def parse_ids(text: str) -> list[int]:
    """Image ids from ranges such as ``1-27`` or ``1-5,8,10-12``, as ``prepare.train_ids`` takes them."""
    ids = parse_id_ranges(text)
    if ids is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of image ids such as 1-27 or 1-5,8 (ids 1..89)")
    return ids


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="retinaseg-calibration", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="dataset folder in the official layout (or the folder holding it)")
    parser.add_argument("--ids", type=parse_ids, help="image ids, e.g. 1-27 (default: every image)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.path, args.ids), indent=2))


def cli() -> None:
    """The ``retinaseg-calibration`` command (``python -m retinaseg.fetch.synthetic.calibration`` too)."""
    stage.run(main)


if __name__ == "__main__":
    cli()
