"""How much arithmetic a U-Net does, and where a training step spends its time.

FLOPs are 2 x multiply-adds. The TensorFlow profiler counts them per op in the frozen
inference graph; an analytic count over the Conv2D and Conv2DTranspose layers checks it.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf


def analytic_forward_flops(model: keras.Model) -> dict[str, int]:
    """FLOPs of one image's forward pass through the Conv2D and Conv2DTranspose layers."""
    counts = {"conv2d": 0, "conv2d_transpose": 0}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            # Every input pixel scatters a kernel-sized patch of every output channel.
            _, height, width, channels = layer.input.shape
            counts["conv2d_transpose"] += 2 * height * width * channels * _kernel_outputs(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            channels = layer.input.shape[-1] // layer.groups
            counts["conv2d"] += 2 * height * width * channels * _kernel_outputs(layer)
    counts["total"] = counts["conv2d"] + counts["conv2d_transpose"]
    return counts


def _kernel_outputs(layer) -> int:
    return layer.kernel_size[0] * layer.kernel_size[1] * layer.filters


def profiler_forward_flops(model: keras.Model) -> dict[str, int]:
    """FLOPs per op type that the TF profiler counts in the frozen inference graph at batch 1."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    node = tf.compat.v1.profiler.profile(graph=frozen.graph, cmd="op", options=options)
    counts = {}
    # The op view is a chain, each op type the only child of the previous one.
    while node.children:
        node = node.children[0]
        counts[node.name] = int(node.float_ops)
    return counts


def forward_flops(model: keras.Model) -> dict:
    """Profiler and analytic counts; ``per_image`` (the profiler's convolutions) is what throughputs use."""
    analytic = analytic_forward_flops(model)
    profiled = profiler_forward_flops(model)
    conv = profiled.get("Conv2D", 0) + profiled.get("Conv2DBackpropInput", 0)
    return {"per_image": conv, "profiler_by_op": profiled, "profiler_total": sum(profiled.values()),
            "analytic": analytic, "profiler_conv_over_analytic": conv / analytic["total"],
            "note": "per_image counts Conv2D and Conv2DBackpropInput (Conv2DTranspose) only, as the analytic "
                    "count does; the elementwise ops (batch norm, bias, pooling) add profiler_total - per_image; "
                    "a training step counts 3 x forward (forward, input gradients, weight gradients)"}


def profile(run_step: Callable[[], object], memory: bool = False):
    """The TF profiler trace (an XSpace) of one call of ``run_step``; with ``memory``, its allocations too."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    # Host tracer level 3 adds an event per buffer allocated; 2 (the default) records the ops alone.
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3 if memory else 2)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir, options=options)
        try:
            run_step()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    return space


def op_breakdown(run_step: Callable[[], object], top: int = 12) -> dict:
    """Kernel time per op type over one traced call of ``run_step``."""
    return kernel_times(profile(run_step), top)


def kernel_times(space, top: int = 12) -> dict:
    """Kernel time per op type in a trace (``profile``).

    Sums the durations of op events on TensorFlow's executor threads (``tf_Compute``);
    ops running side by side both count, so shares are of summed kernel time, not wall time.
    """
    picoseconds: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):
                for event in line.events:
                    op_type = plane.event_metadata[event.metadata_id].display_name
                    if op_type:
                        picoseconds[op_type] += event.duration_ps
    total = sum(picoseconds.values())
    if not total:
        return {"error": "the trace holds no op events"}
    conv = sum(ps for name, ps in picoseconds.items() if "Conv2D" in name)
    return {"kernel_seconds": total / 1e12, "conv_share": conv / total,
            "top_ops": [{"op": name, "seconds": ps / 1e12, "share": ps / total}
                        for name, ps in picoseconds.most_common(top)]}
