"""bootstrap: percentile intervals over resampled test images, on cases whose answer is known."""

import numpy as np
import pytest

from retinaseg.evaluation import bootstrap


def test_the_interval_is_the_2_5th_and_97_5th_percentile_of_the_defined_values():
    values = np.arange(1001, dtype=float)  # the p-th percentile of 0, 1, ..., 1000 is 10 p
    assert bootstrap.interval(values) == [25.0, 975.0]
    assert bootstrap.interval(np.append(values, [np.nan] * 50)) == [25.0, 975.0]
    assert bootstrap.interval(np.full(3, np.nan)) == [None, None]


def test_every_resample_draws_as_many_images_as_the_test_set_each_equally_often():
    drawn = bootstrap.weights(5)
    assert drawn.shape == (bootstrap.SAMPLES, 5) and np.all(drawn.sum(axis=1) == 5)
    assert drawn.mean(axis=0) == pytest.approx(np.ones(5), abs=0.1)
    np.testing.assert_array_equal(drawn, bootstrap.weights(5))  # seeded


def test_dice_interval_of_a_test_set_with_one_missed_image_is_known_exactly():
    """Three images found perfectly (10 TP each), one missed (10 FN).

    A resample holds the missed image k times, k ~ Binomial(4, 1/4), and its Dice is (8 - 2k) / (8 - k):
    1 for k = 0 (P = 0.32), 0.4 for k = 3 (P = 0.047) and 0 for k = 4 (P = 0.004). The 2.5th percentile
    falls among the resamples with k = 3 (P(k >= 3) = 0.051, P(k = 4) = 0.004), the 97.5th among those with k = 0.
    """
    counts = np.array([[10, 0, 0, 100]] * 3 + [[0, 0, 10, 100]])
    resampled = bootstrap.dice(counts, bootstrap.weights(4))
    missed = bootstrap.weights(4)[:, 3]
    np.testing.assert_allclose(resampled, (8 - 2 * missed) / (8 - missed))
    assert bootstrap.interval(resampled) == [0.4, 1.0]


def test_the_interval_of_a_mean_covers_the_true_mean_about_95_times_in_100():
    """500 test sets of 40 images, each image's score drawn from a normal distribution of mean 0.3."""
    rng = np.random.default_rng(1)
    true_mean, n_images = 0.3, 40
    scores = rng.normal(true_mean, 0.1, size=(500, n_images))
    drawn = bootstrap.weights(n_images)
    covered = [low <= true_mean <= high
               for low, high in (bootstrap.interval(drawn @ test_set / n_images) for test_set in scores)]
    assert 0.90 <= np.mean(covered) <= 0.99
