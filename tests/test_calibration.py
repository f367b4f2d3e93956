"""The realistic synthetic set must match the label statistics, contrast and annotator agreement of real DIARETDB1.

Like the reference, it is measured on 27 training images at full resolution (about 45 s
on two cores). Only the easy-style comparison runs at half size: ``measure`` reports
areas in full-resolution pixels and scales the ring, so its figures stay comparable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from retinaseg.fetch.synthetic import calibration
from retinaseg.fetch.synthetic.calibration import DIARETDB1_TRAIN_FIGURES as REAL
from retinaseg.fetch.synthetic.calibration import measure, parse_ids
from retinaseg.fetch.synthetic.generator import generate

pytestmark = pytest.mark.slow

HALF_SIZE = (750, 576)
TRAIN_IMAGES = 27
#: Figures that must lie within a factor of 1.5 of the real ones: (group, threshold, name).
RATIO_FIGURES = [
    ("hemorrhages", "0.1", "share_mean"),
    ("hemorrhages", "0.1", "components_per_image"),
    ("hemorrhages", "0.75", "share_mean"),
    ("hemorrhages", "0.75", "components_per_image"),
    ("redsmalldots", "0.1", "share_mean"),
    ("redsmalldots", "0.1", "components_per_image"),
    ("exudates", "0.1", "share_mean"),
    ("exudates", "0.1", "components_per_image"),
    ("red", "0.1", "area_median"),
]


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realistic")
    generate(root, num_images=TRAIN_IMAGES, seed=0)
    return root


@pytest.fixture(scope="module")
def figures(realistic: Path) -> dict:
    return measure(realistic, list(range(1, TRAIN_IMAGES + 1)))


@pytest.mark.parametrize(("group", "threshold", "name"), RATIO_FIGURES)
def test_label_figure_is_within_a_factor_of_1_5_of_the_real_one(
    figures: dict, group: str, threshold: str, name: str
) -> None:
    measured, real = figures[group][threshold][name], REAL[group][threshold][name]
    assert real / 1.5 <= measured <= real * 1.5, f"{group} at {threshold} {name}: {measured:.4g}, real {real:.4g}"


@pytest.mark.parametrize("region", ["red", "bright"])
def test_contrast_of_marked_regions_is_within_0_3_sd_of_the_real_one(figures: dict, region: str) -> None:
    measured, real = figures["contrast"][region], REAL["contrast"][region]
    assert abs(measured - real) <= 0.3, f"{region} contrast {measured:.3f} SD, real {real:.3f} SD"


#: How far the synthetic agreement figures may lie from the real ones (shares in points of 100 %).
SHARE_TOLERANCE = 0.08


@pytest.mark.parametrize("count", ["1", "2", "3", "4"])
def test_regions_by_annotator_count_are_shared_as_on_the_real_set(figures: dict, count: str) -> None:
    measured, real = figures["agreement"]["annotator_share"][count], REAL["agreement"]["annotator_share"][count]
    assert abs(measured - real) <= SHARE_TOLERANCE, f"{count} annotator(s): {measured:.3f}, real {real:.3f}"


def test_annotators_agree_on_what_the_image_shows(figures: dict) -> None:
    """As on real DIARETDB1: the core is what is dark, with the region's area partialled out too."""
    agreed = figures["agreement"]
    assert 0.18 <= agreed["core_share"] <= 0.28, agreed["core_share"]
    assert agreed["auc_core"] >= 0.80, agreed["auc_core"]
    assert agreed["spearman_area_partialled"] >= 0.30, agreed["spearman_area_partialled"]
    medians = [agreed["median_darkness_by_annotators"][count] for count in "1234"]
    assert medians == sorted(medians), medians


def test_one_annotator_regions_are_often_on_nothing_visible(figures: dict) -> None:
    empty = figures["agreement"]["one_annotator_empty_share"]
    assert 0.25 <= empty <= 0.50, empty


def test_every_image_has_haemorrhages_like_the_real_training_set(figures: dict) -> None:
    assert figures["hemorrhages"]["0.1"]["images_with"] == 1.0


def test_easy_style_shows_the_high_contrast_the_realistic_one_avoids(tmp_path: Path) -> None:
    generate(tmp_path, num_images=6, size=HALF_SIZE, seed=0, style="easy")
    easy = measure(tmp_path)
    assert easy["contrast"]["red"] < REAL["contrast"]["red"] - 1.0
    assert easy["red"]["0.1"]["share_mean"] < REAL["hemorrhages"]["0.1"]["share_mean"] / 3


def test_command_line_prints_the_figures_as_json(realistic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration.main([str(realistic), "--ids", "1-2,5"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 3 and printed["scale"] == 1.0
    assert set(printed) >= {"hemorrhages", "redsmalldots", "exudates", "red", "contrast", "agreement"}
    assert printed["agreement"]["regions"] == sum(printed["agreement"]["level_counts"])


def test_ids_accept_ranges_and_lists() -> None:
    assert parse_ids("1-3,7, 5") == [1, 2, 3, 5, 7]
    assert parse_ids("27") == [27]
    assert parse_ids("88-89") == [88, 89]


@pytest.mark.parametrize("bad", [
    "", "3-1", "a", "-3", "1,,2", "0", "90", "80-90",  # ids are 1..89, as in prepare.train_ids
    "1-",
])
def test_ids_refuse_what_is_no_list_of_dataset_ids(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"list of image ids .*\(ids 1\.\.89\)"):
        parse_ids(bad)


def test_command_line_refuses_bad_ids_naming_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        calibration.main([str(tmp_path), "--ids", "0-3"])
    assert "--ids" in capsys.readouterr().err
