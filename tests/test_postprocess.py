"""Probabilities to lesion masks: per-class thresholds, field of view, specks, optic disc."""

import math

import numpy as np
import pytest

from retinaseg.evaluation import anatomy, metrics, postprocess

SIZE = 64


def _disc_image(disc_row: int, disc_col: int, radius: int, spots: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """A vignetted orange fundus with a bright disc and smaller, brighter spots elsewhere."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    rho = np.hypot(rows - SIZE / 2, cols - SIZE / 2) / (SIZE / 2)
    fov = rho <= 1
    image = np.stack([200 * (1 - 0.5 * rho**2), 90 * (1 - 0.5 * rho**2), 40 * (1 - 0.5 * rho**2)], axis=-1)
    disc = np.hypot(rows - disc_row, cols - disc_col) <= radius
    image[disc] = (250, 215, 150)
    for row, col in spots:
        image[row - 1:row + 2, col - 1:col + 2] = (255, 250, 160)
    return np.clip(image * fov[..., None], 0, 255).astype(np.uint8), fov


def test_optic_disc_is_the_bright_large_region_not_a_brighter_speck():
    image, fov = _disc_image(30, 48, 5, spots=[(20, 16), (44, 20), (40, 34)])
    row, col, radius = anatomy.locate_optic_disc(image, fov)
    assert np.hypot(row - 30, col - 48) <= 3
    assert radius == pytest.approx(anatomy.DISC_RADIUS_OF_FOV * anatomy.fov_diameter(fov))


def test_binary_threshold_is_inclusive():
    probabilities = np.array([0.29, 0.3, 0.9]).reshape(1, 3, 1)
    assert postprocess.threshold_masks(probabilities, [0.3])[..., 0].tolist() == [[False, True, True]]


def test_multiclass_pixel_goes_to_the_most_probable_class_that_passes_its_threshold():
    # planes: background, red, bright; thresholds red 0.3, bright 0.6
    probabilities = np.array([[0.8, 0.2, 0.0],    # nothing passes: background
                              [0.5, 0.3, 0.2],    # red passes
                              [0.2, 0.35, 0.45],  # red passes, bright misses 0.6: red despite lower probability
                              [0.0, 0.35, 0.65]]  # both pass: bright is more probable
                             ).reshape(1, 4, 3)
    masks = postprocess.threshold_masks(probabilities, [0.3, 0.6])[0]
    assert np.argmax(masks, axis=-1).tolist() == [0, 1, 1, 2]
    assert masks.sum(axis=-1).tolist() == [1, 1, 1, 1]


def test_clean_keeps_the_fov_drops_specks_and_components_centred_on_the_disc():
    fov = np.zeros((20, 20), dtype=bool)
    fov[:, :15] = True
    disc = np.zeros_like(fov)
    disc[0:6, 0:6] = True
    plane = np.zeros_like(fov)
    plane[0:3, 0:3] = True        # centred on the disc: dropped
    plane[5:8, 5:13] = True       # touches the disc but centred off it: kept
    plane[15, 15:18] = True       # outside the field of view
    plane[18, 2] = True           # one-pixel speck
    cleaned = postprocess.clean(plane[..., None], fov, min_component_px=2, disc=disc)[..., 0]
    assert cleaned.sum() == 3 * 8 and cleaned[5:8, 5:13].all()
    assert postprocess.clean(plane[..., None], fov, 2)[..., 0].sum() == 3 * 8 + 9  # no disc: first blob kept
    two_class = np.stack([~plane, plane, np.zeros_like(plane)], axis=-1)
    cleaned = postprocess.clean(two_class, fov, 2, disc)
    assert (cleaned.sum(axis=-1) == 1).all()


def test_validation_threshold_separates_lesion_from_background_probabilities():
    rng = np.random.default_rng(0)
    core = np.zeros((3, 32, 32, 1), dtype=bool)
    core[:, 8:14, 8:14] = True
    probabilities = np.where(core, rng.uniform(0.65, 0.8, core.shape), rng.uniform(0.0, 0.45, core.shape))
    fov = np.ones((32, 32), dtype=bool)
    (threshold,) = postprocess.f_beta_thresholds(probabilities, core, fov, 1, [None] * 3)
    assert 0.45 <= threshold <= 0.65  # every such threshold separates them; ties go to the lowest


def test_lesion_counts_report_components_touching_the_disc():
    reference = np.zeros((10, 10), dtype=bool)
    prediction = np.zeros_like(reference)
    prediction[0:2, 0:2] = True
    prediction[6:8, 6:8] = True
    disc = np.zeros_like(reference)
    disc[0:3, 0:3] = True
    counts = metrics.lesion_counts(reference, prediction, 1, disc)
    assert counts["optic_disc_components"] == 1 and counts["false_positive_components"] == 2
    summary = metrics.summarize_lesions([counts, counts])
    assert summary["optic_disc_components_per_image"] == 1.0
    assert "optic_disc_components" not in metrics.lesion_counts(reference, prediction, 1)


def test_f_beta_below_one_weighs_precision_more_and_is_undefined_with_nothing_to_score():
    assert metrics.f_beta(6, 2, 2, 1.0) == pytest.approx(0.75) == metrics.scores(6, 2, 2, 0)["f1"]  # Dice
    precise, sensitive = metrics.f_beta(4, 1, 4, 0.5), metrics.f_beta(4, 4, 1, 0.5)
    assert precise > sensitive
    assert math.isnan(metrics.f_beta(0, 0, 0, 0.5))


def test_an_empty_validation_plane_keeps_the_lowest_threshold():
    empty = np.zeros((1, 8, 8, 1), dtype=bool)
    probabilities = np.zeros((1, 8, 8, 1), dtype=np.float32)
    fov = np.ones((8, 8), dtype=bool)
    assert postprocess.f_beta_thresholds(probabilities, empty, fov, 1, [None]) == [float(postprocess.THRESHOLD_GRID[0])]


def test_lower_beta_chooses_a_higher_threshold():
    rng = np.random.default_rng(1)
    core = np.zeros((2, 32, 32, 1), dtype=bool)
    core[:, 10:16, 10:16] = True
    ramp = np.where(core, rng.uniform(0.2, 1.0, core.shape), rng.uniform(0.0, 1.0, core.shape) ** 4)
    fov = np.ones((32, 32), dtype=bool)
    (dice_threshold,) = postprocess.f_beta_thresholds(ramp, core, fov, 1, [None] * 2, beta=1.0)
    (precise_threshold,) = postprocess.f_beta_thresholds(ramp, core, fov, 1, [None] * 2, beta=0.5)
    assert precise_threshold > dice_threshold


def test_rules_threshold_then_clean_and_use_the_disc_only_when_asked():
    probabilities = np.full((12, 12, 1), 0.1)
    probabilities[0:3, 0:3] = 0.9     # centred on the disc
    probabilities[6:8, 4:9] = 0.7     # a lesion off the disc
    probabilities[10, 10] = 0.95      # one-pixel speck
    probabilities[3:5, 8:11] = 0.45   # below the threshold
    probabilities[0:2, 11] = 0.8      # outside the field of view
    fov = np.ones((12, 12), dtype=bool)
    fov[:, 11] = False
    disc = np.zeros((12, 12), dtype=bool)
    disc[0:4, 0:4] = True
    strict = postprocess.Rules([0.5], min_component_px=2, drop_on_optic_disc=True).apply(probabilities, fov, disc)
    assert strict.shape == (12, 12, 1)
    assert strict.sum() == 2 * 5 and strict[6:8, 4:9].all()
    kept_disc = postprocess.Rules([0.5], min_component_px=2).apply(probabilities, fov, disc)
    assert kept_disc.sum() == 2 * 5 + 9, "the disc is ignored unless the rules drop disc hits"
    loose = postprocess.Rules([0.5]).apply(probabilities, fov, None)
    assert loose.sum() == 2 * 5 + 9 + 1, "min_component_px defaults to 1: specks stay"
    assert postprocess.Rules([0.4]).apply(probabilities, fov, None).sum() == 2 * 5 + 9 + 1 + 6


def test_rules_for_several_classes_give_one_plane_per_pixel():
    probabilities = np.array([[0.8, 0.2, 0.0], [0.5, 0.3, 0.2], [0.0, 0.35, 0.65], [0.1, 0.1, 0.8]]).reshape(2, 2, 3)
    fov = np.array([[True, True], [True, False]])
    result = postprocess.Rules([0.3, 0.6]).apply(probabilities, fov, None)
    assert np.argmax(result, axis=-1).tolist() == [[0, 1], [2, 0]]  # the last pixel is outside the fov
    assert (result.sum(axis=-1) == 1).all()
    with pytest.raises(ValueError, match="2 thresholds"):
        postprocess.Rules([0.5]).apply(probabilities, fov, None)
