import numpy as np
import pytest

from retinaseg.model import build_unet


@pytest.mark.parametrize("depth, classes", [(2, 1), (3, 3)])
def test_unet_shapes_and_output_activation(depth, classes):
    model = build_unet(32, classes, depth=depth, base_filters=4)
    out = model.predict(np.random.default_rng(0).random((2, 32, 32, 3), np.float32), verbose=0)
    assert out.shape == (2, 32, 32, classes)
    if classes == 1:
        assert ((out > 0) & (out < 1)).all()
    else:
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_depth_and_width_set_filter_counts():
    model = build_unet(64, 1, depth=4, base_filters=8)
    convs = {layer.name: layer.filters for layer in model.layers if hasattr(layer, "filters")}
    assert [convs[f"down{level}_conv1"] for level in range(4)] == [8, 16, 32, 64]
    assert convs["bottleneck_conv1"] == 128
    assert convs["up0_conv2"] == 8


def test_tutorial_configuration_parameter_count():
    # The tutorial's depth-4, 64-filter U-Net has about 31 million weights.
    assert 30e6 < build_unet(256, 1, depth=4, base_filters=64).count_params() < 32e6


def test_output_stays_float32_under_mixed_precision():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(32, 3, depth=2, base_filters=4)
        assert model.output.dtype == "float32"
        assert model.get_layer("down0_conv1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_transfer_copies_matching_layers_and_keeps_a_new_head():
    from retinaseg.model import transfer_weights

    binary = build_unet(32, 1, depth=2, base_filters=4)
    multiclass = build_unet(32, 3, depth=2, base_filters=4)
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
    from retinaseg.model import transfer_weights

    narrow = build_unet(32, 3, depth=2, base_filters=4)
    wide = build_unet(32, 3, depth=2, base_filters=8)
    copied, kept = transfer_weights(narrow, wide)
    assert copied == [] and "down0_conv1" in kept


def test_bilinear_upsampling_replaces_transposed_convolutions():
    model = build_unet(32, 3, depth=2, base_filters=4, upsampling="bilinear")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "UpSampling2D" in kinds and "Conv2DTranspose" not in kinds
    assert model.get_layer("up0_upconv").kernel.shape == (3, 3, 8, 4)
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 32, 32, 3)
