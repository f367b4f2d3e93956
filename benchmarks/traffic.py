"""Bytes a U-Net's training step or prediction moves through memory, counted from its layers.

The count takes every layer as one kernel that streams its tensors through memory once per
pass, at the dtype Keras gives them (the compute dtype of the layer's policy: bfloat16
activations and gradients under ``mixed_bfloat16``; the pixel scaling and the output stay
float32). It is what the step would move if nothing stayed in cache between kernels and no
kernel spilled: a lower bound on unfused kernels' traffic, not a measurement. Per pass, with X
the input(s), Y the output, dY and dX their gradients (same sizes and dtypes):

==================  =====================================  ===============================================
layer               forward                                backward (only where a gradient is needed)
==================  =====================================  ===============================================
Conv2D,             read X, write Y (bias and activation   read dY and X (weight gradient), read dY, write
Conv2DTranspose     fused)                                 dX (input gradient; not for the first conv,
                                                           whose input needs none); a non-linear
                                                           activation first reads Y and dY, writes dY
BatchNormalization  read X (statistics), read X, write Y   read dY and X (scale and offset gradients),
                    (normalise); inference: read X, write  read dY and X, write dX
                    Y with the moving statistics
Activation (ReLU)   read X, write Y                        read Y and dY, write dX
MaxPooling2D        read X, write Y                        read X, Y and dY, write dX
Dropout             read X, write Y and a one-byte mask;   read dY and the mask, write dX
                    inference or rate 0: nothing
Concatenate         read each input, write Y               read dY, write each dX
UpSampling2D        read X, write Y                        read dY, write dX
Normalization       read X, write Y                        nothing (no weights before it)
a tensor that       -                                      its gradients are summed: read each, write one
several layers read
the loss            read the prediction and the target     read them again, write d(prediction)
==================  =====================================  ===============================================

Weights are float32 variables. A training step reads each trainable parameter for the
forward pass and again for the input gradients, writes its gradient, and Adam reads the
parameter, gradient, and both moments and writes back the parameter and moments: 24 bytes read,
16 written per parameter and step. A prediction reads every parameter once per batch.
"""

from __future__ import annotations

import collections
import math

import keras
import tensorflow as tf

#: Bytes per trainable parameter and training step: (read, written); see the module docstring.
PARAMETER_BYTES_PER_STEP = (24, 16)
PREDICTION_PARAMETER_BYTES = 4
MASK_BYTES_PER_ELEMENT = 1
METHOD = ("analytic, not measured: every layer's passes over its tensors at their dtypes, nothing kept in cache "
          "between kernels (see benchmarks.traffic)")


def _inputs(layer) -> list:
    return [] if isinstance(layer, keras.layers.InputLayer) else keras.tree.flatten(layer.input)


def _bytes(tensor, per_element: int | None = None) -> int:
    """Bytes of one image's slice of a symbolic tensor (its batch dimension dropped)."""
    return math.prod(tensor.shape[1:]) * (per_element or tf.as_dtype(tensor.dtype).size)


class _Tally:
    """Bytes read and written per image, by layer kind and by pass."""

    def __init__(self) -> None:
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, kind: str, phase: str, read: int = 0, write: int = 0) -> None:
        self.by_kind[kind][f"{phase}_read"] += read
        self.by_kind[kind][f"{phase}_write"] += write

    def totals(self) -> dict[str, int]:
        summed = sum(self.by_kind.values(), collections.Counter())
        return {key: summed[key] for key in ("forward_read", "forward_write", "backward_read", "backward_write")}


def activation_bytes(model: keras.Model, training: bool) -> dict:
    """Bytes one image's activations and gradients move through ``model``: a training step, or a prediction."""
    tally = _Tally()
    readers = collections.Counter(id(tensor) for layer in model.layers for tensor in _inputs(layer))
    needs_gradient: set[int] = set()
    for layer in model.layers:
        inputs, output = _inputs(layer), layer.output
        if training and (layer.trainable_weights or any(id(tensor) in needs_gradient for tensor in inputs)):
            needs_gradient.add(id(output))
        if not inputs:
            continue
        _forward(tally, layer, inputs, output, training)
        if id(output) in needs_gradient:
            _backward(tally, layer, [tensor for tensor in inputs if id(tensor) in needs_gradient], inputs, output)
            if readers[id(output)] > 1:
                tally.add("gradient sums", "backward", read=readers[id(output)] * _bytes(output), write=_bytes(output))
    if training:
        prediction = _bytes(model.output)
        target = prediction  # one target plane per output plane, float32
        tally.add("loss", "forward", read=prediction + target)
        tally.add("loss", "backward", read=prediction + target, write=prediction)
    totals = tally.totals()
    return {"per_image": sum(totals.values()), **totals,
            "by_layer_kind": {kind: sum(counts.values()) for kind, counts in sorted(tally.by_kind.items())}}


