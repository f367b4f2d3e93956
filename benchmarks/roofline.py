"""Section roofline: params.yaml's model against what this machine can do, all measured in one run.

A kernel can go no faster than its arithmetic at the compute peak, nor than its bytes at the
memory bandwidth: attainable FLOP/s = min(peak, bandwidth x arithmetic intensity), where the
intensity is FLOPs per byte moved. In images per second that is
min(peak / FLOPs per image, bandwidth / bytes per image), and whichever term is smaller binds.
The peak is the matmul peak of the ``peak`` section at the step's precision, the bandwidth a
triad (``bandwidth``), the FLOPs the analytic count of the convolutions (``flops``), the bytes
the analytic count of ``traffic``, cross-checked by the buffers a profiled step allocates.
Beside the bare step: the epoch as ``train_task`` runs it (``pipeline_fit``), and prediction as
evaluation runs it (``predict_batches``), at the training size and with the same weights at full
resolution.
"""

from __future__ import annotations

import inspect
import os

import keras
import numpy as np

from benchmarks import bandwidth, compute, flops, pipeline_fit, traffic
from benchmarks.config import BINARY, Config
from benchmarks.measure import rate, stats
from retinaseg.core import params
from retinaseg.core.params import ModelParams, TrainParams
from retinaseg.model.trained import predict_batches
from retinaseg.model.unet import build_unet
from retinaseg.training import hardware
from retinaseg.training.fit import compile_unet

#: Forward, input gradients, weight gradients: each about the forward pass's multiply-adds.
TRAIN_FLOPS_PER_FORWARD = 3
PREDICT_BATCH = inspect.signature(predict_batches).parameters["batch_size"].default


def pipeline_settings(cfg: Config) -> tuple[ModelParams, TrainParams, int]:
    """params.yaml's model and train blocks and image size; ``--tiny`` shrinks the net, the image and the batch."""
    everything = params.load()
    model, train, image_size = everything.model, everything.train, everything.prepare.image_size
    if cfg.tiny:
        net = cfg.pipeline_net
        model = model.model_copy(update={"depth": net.depth, "base_filters": net.base_filters})
        train = train.model_copy(update={"batch_size": cfg.pipeline_batch})
        image_size = cfg.image_size
    return model, train, image_size


def bound(flops_per_image: float, bytes_per_image: float, peak_gflops: float, bandwidth_gbs: float,
          images_per_second: float) -> dict:
    """The roofline of one workload: its bound in images/s, which term binds, and the fraction reached."""
    compute_bound = peak_gflops * 1e9 / flops_per_image
    memory_bound = bandwidth_gbs * 1e9 / bytes_per_image
    limit = min(compute_bound, memory_bound)
    return {"arithmetic_intensity": flops_per_image / bytes_per_image, "ridge_point": peak_gflops / bandwidth_gbs,
            "compute_bound_images_per_second": compute_bound, "memory_bound_images_per_second": memory_bound,
            "bound_images_per_second": limit, "binds": "compute" if compute_bound <= memory_bound else "memory",
            "images_per_second": images_per_second, "fraction_of_bound": images_per_second / limit}


def roofline(cfg: Config, run) -> dict:
    """Training step, pipeline epoch and prediction of params.yaml's model, each against the roofline."""
    model_params, train_params, image_size = pipeline_settings(cfg)
    precision = hardware.resolve_precision(train_params.mixed_precision)
    peaks = {name: run.results["peak"].get(name, {}).get("gflops", {}).get("median")
             for name in ("float32", "bfloat16")}
    peak = {"precision": precision if peaks.get(precision) else "float32"}
    peak["gflops"] = peaks[peak["precision"]]
    threads = train_params.threads or len(os.sched_getaffinity(0))
    memory = bandwidth.triad(cfg, threads)
    ceilings = {"peak": peak, "bandwidth_gbs": memory["gbs"]["median"]}
    with compute.precision_policy(precision):
        model = build_unet(image_size, BINARY, model_params)
        compile_unet(model, BINARY, train_params)
        step = _train_step(model, train_params.batch_size, cfg, peaks, ceilings)
        inference = _inference(build_unet(image_size, BINARY, model_params), cfg, ceilings)
    keras.backend.clear_session()
    epoch = pipeline_fit.epoch_timings(cfg, run.tmp / "roofline_fit", model_params, train_params, image_size)
    epoch["overheads_seconds_per_epoch"] = _overheads(epoch, step["step_seconds"]["median"])
    epoch["fraction_of_bare_step"] = (epoch["images_per_second"]["median"]
                                      / step["images_per_second"]["median"])
    net = f"d{model_params.depth}/{model_params.base_filters}"
    return {"model": f"{net} at {image_size} px, batch {train_params.batch_size}, {precision} "
                     f"(train.mixed_precision: {train_params.mixed_precision}), loss {train_params.loss}"
                     f"{' (--tiny: net, image and batch shrunk)' if cfg.tiny else ''}",
            "peak": peak, "bandwidth": memory, "train_step": step, "pipeline_epoch": epoch, "inference": inference}


