"""Evaluation scores and summaries against counts worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from retinaseg.core.atomic import write_json
from retinaseg.evaluation import postprocess
from retinaseg.evaluation.metrics import (
    SCORE_NAMES,
    PRAccumulator,
    confusion_counts,
    lesion_counts,
    scores,
    summarize,
    summarize_lesions,
)


def test_confusion_counts_per_plane():
    reference = np.zeros((2, 2, 2), dtype=bool)
    prediction = np.zeros((2, 2, 2), dtype=bool)
    reference[0, :, 0] = True  # plane 0: truth in the top row
    prediction[:, 0, 0] = True  # plane 0: prediction in the left column
    prediction[1, 1, 1] = True  # plane 1: one false positive, no truth
    counts = confusion_counts(reference, prediction)
    assert counts.dtype == np.int64
    assert counts.tolist() == [[1, 1, 1, 1], [0, 1, 0, 3]]


def test_confusion_counts_rejects_probabilities_and_shape_mismatch():
    mask = np.zeros((2, 2, 1), dtype=bool)
    with pytest.raises(TypeError):
        confusion_counts(mask, np.full((2, 2, 1), 0.7))
    with pytest.raises(ValueError):
        confusion_counts(mask, np.zeros((2, 2, 3), dtype=bool))


def test_scores_from_counts():
    result = scores(tp=2, fp=1, fn=3, tn=4)
    assert result == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 5, "iou": 2 / 6, "f1": 4 / 8, "accuracy": 6 / 10, "specificity": 4 / 5}
    )
    assert all(type(item) is float for item in result.values())


def test_empty_reference_and_prediction_leave_overlap_scores_undefined():
    result = scores(tp=0, fp=0, fn=0, tn=5)
    for name in ("precision", "recall", "iou", "f1"):
        assert math.isnan(result[name]), name
    assert result["accuracy"] == 1.0
    assert result["specificity"] == 1.0


def test_missed_lesion_scores_zero_not_nan_where_defined():
    result = scores(tp=0, fp=0, fn=3, tn=5)
    assert math.isnan(result["precision"])
    assert result["recall"] == 0.0
    assert result["f1"] == 0.0


def test_specificity_undefined_without_negatives():
    assert math.isnan(scores(tp=4, fp=0, fn=0, tn=0)["specificity"])


CLASSES = ["background", "red", "bright"]
# [image, plane, (tp, fp, fn, tn)]; each image has 100 pixels.
COUNTS = np.array(
    [
        [[90, 2, 4, 4], [2, 2, 0, 96], [0, 0, 0, 100]],  # a: bright absent and not predicted
        [[93, 2, 1, 4], [0, 0, 2, 98], [3, 1, 0, 96]],  # b: red missed, nothing predicted
    ]
)


@pytest.fixture
def summary() -> dict:
    return summarize(["a", "b"], COUNTS, CLASSES, lesion_planes=[1, 2])


def test_summary_lists_lesion_classes_and_aggregates(summary: dict):
    assert list(summary) == ["red", "bright", "macro", "micro", "per_image"]


def test_per_image_mean_excludes_undefined_scores(summary: dict):
    bright = summary["bright"]["per_image_mean"]
    assert bright["f1"] == pytest.approx(6 / 7)
    assert bright["n_images_scored"]["f1"] == 1
    red = summary["red"]["per_image_mean"]
    assert red["precision"] == pytest.approx(2 / 4)
    assert red["n_images_scored"]["precision"] == 1
    assert red["f1"] == pytest.approx((4 / 6 + 0) / 2)
    assert red["n_images_scored"]["f1"] == 2


def test_zero_filled_mean_counts_undefined_scores_as_zero(summary: dict):
    assert summary["bright"]["per_image_mean_zero_filled"]["f1"] == pytest.approx((0 + 6 / 7) / 2)
    assert summary["red"]["per_image_mean_zero_filled"]["precision"] == pytest.approx(2 / 4 / 2)


def test_class_micro_comes_from_summed_counts(summary: dict):
    red = summary["red"]["micro"]
    assert (red["tp"], red["fp"], red["fn"], red["tn"]) == (2, 2, 2, 194)
    assert red["f1"] == pytest.approx(4 / 8)
    bright = summary["bright"]["micro"]
    assert bright["precision"] == pytest.approx(3 / 4)
    assert bright["f1"] == pytest.approx(6 / 7)


def test_macro_and_pooled_micro_over_lesion_classes(summary: dict):
    assert summary["macro"]["f1"] == pytest.approx((4 / 8 + 6 / 7) / 2)
    assert summary["macro"]["precision"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    micro = summary["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"], micro["tn"]) == (5, 3, 2, 390)
    assert micro["f1"] == pytest.approx(10 / 15)


def test_macro_skips_a_class_undefined_over_the_whole_set():
    counts = COUNTS.copy()
    counts[:, 2] = [0, 0, 0, 100]  # bright never present nor predicted
    result = summarize(["a", "b"], counts, CLASSES, lesion_planes=[1, 2])
    assert math.isnan(result["bright"]["micro"]["precision"])
    assert result["macro"]["precision"] == pytest.approx(result["red"]["micro"]["precision"])


def test_per_image_keeps_counts_of_every_plane(summary: dict):
    first = summary["per_image"][0]
    assert first["id"] == "a"
    assert first["background"] == {"tp": 90, "fp": 2, "fn": 4, "tn": 4}
    assert summary["per_image"][1]["bright"] == {"tp": 3, "fp": 1, "fn": 0, "tn": 96}


def test_summary_is_json_ready_with_nan_as_null(tmp_path):
    result = summarize(np.array([7, 8]), COUNTS, CLASSES, lesion_planes=[1, 2])
    write_json(tmp_path / "summary.json", result)
    loaded = json.loads((tmp_path / "summary.json").read_text())
    assert loaded["per_image"][0]["id"] == 7
    assert loaded["bright"]["per_image_mean_zero_filled"]["f1"] == pytest.approx(3 / 7)
    assert loaded["red"]["per_image_mean"]["n_images_scored"]["precision"] == 1
    empty = summarize(["a"], COUNTS[:1], CLASSES, lesion_planes=[2])
    write_json(tmp_path / "empty.json", empty)
    assert json.loads((tmp_path / "empty.json").read_text())["bright"]["micro"]["f1"] is None


def test_binary_summary_has_matching_micro_and_macro():
    counts = np.array([[[3, 1, 2, 94]], [[0, 2, 0, 98]]])
    result = summarize(["a", "b"], counts, ["hemorrhages"], lesion_planes=[0])
    for name in SCORE_NAMES:
        assert result["macro"][name] == pytest.approx(result["micro"][name])
    # tp 3, fp 3, fn 2 summed over both images.
    assert result["micro"]["f1"] == pytest.approx(6 / 11)


def test_counts_shape_must_match_images_and_classes():
    with pytest.raises(ValueError, match="shape"):
        summarize(["a"], COUNTS, CLASSES, lesion_planes=[1, 2])


def plane(rows: list[str]) -> np.ndarray:
    """A boolean plane drawn as text: '#' is True, '.' is False."""
    return np.array([[char == "#" for char in row] for row in rows])


def test_empty_reference_and_prediction_count_nothing():
    empty = np.zeros((4, 5), dtype=bool)
    assert lesion_counts(empty, empty, min_component_px=1) == {
        "reference_lesions": 0,
        "found_lesions": 0,
        "predicted_components": 0,
        "false_positive_components": 0,
        "reference_positive": False,
        "predicted_positive": False,
    }


def test_lesion_hit_by_one_pixel_is_found():
    reference = plane(["##...", "##...", ".....", "....."])
    prediction = plane([".....", ".##..", ".....", "....."])  # one pixel on the lesion, one beside it
    result = lesion_counts(reference, prediction, min_component_px=2)
    assert (result["reference_lesions"], result["found_lesions"]) == (1, 1)
    assert (result["predicted_components"], result["false_positive_components"]) == (1, 0)
    assert result["reference_positive"] and result["predicted_positive"]


def test_blob_away_from_lesions_is_a_false_positive_component_and_lesion_missed():
    reference = plane(["#....", ".....", ".....", "....."])
    prediction = plane([".....", ".....", "...##", "...##"])
    result = lesion_counts(reference, prediction, min_component_px=2)
    assert result["found_lesions"] == 0
    assert (result["predicted_components"], result["false_positive_components"]) == (1, 1)
    assert result["predicted_positive"] is True


def test_specks_below_min_size_neither_find_lesions_nor_count_as_false_positives():
    reference = plane(["##...", "##...", ".....", "....."])
    prediction = plane(["#....", ".....", "....#", "....."])  # a 1-pixel hit and a 1-pixel miss
    result = lesion_counts(reference, prediction, min_component_px=2)
    assert result["found_lesions"] == 0
    assert result["predicted_components"] == 0
    assert result["false_positive_components"] == 0
    assert result["predicted_positive"] is False
    # At min size 1 the same specks count: one finds the lesion, the other is a false positive.
    loose = lesion_counts(reference, prediction, min_component_px=1)
    assert (loose["found_lesions"], loose["predicted_components"], loose["false_positive_components"]) == (1, 2, 1)
    assert loose["predicted_positive"] is True


def test_one_blob_over_two_lesions_finds_both_without_false_positive():
    reference = plane(["#...#", "#...#", ".....", "....."])
    prediction = plane(["#####", ".....", ".....", "....."])
    result = lesion_counts(reference, prediction, min_component_px=3)
    assert (result["reference_lesions"], result["found_lesions"]) == (2, 2)
    assert (result["predicted_components"], result["false_positive_components"]) == (1, 0)


def test_two_blobs_on_one_lesion_find_it_once():
    reference = plane(["#####", "#####", ".....", "....."])
    prediction = plane(["##.##", ".....", ".....", "....."])
    result = lesion_counts(reference, prediction, min_component_px=2)
    assert (result["reference_lesions"], result["found_lesions"]) == (1, 1)
    assert (result["predicted_components"], result["false_positive_components"]) == (2, 0)


def test_diagonal_pixels_form_one_component():
    reference = plane(["#....", ".#...", "..#..", "....."])
    prediction = plane([".....", ".....", ".....", "#.#.#"])  # three isolated specks in a row
    diagonal = plane([".....", ".....", "...#.", "....#"])  # two pixels touching corner to corner
    assert lesion_counts(reference, prediction, min_component_px=1)["reference_lesions"] == 1
    assert lesion_counts(reference, prediction, min_component_px=1)["predicted_components"] == 3
    result = lesion_counts(reference, diagonal, min_component_px=2)
    assert (result["predicted_components"], result["false_positive_components"]) == (1, 1)
    # Adjacent to the lesion is not overlapping it: the blob shares no pixel, so finds nothing.
    assert result["found_lesions"] == 0


def test_mixed_plane_counts_found_missed_and_false_positive():
    reference = plane(["##....#", "##.....", ".......", "#......", "#...##."])
    prediction = plane([".#.....", ".......", "....##.", "....##.", ".....#."])
    # Lesions: top-left block (hit), top-right pixel (missed), left bar (missed), bottom pair (hit).
    # Components: the pixel on the block (size 1, dropped) and the 5-pixel blob on the pair.
    result = lesion_counts(reference, prediction, min_component_px=2)
    assert result["reference_lesions"] == 4
    assert result["found_lesions"] == 1
    assert (result["predicted_components"], result["false_positive_components"]) == (1, 0)


def test_lesion_counts_are_plain_json_types():
    reference = plane(["#.", ".."])
    result = lesion_counts(reference, reference, min_component_px=1)
    assert {type(value) for key, value in result.items() if key.endswith("positive")} == {bool}
    assert {type(value) for key, value in result.items() if not key.endswith("positive")} == {int}


def test_lesion_counts_reject_bad_planes():
    mask = np.zeros((3, 3), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        lesion_counts(mask, np.zeros((3, 4), dtype=bool), 1)
    with pytest.raises(ValueError, match="boolean"):
        lesion_counts(mask, np.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="boolean"):
        lesion_counts(np.zeros((3, 3, 1), dtype=bool), np.zeros((3, 3, 1), dtype=bool), 1)


def image(reference: int, found: int, fp: int, reference_positive: bool, predicted_positive: bool) -> dict:
    return {
        "reference_lesions": reference,
        "found_lesions": found,
        "predicted_components": found + fp,
        "false_positive_components": fp,
        "reference_positive": reference_positive,
        "predicted_positive": predicted_positive,
    }


def test_summarize_lesions_pools_lesions_and_scores_images():
    per_image = [
        image(2, 1, 0, True, True),  # image TP
        image(1, 0, 2, True, True),  # image TP by false-positive blobs alone
        image(0, 0, 1, False, True),  # image FP
        image(0, 0, 0, False, False),  # image TN
        image(3, 0, 0, True, False),  # image FN
    ]
    result = summarize_lesions(per_image)
    assert result["lesion_sensitivity"] == pytest.approx(1 / 6)
    assert result["fp_components_per_image"] == pytest.approx(3 / 5)
    assert (result["n_reference_lesions"], result["n_found_lesions"]) == (6, 1)
    assert (result["n_fp_components"], result["n_images"]) == (3, 5)
    assert (result["image_tp"], result["image_fp"], result["image_fn"], result["image_tn"]) == (2, 1, 1, 1)
    assert result["image_sensitivity"] == pytest.approx(2 / 3)
    assert result["image_specificity"] == pytest.approx(1 / 2)


def test_summarize_lesions_from_real_planes():
    hit = lesion_counts(plane(["#.", ".."]), plane(["#.", ".."]), 1)
    clean = lesion_counts(plane(["..", ".."]), plane(["..", ".#"]), 2)  # speck only: image TN
    result = summarize_lesions([hit, clean])
    assert (result["image_tp"], result["image_fp"], result["image_fn"], result["image_tn"]) == (1, 0, 0, 1)
    assert result["lesion_sensitivity"] == 1.0
    assert result["fp_components_per_image"] == 0.0


def test_summarize_lesions_leaves_undefined_scores_nan(tmp_path):
    negatives = summarize_lesions([image(0, 0, 1, False, True), image(0, 0, 0, False, False)])
    assert math.isnan(negatives["lesion_sensitivity"])
    assert math.isnan(negatives["image_sensitivity"])
    assert negatives["image_specificity"] == pytest.approx(1 / 2)
    positives = summarize_lesions([image(1, 1, 0, True, True)])
    assert math.isnan(positives["image_specificity"])
    assert positives["image_sensitivity"] == 1.0
    nothing = summarize_lesions([])
    assert math.isnan(nothing["fp_components_per_image"])
    assert nothing["n_images"] == 0
    write_json(tmp_path / "lesions.json", negatives)
    loaded = json.loads((tmp_path / "lesions.json").read_text())
    assert loaded["lesion_sensitivity"] is None
    assert loaded["image_fp"] == 1


# Thresholds 0, .25, .5, .75, 1; probabilities on and just beside them.
EDGE_POSITIVES = np.array([0.5, 0.75, 1.0, 0.2499])
EDGE_NEGATIVES = np.array([0.25, np.nextafter(0.5, 0.0), 0.0, 0.7500001])


@pytest.fixture
def edge_accumulator() -> PRAccumulator:
    accumulator = PRAccumulator(num_thresholds=5)
    probabilities = np.concatenate([EDGE_POSITIVES, EDGE_NEGATIVES])
    accumulator.update(probabilities, np.arange(8) < 4)
    return accumulator


def test_pr_curve_predicts_a_probability_exactly_on_a_threshold(edge_accumulator: PRAccumulator):
    rows = edge_accumulator.curve()
    assert [row["threshold"] for row in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # (tp, fp) per threshold: 0 -> (4, 4); .25 -> (3, 3); .5 -> (3, 1); .75 -> (2, 1); 1 -> (1, 0).
    assert [row["precision"] for row in rows] == pytest.approx([4 / 8, 3 / 6, 3 / 4, 2 / 3, 1.0])
    assert [row["recall"] for row in rows] == pytest.approx([1.0, 3 / 4, 3 / 4, 2 / 4, 1 / 4])
    assert [row["f1"] for row in rows] == pytest.approx([8 / 12, 6 / 10, 6 / 8, 4 / 7, 2 / 5])
    assert all(type(value) is float for row in rows for value in row.values())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pr_curve_agrees_with_threshold_masks_on_grid_values(dtype):
    # One positive pixel on every grid value k/100 (0.29 * 100 < 29 in floating point, so a
    # floor-based bin would put it below its own threshold).
    probabilities = (np.arange(101) / 100).astype(dtype)
    reference = np.ones(101, dtype=bool)
    accumulator = PRAccumulator(101)
    accumulator.update(probabilities, reference)
    for k, row in enumerate(accumulator.curve()):
        assert row["recall"] == pytest.approx((101 - k) / 101)
        masks = postprocess.threshold_masks(probabilities.reshape(1, -1, 1), [row["threshold"]])
        assert row["recall"] == pytest.approx(masks.sum() / 101)


def test_pr_precision_undefined_when_nothing_predicted():
    accumulator = PRAccumulator(num_thresholds=3)
    accumulator.update(np.array([0.6, 0.2]), np.array([True, False]))
    top = accumulator.curve()[-1]  # threshold 1: nothing reaches it
    assert math.isnan(top["precision"])
    assert (top["recall"], top["f1"]) == (0.0, 0.0)


def test_pr_accumulator_two_updates_equal_one_on_the_concatenation():
    rng = np.random.default_rng(0)
    probabilities = rng.random((2, 16, 16))
    reference = rng.random((2, 16, 16)) < 0.3
    split = PRAccumulator(11)
    split.update(probabilities[0], reference[0])
    split.update(probabilities[1].astype(np.float32), reference[1])
    whole = PRAccumulator(11)
    whole.update(np.concatenate([probabilities[0].ravel(), probabilities[1].astype(np.float32).ravel()]),
                 reference.ravel())
    assert split.curve() == whole.curve()
    assert split.auc_pr() == whole.auc_pr()
    assert split.positives.sum() == reference.sum()
    assert split.negatives.sum() == reference.size - reference.sum()


def test_auc_pr_is_step_wise_average_precision(edge_accumulator: PRAccumulator):
    # Recall drops .25 at each of thresholds 1, .75, .5 (from .75) and 0 (from .25); sum of drop * precision.
    expected = 0.25 * 1.0 + 0.25 * (2 / 3) + 0.25 * (3 / 4) + 0.25 * (1 / 2)
    assert edge_accumulator.auc_pr() == pytest.approx(expected)


def test_auc_pr_matches_sklearn_on_grid_probabilities():
    rng = np.random.default_rng(1)
    probabilities = rng.integers(0, 21, size=(3, 20, 20)) / 20
    reference = rng.random((3, 20, 20)) < probabilities * 0.8  # informative but noisy
    accumulator = PRAccumulator(21)
    for index in range(3):
        accumulator.update(probabilities[index], reference[index])
    expected = average_precision_score(reference.ravel(), probabilities.ravel())
    assert accumulator.auc_pr() == pytest.approx(expected, abs=1e-12)
    assert 0.0 < accumulator.auc_pr() < 1.0


def test_best_f1_picks_the_peak_threshold(edge_accumulator: PRAccumulator):
    assert edge_accumulator.best_f1() == pytest.approx(
        {"threshold": 0.5, "f1": 6 / 8, "precision": 3 / 4, "recall": 3 / 4}
    )


def test_best_f1_takes_the_lowest_threshold_on_ties():
    accumulator = PRAccumulator(num_thresholds=3)
    accumulator.update(np.array([1.0]), np.array([True]))  # F1 is 1 at every threshold
    assert accumulator.best_f1() == {"threshold": 0.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}


def test_pr_scores_undefined_without_positive_pixels():
    accumulator = PRAccumulator(num_thresholds=3)
    assert all(math.isnan(row["recall"]) for row in accumulator.curve())  # nothing seen yet
    accumulator.update(np.array([0.7, 0.1]), np.array([False, False]))
    assert math.isnan(accumulator.auc_pr())
    assert all(math.isnan(value) for value in accumulator.best_f1().values())
    assert [row["precision"] for row in accumulator.curve()][:2] == [0.0, 0.0]


def test_pr_accumulator_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        PRAccumulator(1)
    accumulator = PRAccumulator()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accumulator.update(np.array([0.5, 1.5]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accumulator.update(np.array([0.5, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="shapes"):
        accumulator.update(np.array([0.5]), np.array([True, False]))
    with pytest.raises(TypeError):
        accumulator.update(np.array([0.5]), np.array([1]))
    assert accumulator.positives.sum() == accumulator.negatives.sum() == 0

