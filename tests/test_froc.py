"""FROC sweep and CPM: lesions found and false positives at every threshold, read at 1/8 ... 8 FP per image."""

import math

import numpy as np
import pytest

from retinaseg.evaluation import froc


def _image(size=32):
    """Two reference lesions; the probability puts 0.9 on the first, 0.5 on the second, 0.7 on a false alarm."""
    reference = np.zeros((size, size), dtype=bool)
    reference[2:5, 2:5] = True
    reference[20:23, 20:23] = True
    probability = np.zeros((size, size), dtype=np.float32)
    probability[3, 3] = 0.9
    probability[21, 21] = 0.5
    probability[10:12, 10:12] = 0.7
    return reference, probability


def test_sweep_counts_found_lesions_and_false_positives_at_each_threshold():
    reference, probability = _image()
    fov = np.ones_like(reference)
    swept = froc.sweep(probability[None], fov, [None], 1, [froc.Lesions.from_mask(reference)],
                       thresholds=np.array([0.4, 0.6, 0.8, 0.95]))
    assert swept.found.sum(axis=1).tolist() == [2, 1, 1, 0]
    assert swept.false_positives.tolist() == [1, 1, 0, 0]
    assert swept.sensitivity.tolist() == [1.0, 0.5, 0.5, 0.0]


def test_sensitivity_at_a_rate_is_the_best_with_at_most_that_many_false_positives():
    reference, probability = _image()
    fov = np.ones_like(reference)
    # Two images: the same one twice, so FP per image stays 1 at 0.4 and 0.6.
    swept = froc.sweep(np.stack([probability, probability]), fov, [None, None], 1,
                       [froc.Lesions.from_mask(reference)] * 2, thresholds=np.array([0.4, 0.6, 0.8]))
    summary = swept.summary()
    assert summary["sensitivity_at_fp"]["1/8"] == 0.5  # 0.8: one lesion of two, no false alarm
    assert summary["sensitivity_at_1_fp"] == 1.0  # 0.4: both lesions at 1 FP per image
    assert summary["threshold_at_fp"]["1"] == 0.4
    assert summary["cpm"] == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    assert summary["n_lesions"] == 4 and summary["n_images"] == 2


def test_a_curve_that_never_gets_under_a_rate_reads_zero_there():
    reference, probability = _image()
    rows, cols = np.indices(probability.shape)
    probability[:] = np.maximum(probability, 0.95 * ((rows % 3 == 0) & (cols % 3 == 0)))
    swept = froc.sweep(probability[None], np.ones_like(reference), [None], 1,
                       [froc.Lesions.from_mask(reference)], thresholds=np.array([0.4, 0.6]))
    assert swept.fp_per_image.min() > 8
    assert swept.summary()["sensitivity_at_fp"]["8"] == 0.0
    assert swept.summary()["threshold_at_fp"]["8"] is None


def test_cleaning_applies_before_matching_specks_neither_find_nor_count():
    reference, probability = _image()
    swept = froc.sweep(probability[None], np.ones_like(reference), [None], 2,
                       [froc.Lesions.from_mask(reference)], thresholds=np.array([0.4]))
    # The lesions' single pixels are specks under 2 px; the 2x2 false alarm stays.
    assert swept.found.sum() == 0 and swept.false_positives.tolist() == [1]


def test_a_component_on_the_optic_disc_is_dropped_like_evaluation_drops_it():
    reference, probability = _image()
    disc = np.zeros_like(reference)
    disc[9:13, 9:13] = True
    swept = froc.sweep(probability[None], np.ones_like(reference), [disc], 1,
                       [froc.Lesions.from_mask(reference)], thresholds=np.array([0.4]))
    assert swept.false_positives.tolist() == [0] and swept.found.sum() == 2


def test_overlapping_lesions_are_each_found_by_one_component():
    lesions = froc.Lesions(np.array([5, 6, 6, 7]), np.array([0, 0, 1, 1]), 2)
    labels = np.zeros(16, dtype=np.int32).reshape(4, 4)
    labels.flat[6] = 1
    found, fp = froc.match(labels, np.array([False, True]), lesions)
    assert found.tolist() == [True, True] and fp == 0