def _kind(layer) -> str:
    for kind in (keras.layers.Conv2DTranspose, keras.layers.Conv2D, keras.layers.BatchNormalization,
                 keras.layers.Activation, keras.layers.MaxPooling2D, keras.layers.Dropout,
                 keras.layers.Concatenate, keras.layers.UpSampling2D, keras.layers.Normalization):
        if isinstance(layer, kind):
            return kind.__name__
    raise ValueError(f"no byte count for layer {layer.name} ({type(layer).__name__}); add its passes")


def _forward(tally: _Tally, layer, inputs: list, output, training: bool) -> None:
    kind, x, y = _kind(layer), sum(_bytes(tensor) for tensor in inputs), _bytes(output)
    if kind == "BatchNormalization" and training:
        tally.add(kind, "forward", read=2 * x, write=y)
    elif kind == "Dropout":
        if training and layer.rate:  # otherwise Keras returns its input
            tally.add(kind, "forward", read=x, write=y + _bytes(output, MASK_BYTES_PER_ELEMENT))
    else:
        tally.add(kind, "forward", read=x, write=y)


def _backward(tally: _Tally, layer, differentiated: list, inputs: list, output) -> None:
    """Passes that take dY to the weight gradients and to dX of the ``differentiated`` inputs."""
    kind, x, y = _kind(layer), sum(_bytes(tensor) for tensor in inputs), _bytes(output)
    dx = sum(_bytes(tensor) for tensor in differentiated)
    if kind in ("Conv2D", "Conv2DTranspose"):
        if layer.activation is not keras.activations.linear:
            tally.add(kind, "backward", read=2 * y, write=y)
        tally.add(kind, "backward", read=y + x + (y if differentiated else 0), write=dx)
    elif kind == "BatchNormalization":
        tally.add(kind, "backward", read=2 * (y + x), write=dx)
    elif kind == "Activation":
        tally.add(kind, "backward", read=2 * y, write=dx)
    elif kind == "MaxPooling2D":
        tally.add(kind, "backward", read=x + 2 * y, write=dx)
    elif kind == "Dropout" and layer.rate:
        tally.add(kind, "backward", read=y + _bytes(output, MASK_BYTES_PER_ELEMENT), write=dx)
    elif kind in ("Concatenate", "UpSampling2D"):
        tally.add(kind, "backward", read=y, write=dx)


def parameter_bytes(model: keras.Model, training: bool) -> tuple[int, int]:
    """(read, written) bytes of the weights, and in training their gradients' and Adam moments', per step or batch."""
    if not training:
        return model.count_params() * PREDICTION_PARAMETER_BYTES, 0
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    read, written = PARAMETER_BYTES_PER_STEP
    return trainable * read, trainable * written


def step_bytes(model: keras.Model, batch: int, training: bool) -> dict:
    """Bytes a training step (``training``) or a prediction of ``batch`` images moves, in all and per image."""
    activations = activation_bytes(model, training)
    read, written = parameter_bytes(model, training)
    total = batch * activations["per_image"] + read + written
    return {"method": METHOD, "per_step": total, "per_image": total / batch, "batch": batch,
            "written_per_step": batch * (activations["forward_write"] + activations["backward_write"]) + written,
            "activations": activations, "parameters_per_step": {"read": read, "written": written}}


def traced_allocations(space) -> dict:
    """Bytes of the buffers TensorFlow allocated in a trace (``flops.profile(..., memory=True)``), by op type.

    Every op output that does not reuse an input's buffer is allocated, so this measures what the
    kernels, as grappler and oneDNN fused them, wrote into fresh memory. Only allocations served
    by the traced (BFC) allocator appear: oneDNN builds serve small ones from an untraced pool,
    hence ``smallest_bytes``.
    """
    requested: collections.Counter[str] = collections.Counter()
    sizes = []
    for plane in space.planes:
        names = {key: stat.name for key, stat in plane.stat_metadata.items()}
        op_types = {metadata.name.rpartition(":")[0]: metadata.display_name  # op events: "<op name>:<op type>"
                    for metadata in plane.event_metadata.values() if metadata.display_name}
        for line in plane.lines:
            for event in line.events:
                if plane.event_metadata[event.metadata_id].name == "MemoryAllocation":
                    stats = {names[stat.metadata_id]: _value(stat, names) for stat in event.stats}
                    requested[op_types.get(stats.get("tf_op"), "other")] += stats["requested_bytes"]
                    sizes.append(stats["requested_bytes"])
    return {"bytes": sum(sizes), "allocations": len(sizes), "smallest_bytes": min(sizes, default=None),
            "by_op_type": dict(requested.most_common())}


def _value(stat, names: dict[int, str]):
    """A trace statistic's value; text the trace stores once is referenced by the id of its name."""
    field = stat.WhichOneof("value")
    return names[stat.ref_value] if field == "ref_value" else getattr(stat, field)
