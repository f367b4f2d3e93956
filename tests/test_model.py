import keras
import numpy as np
import pytest

from retinaseg.core.params import ModelParams
from retinaseg.core.tasks import Task
from retinaseg.model.unet import build_unet, transfer_weights

BINARY = Task("binary", {"hemorrhages": ["hemorrhages"]})
MULTICLASS = Task("multiclass", {"red": ["hemorrhages", "redsmalldots"], "bright": ["hardexudates", "softexudates"]})


def small(depth: int = 2, base_filters: int = 4, upsampling: str = "transpose") -> ModelParams:
    return ModelParams(depth=depth, base_filters=base_filters, dropout=0.5, batch_norm=True, upsampling=upsampling)


@pytest.mark.parametrize("depth, task", [(2, BINARY), (3, MULTICLASS)])
def test_unet_shapes_and_output_activation(depth, task):
    model = build_unet(32, task, small(depth=depth))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    out = model.predict(pixels, verbose=0)
    assert out.shape == (2, 32, 32, task.num_planes)
    if task.is_multiclass:
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
    else:
        assert ((out > 0) & (out < 1)).all()


def test_depth_and_width_set_filter_counts():
    model = build_unet(64, BINARY, small(depth=4, base_filters=8))
    convs = {layer.name: layer.filters for layer in model.layers if hasattr(layer, "filters")}
    assert [convs[f"down{level}_conv1"] for level in range(4)] == [8, 16, 32, 64]
    assert convs["bottleneck_conv1"] == 128
    assert convs["up0_conv2"] == 8


def test_tutorial_configuration_parameter_count():
    # The tutorial's depth-4, 64-filter U-Net has about 31 million weights.
    assert 30e6 < build_unet(256, BINARY, small(depth=4, base_filters=64)).count_params() < 32e6


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(32, MULTICLASS, small())
        assert model.output.dtype == "float32"
        assert model.get_layer("scale_to_unit").compute_dtype == "float32"
        assert model.get_layer("down0_conv1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_model_scales_raw_pixels_itself():
    keras.utils.set_random_seed(0)
    model = build_unet(16, MULTICLASS, small())
    first = model.layers[1]
    assert type(model.layers[0]).__name__ == "InputLayer"
    assert first.name == "scale_to_unit" and first.dtype == "float32"
    assert model.get_layer("down0_conv1").input is first.output, "the encoder reads the scaled pixels"
    # The same layers (so the same weights) without the scaling layer: fed from its output.
    unscaled = keras.Model(first.output, model.output)
    assert "scale_to_unit" not in [layer.name for layer in unscaled.layers]
    pixels = (np.arange(2 * 16 * 16 * 3) % 256).astype(np.float32).reshape(2, 16, 16, 3)  # every level 0..255
    expected = unscaled.predict(pixels / np.float32(255), verbose=0)
    assert np.array_equal(model.predict(pixels, verbose=0), expected)
    # The comparison is sharp enough to catch a multiplication by a rounded 1/255 (Rescaling).
    assert not np.array_equal(unscaled.predict(pixels * np.float32(1 / 255), verbose=0), expected)


def test_transfer_copies_matching_layers_and_keeps_a_new_head():
    binary = build_unet(32, BINARY, small())
    multiclass = build_unet(32, MULTICLASS, small())
    before_head = multiclass.get_layer("probabilities").get_weights()[0].copy()
    copied, kept = transfer_weights(binary, multiclass)
    assert kept == ["probabilities"]
    assert "down0_conv1" in copied and "up0_conv2" in copied and "bottleneck_bn1" in copied
    for name in copied:
        for new, old in zip(multiclass.get_layer(name).get_weights(), binary.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)
    head = multiclass.get_layer("probabilities").get_weights()[0]
    assert head.shape == (1, 1, 4, 3)
    np.testing.assert_array_equal(head, before_head)


def test_transfer_skips_layers_whose_shapes_differ():
    narrow = build_unet(32, MULTICLASS, small(base_filters=4))
    wide = build_unet(32, MULTICLASS, small(base_filters=8))
    copied, kept = transfer_weights(narrow, wide)
    assert copied == [] and "down0_conv1" in kept


def test_bilinear_upsampling_replaces_transposed_convolutions():
    model = build_unet(32, MULTICLASS, small(upsampling="bilinear"))
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "UpSampling2D" in kinds and "Conv2DTranspose" not in kinds
    assert model.get_layer("up0_upconv").kernel.shape == (3, 3, 8, 4)
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 32, 32, 3)
