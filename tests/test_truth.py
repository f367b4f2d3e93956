"""The simulator's truth at the prepared size: footprints of drawn lesions, groups, and a readable file."""

import json

import numpy as np
import pytest

from retinaseg.core.errors import PipelineError
from retinaseg.evaluation import truth


def _lesion(x, y, major, minor=None, angle=0.0, kind="dot_blot_haemorrhage", annotators=4):
    return {"type": "hemorrhages", "kind": kind, "x": x, "y": y, "major": major, "minor": minor or major,
            "angle": angle, "annotators": annotators}


def test_a_lesion_covers_the_prepared_pixels_inside_its_ellipse():
    # Crop box 100x100 full-size pixels -> 10x10 prepared: one prepared pixel is 10 full-size pixels.
    footprint = truth.footprints([_lesion(55, 55, 20)], (0, 0, 100, 100), 10)
    rows, cols = np.divmod(footprint.pixels, 10)
    assert footprint.count == 1 and set(footprint.owners.tolist()) == {0}
    centres = np.hypot(rows * 10 + 5 - 55, cols * 10 + 5 - 55)
    assert np.all(centres <= 20) and len(rows) == 13  # the pixel centres within 20 px of (55, 55)


def test_a_lesion_smaller_than_a_pixel_still_has_the_pixel_of_its_centre():
    footprint = truth.footprints([_lesion(12, 37, 1.5)], (0, 0, 100, 100), 10)
    assert footprint.pixels.tolist() == [3 * 10 + 1]


def test_the_crop_box_shifts_and_scales_the_lesions():
    footprint = truth.footprints([_lesion(250, 120, 1.0, kind="microaneurysm")], (200, 100, 300, 200), 20)
    assert footprint.pixels.tolist() == [4 * 20 + 10]


def test_a_rotated_flame_covers_pixels_along_its_axis():
    flame = _lesion(50, 50, 30, 4, angle=np.pi / 2, kind="flame_haemorrhage")  # along the rows
    rows, cols = np.divmod(truth.footprints([flame], (0, 0, 100, 100), 100).pixels, 100)
    assert rows.max() - rows.min() > 50 and cols.max() - cols.min() < 10


def test_groups_select_by_kind_size_and_annotators():
    lesions = [_lesion(10, 10, 2, kind="microaneurysm", annotators=1), _lesion(50, 50, 30, annotators=4)]
    selected = truth.groups(lesions)
    assert selected["kind"]["microaneurysm"].tolist() == [True, False]
    assert selected["size"]["under 8 px"].tolist() == [True, False]
    assert selected["size"]["50 px and over"].tolist() == [False, True]
    assert selected["annotators"]["marked by 4"].tolist() == [False, True]


def test_class_lesions_keep_the_class_types_of_one_image():
    simulated = {"images": {"3": [_lesion(1, 1, 1), {**_lesion(2, 2, 1), "type": "hardexudates"}]}}
    assert len(truth.class_lesions(simulated, 3, ["hemorrhages"])) == 1
    assert truth.class_lesions(simulated, 4, ["hemorrhages"]) == []


def test_no_file_means_no_truth_and_a_broken_file_names_itself(tmp_path):
    assert truth.read_truth(tmp_path) is None
    (tmp_path / truth.TRUTH_FILE).write_text(json.dumps({"images": {}}))
    with pytest.raises(PipelineError, match="truth.json: not a truth file"):
        truth.read_truth(tmp_path)