def _train_step(model: keras.Model, batch: int, cfg: Config, peaks: dict, ceilings: dict) -> dict:
    """The bare training step: its speed, FLOPs and bytes, its roofline, and a profiled step's kernels and buffers."""
    image_size = model.input_shape[1]
    dataset = compute.random_batch(batch, image_size)
    seconds = compute.step_seconds(model, dataset, cfg.warmup, cfg.reps)
    space = flops.profile(lambda: compute.step_seconds(model, dataset, 0, 1), memory=True)
    forward = flops.analytic_forward_flops(model)["total"]
    per_image = TRAIN_FLOPS_PER_FORWARD * forward
    moved = traffic.step_bytes(model, batch, training=True)
    images = rate(batch, seconds)
    gflops = rate(per_image * batch / 1e9, seconds)
    allocated = traffic.traced_allocations(space)
    written = moved["written_per_step"]
    return {"method": compute.STEP_METHOD, "data": "one in-memory batch repeated", "batch": batch,
            "step_seconds": stats(seconds), "images_per_second": images, "gflops": gflops,
            "forward_flops_per_image": forward, "flops_per_image": per_image,
            **{f"fraction_of_{name}_peak": gflops["median"] / value for name, value in peaks.items() if value},
            "bytes": moved,
            "roofline": bound(per_image, moved["per_image"], ceilings["peak"]["gflops"], ceilings["bandwidth_gbs"],
                              images["median"]),
            "allocated": {"bytes_per_step": allocated["bytes"], "allocations": allocated["allocations"],
                          "smallest_bytes": allocated["smallest_bytes"], "analytic_written_bytes_per_step": written,
                          "allocated_over_analytic_written": allocated["bytes"] / written,
                          "top_op_types": dict(list(allocated["by_op_type"].items())[:8]),
                          "note": "measured: bytes of the buffers one profiled step allocated (TF profiler memory "
                                  "events), i.e. what its kernels as run wrote to fresh memory, against what the "
                                  "analytic count has them write; outputs written in place, and allocations below "
                                  "the traced allocator's threshold, are not seen"},
            "kernel_time": flops.kernel_times(space)}


def _inference(model: keras.Model, cfg: Config, ceilings: dict) -> dict:
    """predict_batches at the training size and at full resolution, against the forward pass's roofline."""
    rng = np.random.default_rng(0)
    training_size = compute.predict_rate(model, rng, cfg.inference_images, cfg.warmup, cfg.reps)
    full = compute.full_resolution_rate(model, cfg, rng, training_size)
    result = {"method": f"retinaseg.model.trained.predict_batches (batches of {PREDICT_BATCH}) on uint8 images, "
                        "as evaluation predicts the test set; full resolution: the same weights at "
                        f"{cfg.full_size[0]}x{cfg.full_size[1]}",
              "training_size": {**training_size, **_predict_roofline(model, training_size, ceilings)}}
    if "skipped" in full:
        result["full_resolution"] = full
    else:
        full_size = compute.at_size(model, *cfg.full_size)
        result["full_resolution"] = {**full, **_predict_roofline(full_size, full, ceilings)}
    return result


def _predict_roofline(model: keras.Model, measured: dict, ceilings: dict) -> dict:
    """Forward-only FLOPs and bytes per image of a prediction, and its roofline."""
    forward = flops.analytic_forward_flops(model)["total"]
    moved = traffic.step_bytes(model, min(PREDICT_BATCH, measured["images"]), training=False)
    return {"flops_per_image": forward, "bytes": moved,
            "roofline": bound(forward, moved["per_image"], ceilings["peak"]["gflops"], ceilings["bandwidth_gbs"],
                              measured["images_per_second"]["median"])}


def _overheads(epoch: dict, bare_step: float) -> dict:
    """Seconds an epoch spends beyond its steps at the bare step's speed, by cause; they sum to the epoch's time."""
    steps = epoch["steps_per_epoch"]
    deterministic = epoch["bare_step_seconds"]["median"]
    parts = {key: value for key, value in epoch["epoch_seconds"].items() if key != "seconds"}
    return {"steps_at_bare_speed": steps * bare_step, "op_determinism": steps * (deterministic - bare_step),
            "step_inside_fit": parts.pop("steps") - steps * deterministic, **parts}
