"""The lesions the synthetic generator drew, at the prepared size: the truth behind the annotators' marks.

The generator draws every lesion before four simulated annotators mark it (or miss it),
and prepare copies that list into ``<split>/truth.json`` (full-size coordinates, with the
crop box and the prepared size). Real DIARETDB1 has no such file: its only reference is
the annotators' maps. Scoring against the truth separates what a model misses from what
the annotators did not agree on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinaseg.core.errors import PipelineError
from retinaseg.evaluation.froc import Lesions

TRUTH_FILE = "truth.json"
#: Size groups by the lesion's full-size diameter (2 x the major semi-axis): at 256 px a pixel spans
#: about 4.5 full-size pixels, so the smallest group is under two prepared pixels across.
SIZE_GROUPS = {"under 8 px": (0.0, 8.0), "8-20 px": (8.0, 20.0), "20-50 px": (20.0, 50.0),
               "50 px and over": (50.0, math.inf)}


def read_truth(split_dir: Path) -> dict | None:
    """``<split>/truth.json`` as written by prepare, or None where the data has no simulated truth."""
    path = Path(split_dir) / TRUTH_FILE
    if not path.exists():
        return None
    try:
        truth = json.loads(path.read_text())
        truth["crop_box"], truth["image_size"], truth["images"]  # noqa: B018 - the keys scoring needs
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{path}: not a truth file of the prepare stage ({type(error).__name__}: {error}); "
                            "run `dvc repro prepare` to rebuild it") from None
    return truth


def class_lesions(truth: dict, image_id: int, lesion_types: Sequence[str]) -> list[dict]:
    """The drawn lesions of one image that belong to a class (its DIARETDB1 lesion types)."""
    return [lesion for lesion in truth["images"].get(str(image_id), []) if lesion["type"] in lesion_types]


def footprints(lesions: Sequence[dict], crop_box: Sequence[float], image_size: int) -> Lesions:
    """The prepared pixels each lesion covers: pixel centres inside its ellipse, and always the pixel of its centre.

    So a lesion smaller than a prepared pixel (a microaneurysm at 256 px) still has one pixel to be found on.
    Each predicted component finds one drawn lesion at most: a region painted over a cluster finds one.
    """
    x0, y0, x1, y1 = (float(value) for value in crop_box)
    scale_x, scale_y = image_size / (x1 - x0), image_size / (y1 - y0)
    pixels, owners = [], []
    for index, lesion in enumerate(lesions):
        x, y, major, minor, angle = (float(lesion[key]) for key in ("x", "y", "major", "minor", "angle"))
        cols = np.arange(max(int((x - major - x0) * scale_x), 0), min(int((x + major - x0) * scale_x) + 1, image_size))
        rows = np.arange(max(int((y - major - y0) * scale_y), 0), min(int((y + major - y0) * scale_y) + 1, image_size))
        dx = x0 + (cols[None, :] + 0.5) / scale_x - x
        dy = y0 + (rows[:, None] + 0.5) / scale_y - y
        along = (dx * math.cos(angle) + dy * math.sin(angle)) / major
        across = (dy * math.cos(angle) - dx * math.sin(angle)) / minor
        inside = (along**2 + across**2) <= 1
        covered = set((rows[:, None] * image_size + cols[None, :])[inside].tolist())
        centre_row = min(max(int((y - y0) * scale_y), 0), image_size - 1)
        centre_col = min(max(int((x - x0) * scale_x), 0), image_size - 1)
        covered.add(centre_row * image_size + centre_col)
        pixels += sorted(covered)
        owners += [index] * len(covered)
    return Lesions(np.asarray(pixels, dtype=np.int64), np.asarray(owners, dtype=np.int64), len(lesions),
                   one_per_component=True)


def groups(lesions: Sequence[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Boolean selectors over pooled lesions: by clinical kind, by full-size diameter, by annotators who marked it."""
    kinds = np.array([lesion["kind"] for lesion in lesions])
    diameters = np.array([2 * float(lesion["major"]) for lesion in lesions])
    marked = np.array([int(lesion["annotators"]) for lesion in lesions])
    return {
        "kind": {kind: kinds == kind for kind in sorted(set(kinds.tolist()))},
        "size": {name: (diameters >= low) & (diameters < high) for name, (low, high) in SIZE_GROUPS.items()},
        "annotators": {f"marked by {count}": marked == count for count in range(5)},
    }