def test_groups_are_read_at_the_class_threshold_and_empty_groups_are_nan():
    reference, probability = _image()
    swept = froc.sweep(probability[None], np.ones_like(reference), [None], 1,
                       [froc.Lesions.from_mask(reference)], thresholds=np.array([0.4, 0.8]))
    summary = swept.summary({"kind": {"first": np.array([True, False]), "second": np.array([False, True]),
                                      "none": np.array([False, False])}})
    assert summary["by_kind"]["first"]["sensitivity_at_fp"]["1/8"] == 1.0  # at 0.8, the class's choice
    assert summary["by_kind"]["second"]["sensitivity_at_fp"]["1/8"] == 0.0
    assert summary["by_kind"]["second"]["sensitivity_at_fp"]["1"] == 1.0
    assert math.isnan(summary["by_kind"]["none"]["cpm"])


def test_threshold_at_rate_finds_the_most_lesions_within_the_rate():
    reference, probability = _image()
    fov, unmarked = np.ones_like(reference), np.zeros((1, *reference.shape), bool)
    at = lambda rate, marked=unmarked, area=100.0: froc.threshold_at_rate(probability[None], reference[None], marked,
                                                                          fov, [None], 1, rate, area)
    assert at(1.0) == pytest.approx(0.5)  # the highest of the ties
    assert at(0.0) == pytest.approx(0.9)
    marked = unmarked.copy()
    marked[0, 9:13, 9:13] = True  # an annotator marked the false alarm's place: no false alarm there
    assert at(0.0, marked) == pytest.approx(0.5)
    # The reference covers 18 pixels; at 0.5 the prediction covers 6 (2 lesion pixels, 4 of the false alarm),
    # at 0.71 and above 1: an area bound of a quarter of the reference's leaves only the high thresholds.
    assert at(1.0, area=0.25) == pytest.approx(0.9)
    assert at(1.0, area=0.01) == froc.SWEEP_THRESHOLDS[-1]  # nothing qualifies: the highest threshold


def test_a_component_on_a_spared_pixel_is_no_false_positive_and_no_lesion():
    reference, probability = _image()
    spared = np.zeros_like(reference)
    spared[11, 11] = True
    lesions = froc.Lesions.from_mask(reference, spared)
    swept = froc.sweep(probability[None], np.ones_like(reference), [None], 1, [lesions], thresholds=np.array([0.4]))
    assert lesions.count == 2 and swept.false_positives.tolist() == [0] and swept.found.sum() == 2


def test_thresholds_compare_in_the_probabilities_dtype():
    """A probability stored as float32 0.995 passes the threshold 0.995, as threshold_masks decides."""
    reference, _ = _image()
    probability = np.zeros(reference.shape, dtype=np.float32)
    probability[3, 3] = np.float32(0.995)
    swept = froc.sweep(probability[None], np.ones_like(reference), [None], 1,
                       [froc.Lesions.from_mask(reference)], thresholds=np.array([0.995]))
    assert swept.found.sum() == 1


def test_one_lesion_per_component_a_painted_region_finds_one_lesion():
    reference, _ = _image()
    painted = np.zeros(reference.shape, dtype=np.int32)
    painted[:, :] = 1  # one component over both lesions
    keep = np.array([False, True])
    assert froc.match(painted, keep, froc.Lesions.from_mask(reference))[0].sum() == 2  # the core's rule
    found, fp = froc.match(painted, keep, froc.Lesions.from_mask(reference, one_per_component=True))
    assert found.sum() == 1 and fp == 0


def test_one_lesion_per_component_credits_the_largest_overlap():
    lesions = froc.Lesions(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 1, 1, 2]), 3, one_per_component=True)
    labels = np.array([[1, 1, 1, 1, 2]])
    found, fp = froc.match(labels, np.array([False, True, True]), lesions)
    assert found.tolist() == [False, True, True] and fp == 0
