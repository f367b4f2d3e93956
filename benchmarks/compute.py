"""Compute sections: matmul peak, training steps, input stall and inference of the U-Nets.

TensorFlow places every op on a GPU when one is visible, so the same code measures it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from benchmarks import data, flops
from benchmarks.config import BINARY, Config, Net, train_params
from benchmarks.measure import rate, repeat, stats, target
from retinaseg.model.trained import predict_batches
from retinaseg.model.unet import build_unet
from retinaseg.training import distribute, hardware
from retinaseg.training.fit import compile_unet, make_dataset

RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: (name, precision, XLA) of the large net's training-step variants; the first is the baseline.
VARIANTS = (("float32", "float32", False), ("bfloat16", "bfloat16", False),
            ("float32_xla", "float32", True), ("bfloat16_xla", "bfloat16", True))
STEP_METHOD = ("compiled model.fit (verbose 0, one step per execution); one figure per step, from "
               "on_train_batch_begin to on_train_batch_end after reading the loss, so the step and the fetch "
               "of its batch have finished; warm-up steps, the first of which traces, are dropped")


def hardware_info() -> dict:
    """What the figures were measured on; a KVM guest may hide the CPU's name but not its family."""
    cpuinfo = hardware.cpu_info()
    flags = hardware.cpu_flags()
    return {"cpu": cpuinfo.get("model name"),
            "cpu_family_model": f"{cpuinfo.get('cpu family')}/{cpuinfo.get('model')}", "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "flags": {flag: flag in flags for flag in RELEVANT_FLAGS},
            "native_bfloat16": _native_bfloat16(),
            "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__, "keras": keras.__version__}


def _native_bfloat16() -> bool:
    return hardware.resolve_precision("auto") == "bfloat16"


def _no_bfloat16() -> dict:
    return {"skipped": "no native bfloat16 here (no GPU, no CPU flag of "
                       f"{', '.join(hardware.BF16_CPU_FLAGS)}); emulated it is many times slower"}


def peak(cfg: Config, run) -> dict:
    """Achieved GFLOP/s of a square matmul: the ceiling the training step is compared with."""
    return {"device": "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU",
            "float32": _matmul(tf.float32, cfg),
            "bfloat16": _matmul(tf.bfloat16, cfg) if _native_bfloat16() else _no_bfloat16()}


def _matmul(dtype: tf.DType, cfg: Config) -> dict:
    """Grow n until one product takes ``cfg.matmul_seconds``, then time that size."""
    product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    generator = tf.random.Generator.from_seed(0)

    def timed(n: int, warmup: int, reps: int) -> list[float]:
        a, b = (tf.cast(generator.normal((n, n)), dtype) for _ in range(2))
        return repeat(lambda: product(a, b).numpy(), warmup, reps)

    n = 256
    while n < cfg.matmul_max_n and (probe := timed(n, 1, 1)[0]) < cfg.matmul_seconds / 8:
        n *= 2
    if n < cfg.matmul_max_n:
        n = min(cfg.matmul_max_n, max(256, round(n * (cfg.matmul_seconds / probe) ** (1 / 3) / 256) * 256))
    seconds = timed(n, cfg.warmup, cfg.reps)
    return {"n": n, "seconds": stats(seconds), "gflops": rate(2 * n**3 / 1e9, seconds)}


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """The Keras dtype policy is global: set it for one model, then back to float32."""
    hardware.configure(precision)
    try:
        yield
    finally:
        hardware.configure("float32")


def _compiled_unet(net: Net, image_size: int, jit_compile: bool = False) -> keras.Model:
    """A one-class U-Net built and compiled by the training stage's own functions (Dice loss)."""
    model = build_unet(image_size, BINARY, net.params)
    compile_unet(model, BINARY, train_params(jit_compile))
    return model


class _StepClock(keras.callbacks.Callback):
    """Seconds of each training step; reading the loss waits until the step has finished."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        float(logs["loss"])
        self.seconds.append(time.perf_counter() - self._started)


def step_seconds(model: keras.Model, dataset, warmup: int, reps: int) -> list[float]:
    clock = _StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + reps, verbose=0, callbacks=[clock], shuffle=False)
    return clock.seconds[warmup:]


def random_batch(batch: int, image_size: int):
    rng = np.random.default_rng(0)
    images = rng.random((batch, image_size, image_size, 3), np.float32) * 255  # pixel values, as training feeds
    masks = (rng.random((batch, image_size, image_size, 1)) < 0.05).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, masks)).repeat()


def train_step(cfg: Config, run) -> dict:
    """Training throughput of the tutorial's two U-Nets, and of the large one in bf16 and XLA."""
    peaks = {name: run.results["peak"].get(name, {}).get("gflops", {}).get("median")
             for name in ("float32", "bfloat16")}
    dataset = random_batch(cfg.batch, cfg.image_size)
    nets = {cfg.small_net.label: _train_net(cfg.small_net, VARIANTS[:1], cfg.reps, cfg, dataset, peaks, trace=False),
            cfg.large_net.label: _train_net(cfg.large_net, VARIANTS, cfg.slow_reps, cfg, dataset, peaks, trace=True)}
    large = nets[cfg.large_net.label]["variants"]["float32"]
    return {"method": STEP_METHOD, "data": "one in-memory batch repeated (tf.data from_tensors().repeat())",
            "image_size": cfg.image_size, "batch": cfg.batch, "nets": nets,
            "target": target(f"train step {cfg.large_net.label} float32 / float32 matmul peak",
                             large.get("fraction_of_float32_peak"), 0.5, at_most=False)}


def _train_net(net: Net, variants, reps: int, cfg: Config, dataset, peaks: dict, trace: bool) -> dict:
    """FLOPs of ``net`` and its step time per variant; with ``trace``, the float32 step's op breakdown."""
    reference = build_unet(cfg.image_size, BINARY, net.params)
    forward = flops.forward_flops(reference)
    step_gflop = 3 * forward["per_image"] * cfg.batch / 1e9
    entry = {"depth": net.depth, "base_filters": net.base_filters, "parameters": reference.count_params(),
             "forward_flops": forward, "train_gflop_per_step": step_gflop, "variants": {}}
    for name, precision, jit in variants:
        if precision == "bfloat16" and not _native_bfloat16():
            entry["variants"][name] = _no_bfloat16()
            continue
        with precision_policy(precision):
            model = _compiled_unet(net, cfg.image_size, jit)
            seconds = step_seconds(model, dataset, cfg.warmup, reps)
            if trace and name == "float32":
                entry["op_breakdown"] = _breakdown(lambda: step_seconds(model, dataset, 0, 1))
        keras.backend.clear_session()
        gflops = rate(step_gflop, seconds)
        entry["variants"][name] = {
            "step_seconds": stats(seconds), "images_per_second": rate(cfg.batch, seconds), "gflops": gflops,
            **{f"fraction_of_{peak}_peak": gflops["median"] / value
               for peak, value in peaks.items() if value and peak in ("float32", precision)}}
    _speedups(entry["variants"])
    return entry


def _breakdown(run_step) -> dict:
    """A failed trace must not lose the section's timings."""
    try:
        return flops.op_breakdown(run_step)
    except Exception as error:  # noqa: BLE001 - the profiler's failures are many and internal
        return {"error": f"{type(error).__name__}: {error}"}


def _speedups(variants: dict) -> None:
    """Step-time ratios against float32 without XLA, and of XLA against the same precision without it."""
    def median(name: str) -> float | None:
        return variants.get(name, {}).get("step_seconds", {}).get("median")

    for name, result in variants.items():
        if "step_seconds" not in result or name == "float32":
            continue
        result["speedup_vs_float32"] = median("float32") / result["step_seconds"]["median"]
        if name.endswith("_xla") and median(name.removesuffix("_xla")):
            result["speedup_vs_no_xla"] = median(name.removesuffix("_xla")) / result["step_seconds"]["median"]


def input_stall(cfg: Config, run) -> dict:
    """Step time through the training stage's tf.data path over step time on one in-memory batch."""
    arrays, source = data.training_set(cfg, run.tmp)
    images, masks = arrays["images"], arrays["binary"]
    precision = hardware.resolve_precision("auto")
    with precision_policy(precision):
        model = _compiled_unet(cfg.pipeline_net, images.shape[1])
        batch = next(iter(make_dataset(images, masks, cfg.pipeline_batch, None)))
        in_memory = step_seconds(model, tf.data.Dataset.from_tensors(batch).repeat(), cfg.warmup, cfg.reps)
        pipeline = make_dataset(images, masks, cfg.pipeline_batch, shuffle_seed=0).repeat()
        through_pipeline = step_seconds(model, pipeline, cfg.warmup, cfg.reps)
    keras.backend.clear_session()
    ratio = statistics.median(through_pipeline) / statistics.median(in_memory)
    return {"data": source, "rows": len(images), "image_size": images.shape[1],
            "model": f"{cfg.pipeline_net.label} (params.yaml's model), {precision} (train.mixed_precision: auto)",
            "batch": cfg.pipeline_batch, "method": STEP_METHOD,
            "pipeline_step_seconds": stats(through_pipeline), "in_memory_step_seconds": stats(in_memory),
            "ratio": ratio, "target": target("input stall (pipeline / in-memory step)", ratio, 1.05, at_most=True)}


def inference(cfg: Config, run) -> dict:
    """evaluation.predict throughput at training size, and at full resolution with the same weights."""
    precision = hardware.resolve_precision("auto")
    net = cfg.pipeline_net
    rng = np.random.default_rng(0)
    with precision_policy(precision):
        model = build_unet(cfg.image_size, BINARY, net.params)
        training_size = predict_rate(model, rng, cfg.inference_images, cfg.warmup, cfg.reps)
        result = {"model": f"{net.label} (params.yaml's model), {precision} (as trained with train.mixed_precision: auto)",
                  "training_size": training_size,
                  "full_resolution": full_resolution_rate(model, cfg, rng, training_size)}
    keras.backend.clear_session()
    return result


def at_size(model: keras.Model, height: int, width: int) -> keras.Model:
    """The same layers and weights on another input size: the U-Net is fully convolutional."""
    resized = keras.models.clone_model(model, input_tensors=keras.Input((height, width, 3)))
    resized.set_weights(model.get_weights())
    return resized


def full_resolution_rate(model: keras.Model, cfg: Config, rng: np.random.Generator, training_size: dict) -> dict:
    """``predict_rate`` of ``model`` at ``cfg.full_size``; skipped when predicted over budget from the
    ``training_size`` rate, or when it runs out of memory."""
    per_image = 1 / training_size["images_per_second"]["median"]
    height, width = cfg.full_size
    runs = 1 + cfg.slow_reps
    predicted = per_image * height * width / model.input_shape[1] / model.input_shape[2] * cfg.full_images * runs
    if predicted > cfg.full_seconds_budget:
        return {"skipped": f"predicted {predicted:.0f} s for {runs} runs of {cfg.full_images} images, over the "
                           f"{cfg.full_seconds_budget:.0f} s budget"}
    try:
        return predict_rate(at_size(model, height, width), rng, cfg.full_images, 1, cfg.slow_reps)
    except (tf.errors.ResourceExhaustedError, MemoryError) as error:
        return {"skipped": f"out of memory: {type(error).__name__}: {error}"}


def predict_rate(model: keras.Model, rng: np.random.Generator, count: int, warmup: int, reps: int) -> dict:
    images = rng.integers(0, 256, (count, *model.input_shape[1:]), np.uint8)
    seconds = repeat(lambda: predict_batches(model, images), warmup, reps)
    forward = flops.analytic_forward_flops(model)["total"]
    return {"size": list(images.shape[1:3]), "images": count, "seconds": stats(seconds),
            "images_per_second": rate(count, seconds), "gflops": rate(forward * count / 1e9, seconds)}


def determinism(cfg: Config, run) -> dict:
    """Training-step time of params.yaml's model with TensorFlow's op determinism off and on.

    Each variant runs in a fresh process: once enabled, determinism cannot be switched off.
    """
    precision = hardware.resolve_precision("auto")
    spawn = multiprocessing.get_context("spawn")
    seconds = {}
    for enabled in (False, True):
        with spawn.Pool(1) as pool:
            seconds[enabled] = pool.apply(_steps_with_determinism, (cfg, precision, enabled))
    ratio = statistics.median(seconds[True]) / statistics.median(seconds[False])
    return {"model": f"{cfg.pipeline_net.label} (params.yaml's model), {precision}", "image_size": cfg.image_size,
            "batch": cfg.pipeline_batch, "method": STEP_METHOD,
            "step_seconds": {"nondeterministic": stats(seconds[False]), "deterministic": stats(seconds[True])},
            "cost": ratio - 1,
            "target": target("op determinism cost (deterministic / default step - 1)", ratio - 1, 0.10, at_most=True)}


def distributed(cfg: Config, run) -> dict:
    """Training throughput of params.yaml's model under train.distribute = mirrored, over 1 and 2 devices.

    The devices are GPUs where there are some, else logical CPU devices; each count trains in a
    fresh process, as logical devices are fixed when TensorFlow starts.
    """
    precision = hardware.resolve_precision("auto")
    gpus = len(tf.config.list_physical_devices("GPU"))
    spawn = multiprocessing.get_context("spawn")
    devices = {}
    for count in (1, 2):
        if gpus and count > gpus:
            devices[str(count)] = {"skipped": f"{gpus} GPU here"}
            continue
        with spawn.Pool(1) as pool:
            seconds = pool.apply(_mirrored_steps, (cfg, precision, count))
        devices[str(count)] = {"step_seconds": stats(seconds), "images_per_second": rate(cfg.pipeline_batch, seconds)}
    result = {"model": f"{cfg.pipeline_net.label} (params.yaml's model), {precision}", "image_size": cfg.image_size,
              "global_batch": cfg.pipeline_batch, "device": "GPU" if gpus else "logical CPU",
              "method": f"{STEP_METHOD}; each device count in a fresh process", "devices": devices,
              "note": "each device is a GPU" if gpus else (
                  "logical CPU devices share the same cores: 2 devices show the cost of splitting each batch "
                  "and summing the gradients, not a speed-up")}
    if all("step_seconds" in entry for entry in devices.values()):
        result["speedup_2_vs_1"] = devices["1"]["step_seconds"]["median"] / devices["2"]["step_seconds"]["median"]
    return result


def _mirrored_steps(cfg: Config, precision: str, count: int) -> list[float]:
    """Step seconds of params.yaml's model under MirroredStrategy over the first ``count`` GPUs or ``count``
    logical CPU devices, the global batch split across them."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[:count], "GPU")
    params = train_params().model_copy(update={"distribute": "mirrored", "cpu_devices": count,
                                               "batch_size": cfg.pipeline_batch})
    strategy = distribute.strategy(params)
    with precision_policy(precision), strategy.scope():
        model = build_unet(cfg.image_size, BINARY, cfg.pipeline_net.params)
        compile_unet(model, BINARY, params)
        return step_seconds(model, random_batch(cfg.pipeline_batch, cfg.image_size), cfg.warmup, cfg.reps)


def _steps_with_determinism(cfg: Config, precision: str, enabled: bool) -> list[float]:
    if enabled:
        tf.config.experimental.enable_op_determinism()
    with precision_policy(precision):
        model = _compiled_unet(cfg.pipeline_net, cfg.image_size)
        return step_seconds(model, random_batch(cfg.pipeline_batch, cfg.image_size), cfg.warmup, cfg.reps)
