"""Losses and the Dice metric against values computed by hand."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from retinaseg.core.params import LOSSES
from retinaseg.core.tasks import Task
from retinaseg.model.losses import (
    EPSILON,
    build_loss,
    class_weights_from_masks,
    dice_coefficient,
)

BINARY = Task("binary", {"hemorrhages": ["hemorrhages"]})
MULTICLASS = Task("multiclass", {"red": ["hemorrhages", "redsmalldots"], "bright": ["hardexudates", "softexudates"]})


def value(tensor) -> float:
    return float(ops.convert_to_numpy(tensor))


def binary(*rows: list[float]) -> np.ndarray:
    """One sample per row, each a 1 x W image with one plane: [N,1,W,1] float32."""
    return np.array(rows, dtype="float32")[:, None, :, None]


def one_hot(labels: list[int], planes: int = 3) -> np.ndarray:
    """A single 1 x W image whose pixel i belongs to plane labels[i]: [1,1,W,planes]."""
    return np.eye(planes, dtype="float32")[labels][None, None]


def test_dice_of_partial_overlap():
    truth = np.array([[1, 1], [0, 0]], dtype="float32").reshape(1, 2, 2, 1)
    pred = np.array([[1, 0], [0, 0]], dtype="float32").reshape(1, 2, 2, 1)
    assert value(dice_coefficient(truth, pred)) == pytest.approx((2 * 1 + 1) / (2 + 1 + 1))


def test_dice_of_empty_masks_is_one_with_smooth():
    empty = binary([0, 0, 0, 0])
    assert value(dice_coefficient(empty, empty)) == pytest.approx(1.0)


def test_dice_of_perfect_prediction_is_one_and_dice_loss_zero():
    truth = binary([1, 0, 1, 1])
    assert value(dice_coefficient(truth, truth)) == pytest.approx(1.0)
    assert value(build_loss("dice", BINARY)(truth, truth)) == pytest.approx(0.0, abs=1e-6)


def test_dice_pools_the_batch_instead_of_averaging_samples():
    truth = binary([1, 1, 0, 0], [1, 0, 0, 0])
    pred = binary([1, 1, 0, 0], [0, 0, 0, 0])
    # Pooled: overlap 2, |t| 3, |p| 2 -> 5/6; the mean of per-sample Dice would be (1 + 1/2) / 2.
    assert value(dice_coefficient(truth, pred)) == pytest.approx(5 / 6)


def test_multiclass_dice_averages_lesion_planes_only():
    truth = one_hot([0, 0, 1, 2])
    pred = one_hot([0, 1, 1, 0])
    # red: (2*1+1)/(1+2+1) = 3/4; bright: (0+1)/(1+0+1) = 1/2; background (3/5) left out.
    assert value(dice_coefficient(truth, pred)) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_bce_matches_numpy():
    truth = binary([1, 0, 0, 1])
    pred = binary([0.9, 0.2, 0.6, 0.1])
    expected = -np.mean(np.log([0.9, 0.8, 0.4, 0.1]))
    assert value(build_loss("bce", BINARY)(truth, pred)) == pytest.approx(expected, rel=1e-6)


def test_bce_clips_certain_wrong_predictions():
    loss = value(build_loss("bce", BINARY)(binary([1]), binary([0])))
    assert loss == pytest.approx(-math.log(EPSILON), rel=1e-5)


def test_dice_bce_is_the_sum_of_its_parts():
    truth = binary([1, 0, 1, 0])
    pred = binary([0.8, 0.3, 0.4, 0.1])
    parts = value(build_loss("dice", BINARY)(truth, pred)) + value(build_loss("bce", BINARY)(truth, pred))
    assert value(build_loss("dice_bce", BINARY)(truth, pred)) == pytest.approx(parts, rel=1e-6)


def test_weighted_bce_scales_the_positive_term():
    truth = binary([1, 0])
    pred = binary([0.25, 0.5])
    plain = value(build_loss("bce", BINARY)(truth, pred))
    weighted = value(build_loss("weighted_bce", BINARY, [4.0])(truth, pred))
    expected = -(4.0 * math.log(0.25) + math.log(0.5)) / 2
    assert weighted == pytest.approx(expected, rel=1e-6)
    assert weighted > plain


def test_cce_matches_numpy():
    truth = one_hot([0, 1, 2])
    pred = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]], dtype="float32")[None, None]
    expected = -np.mean(np.log([0.7, 0.4, 0.6]))
    assert value(build_loss("cce", MULTICLASS)(truth, pred)) == pytest.approx(expected, rel=1e-6)


def test_weighted_cce_raises_the_cost_of_missed_lesions():
    truth = one_hot([0, 1])
    pred = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1]], dtype="float32")[None, None]
    plain = value(build_loss("cce", MULTICLASS)(truth, pred))
    weighted = value(build_loss("weighted_cce", MULTICLASS, [1.0, 5.0, 5.0])(truth, pred))
    assert weighted == pytest.approx(-(math.log(0.8) + 5.0 * math.log(0.2)) / 2, rel=1e-6)
    assert weighted > plain


@pytest.mark.parametrize("name", LOSSES)
def test_bfloat16_inputs_give_float32_results(name: str):
    truth = ops.cast(one_hot([0, 1, 2, 1]), "bfloat16")
    pred = ops.cast(one_hot([0, 1, 1, 1]) * 0.8 + 0.2 / 3, "bfloat16")
    loss = build_loss(name, MULTICLASS, [1.0, 2.0, 3.0])
    assert ops.convert_to_numpy(loss(truth, pred)).dtype == np.float32
    assert ops.convert_to_numpy(dice_coefficient(truth, pred)).dtype == np.float32


@pytest.mark.parametrize("name", LOSSES)
def test_loss_carries_its_name(name: str):
    assert build_loss(name, MULTICLASS, [1.0, 2.0, 3.0]).__name__ == name


@pytest.mark.parametrize("task, weights", [(MULTICLASS, None), (MULTICLASS, [1.0, 2.0]), (BINARY, [1.0, 2.0])])
def test_weighted_loss_needs_one_weight_per_plane(task: Task, weights):
    name = "weighted_cce" if task.is_multiclass else "weighted_bce"
    with pytest.raises(ValueError, match=rf"needs {task.num_planes} class weight"):
        build_loss(name, task, weights)


def test_unweighted_losses_ignore_class_weights():
    truth = binary([1, 0])
    pred = binary([0.25, 0.5])
    assert value(build_loss("bce", BINARY, [4.0])(truth, pred)) == pytest.approx(
        value(build_loss("bce", BINARY)(truth, pred)))


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.usefixtures("mixed_bfloat16")
def test_keras_logs_the_metric_as_dice_under_mixed_precision():
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="mixed_bfloat16")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=build_loss("dice_bce", BINARY), metrics=[dice_coefficient])
    masks = (np.arange(32).reshape(2, 4, 4, 1) % 3 == 0).astype("float32")
    history = model.fit(masks, masks, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "dice"}
    assert math.isfinite(history.history["loss"][0])


def test_binary_weight_is_negatives_over_positives():
    masks = np.zeros((2, 1, 5, 1), dtype=bool)
    masks[0, 0, :2] = True
    assert class_weights_from_masks(masks) == pytest.approx([8 / 2])


def test_multiclass_weights_are_inverse_frequency_with_background_one():
    labels = [0] * 6 + [1] * 3 + [2]
    masks = np.eye(3, dtype=bool)[labels].reshape(1, 2, 5, 3)
    assert class_weights_from_masks(masks) == pytest.approx([1.0, 2.0, 6.0])
    assert class_weights_from_masks(masks, max_weight=5.0) == pytest.approx([1.0, 2.0, 5.0])


def test_class_without_pixels_gets_max_weight():
    masks = np.eye(3, dtype=bool)[[0, 0, 1, 1]].reshape(1, 2, 2, 3)
    assert class_weights_from_masks(masks, max_weight=7.0) == pytest.approx([1.0, 1.0, 7.0])
