"""The agreement figures: region levels and counts, the vessel-suppressed darkness, and the rank statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinaseg.core import layout
from retinaseg.fetch.synthetic import agreement

FULL = layout.IMAGE_SIZE[::-1]  # rows, columns


def _fundus_with(spot_depth: float, vessel_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """A flat full-size green channel (100) with a dark spot and a long dark vessel, and a field of view."""
    rows, cols = np.mgrid[: FULL[0], : FULL[1]]
    green = np.full(FULL, 100.0, dtype=np.float32)
    green[(rows - 400) ** 2 + (cols - 500) ** 2 <= 8**2] *= 1 - spot_depth  # a blob 16 px wide
    green[(np.abs(rows - 800) <= 5) & (cols > 200) & (cols < 1300)] *= 1 - vessel_depth  # 11 px wide, 1100 long
    fov = (rows - FULL[0] / 2) ** 2 + (cols - FULL[1] / 2) ** 2 <= 570**2
    return green, fov


def test_darkness_finds_a_dark_blob_and_not_a_long_vessel() -> None:
    green, fov = _fundus_with(spot_depth=0.3, vessel_depth=0.3)
    dark = agreement.darkness(green, fov)
    assert dark.shape == (FULL[0] // 2, FULL[1] // 2)
    spot, vessel = dark[200, 250], dark[400, 375]
    assert 0.15 < spot < 0.31, spot
    assert vessel < 0.05, vessel
    assert abs(float(np.median(dark[fov[::2, ::2]]))) < 0.01


def test_darkness_at_half_size_matches_full_size() -> None:
    green, fov = _fundus_with(spot_depth=0.3, vessel_depth=0.3)
    half = agreement.darkness(green[::2, ::2], fov[::2, ::2])
    assert half.shape == (FULL[0] // 2, FULL[1] // 2)
    assert abs(half[200, 250] - agreement.darkness(green, fov)[200, 250]) < 0.05


def test_regions_carry_their_maximum_area_and_darkest_blob() -> None:
    level_map = np.zeros(FULL, dtype=np.uint8)
    level_map[100:120, 100:130] = 63  # one annotator at full confidence: 20 x 30 px
    level_map[105:110, 110:115] = 84
    level_map[500:510, 500:510] = 252
    fov = np.ones(FULL, dtype=bool)
    dark = np.zeros((FULL[0] // 2, FULL[1] // 2), dtype=np.float32)
    dark[252, 252] = 0.4
    found = agreement.regions(level_map, fov, dark)
    assert found["maximum"].tolist() == [84, 252]
    assert found["area"].tolist() == [600, 100]
    assert found["darkness"].tolist() == pytest.approx([0.0, 0.4])


def test_annotator_count_and_core_follow_the_maximum_level() -> None:
    levels = np.arange(1, 13)
    figures = agreement.figures({"maximum": levels * 21.0, "area": np.arange(12.0), "darkness": np.arange(12.0)})
    # Levels 1-4 are one annotator, 5-7 two, 8-10 three, 11-12 four; the core starts at level 10 (210 >= 191.25).
    assert figures["annotator_share"] == pytest.approx({"1": 4 / 12, "2": 3 / 12, "3": 3 / 12, "4": 2 / 12})
    assert figures["core_share"] == pytest.approx(3 / 12)
    assert figures["level_counts"] == [1] * 12
    assert figures["auc_core"] == 1.0  # the darker regions are exactly the core
    assert figures["one_annotator_empty_share"] == pytest.approx(1 / 4)  # darkness 0 < 0.1 only


def test_auc_counts_ties_as_half() -> None:
    assert agreement.auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    assert agreement.auc(np.array([1.0]), np.array([2.0])) == 0.0
    assert agreement.auc(np.array([]), np.array([1.0])) is None


def test_partialling_out_area_removes_what_area_explains() -> None:
    rng = np.random.default_rng(0)
    area = rng.random(400)
    darkness = area + 0.01 * rng.standard_normal(400)  # darkness only through area
    count = np.digitize(area + 0.01 * rng.standard_normal(400), [0.25, 0.5, 0.75]) + 1
    figures = agreement.figures({"maximum": count * 63.75, "area": area, "darkness": darkness})
    assert figures["spearman"] > 0.9
    assert abs(figures["spearman_area_partialled"]) < 0.2


def test_line_footprint_has_the_length_and_angle_asked() -> None:
    horizontal = agreement._line(41, 0.0)
    assert horizontal.sum() == 41 and horizontal[20].all()
    diagonal = agreement._line(41, math.pi / 4)
    rows, cols = np.nonzero(diagonal)
    assert np.hypot(np.ptp(rows), np.ptp(cols)) == pytest.approx(40, abs=1.5)  # 41 px long, whatever the angle
    assert diagonal[20, 20] and diagonal[rows.min(), cols.max()] and diagonal[rows.max(), cols.min()]


@pytest.mark.parametrize("angle", [0.0, math.pi / 12, math.pi / 4, 7 * math.pi / 12])
def test_line_closing_is_scipys_grey_closing(angle: float) -> None:
    from scipy import ndimage

    image = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    footprint = agreement._line(11, angle)
    expected = ndimage.grey_closing(image, footprint=footprint)
    np.testing.assert_array_equal(agreement.line_closing(image, footprint), expected)


def test_pooled_regions_of_several_images_are_one_set() -> None:
    one = {"maximum": np.array([21.0]), "area": np.array([5.0]), "darkness": np.array([0.2])}
    two = {"maximum": np.array([63.0, 252.0]), "area": np.array([1.0, 2.0]), "darkness": np.array([0.0, 0.3])}
    together = agreement.pooled([one, two])
    assert together["maximum"].tolist() == [21.0, 63.0, 252.0] and together["darkness"].tolist() == [0.2, 0.0, 0.3]
    assert agreement.pooled([])["area"].shape == (0,)
