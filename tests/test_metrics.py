"""Evaluation scores and summaries against counts worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retinaseg.atomic import write_json
from retinaseg.metrics import (
    SCORE_NAMES,
    confusion_counts,
    predictions_to_masks,
    scores,
    summarize,
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


def test_binary_predictions_threshold_inclusively():
    probabilities = np.array([0.2, 0.5, 0.7]).reshape(1, 3, 1)
    masks = predictions_to_masks(probabilities, "binary", 0.5)
    assert masks.dtype == bool
    assert masks.ravel().tolist() == [False, True, True]


def test_multiclass_predictions_are_one_hot_argmax_whatever_the_threshold():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]]).reshape(1, 3, 3)
    masks = predictions_to_masks(probabilities, "multiclass", 0.99)
    assert masks.shape == probabilities.shape
    assert masks[0].tolist() == [[True, False, False], [False, False, True], [False, True, False]]


def test_unknown_task_rejected():
    with pytest.raises(ValueError, match="binary, multiclass"):
        predictions_to_masks(np.zeros((1, 1, 1)), "regression", 0.5)


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
