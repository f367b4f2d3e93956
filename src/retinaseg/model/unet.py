"""U-Net builder whose depth and width are parameters (Ronneberger et al., 2015).

The tutorial's two configurations are ``depth=4, base_filters=64`` (64..1024 filters)
and ``depth=3, base_filters=32`` (32..256). As in the tutorial, the encoder blocks use
batch normalisation and the bottleneck uses dropout.
"""

from __future__ import annotations

import keras
from keras import layers

from retinaseg.core.params import ModelParams
from retinaseg.core.tasks import Task

#: Keras' default of 0.99 needs hundreds of steps before the inference-time statistics
#: settle; runs of a few hundred steps on small datasets then validate badly for many epochs.
BN_MOMENTUM = 0.9


def conv_block(x, filters: int, batch_norm: bool, name: str):
    """Two 3x3 convolutions, each followed (optionally) by batch norm, then ReLU."""
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def up_block(x, filters: int, mode: str, name: str):
    """Double the resolution: a 2x2 transposed convolution (the tutorial's), or bilinear resizing
    then a 3x3 convolution, which cannot produce the checkerboard artefacts of the former."""
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_upconv")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                         name=f"{name}_upconv")(x)


def scale_to_unit(x):
    """Pixel values 0..255 -> 0..1 inside the model, so every caller feeds plain pixels.

    A Normalization with mean 0 and variance 255^2 divides by exactly 255; Rescaling would
    multiply by a rounded 1/255, which differs in the last bit for half of the 256 levels.
    It runs in float32 under any precision policy.
    """
    return layers.Normalization(mean=0.0, variance=255.0**2, dtype="float32", name="scale_to_unit")(x)


def build_unet(image_size: int, task: Task, params: ModelParams) -> keras.Model:
    """Return a U-Net mapping [H, W, 3] images with pixel values 0..255 to per-class probabilities.

    The output has the task's planes and activation (one sigmoid plane, or a softmax over
    background and classes). The output layer is float32 even under a mixed-precision
    policy, so losses and thresholds see full-precision probabilities.
    """
    depth, base_filters, batch_norm = params.depth, params.base_filters, params.batch_norm
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = scale_to_unit(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, batch_norm, name=f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)

    x = conv_block(x, base_filters * 2**depth, batch_norm, name="bottleneck")
    x = layers.Dropout(params.dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = up_block(x, filters, params.upsampling, name=f"up{level}")
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, batch_norm=False, name=f"up{level}")

    outputs = layers.Conv2D(task.num_planes, 1, activation=task.activation, dtype="float32",
                            name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{base_filters}")


def is_encoder_layer(layer) -> bool:
    """Contracting-path layers (``down*``): the part a transferred model may keep frozen."""
    return layer.name.startswith("down")


def transfer_weights(donor: keras.Model, target: keras.Model) -> tuple[list[str], list[str]]:
    """Copy into ``target`` the weights of every same-named layer whose weight shapes match.

    Returns (copied, kept) layer names; ``kept`` are the target's weighted layers left as
    initialised, such as an output head with another number of classes.
    """
    donor_layers = {layer.name: layer for layer in donor.layers}
    copied, kept = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        match = donor_layers.get(layer.name)
        weights = match.get_weights() if match is not None else []
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            copied.append(layer.name)
        else:
            kept.append(layer.name)
    return copied, kept
