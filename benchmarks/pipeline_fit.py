"""An epoch as the pipeline trains it: ``train_task`` on a small synthetic set, timed from inside.

``train_task`` is the train stage's own code path: tf.data from the ``.npy`` sets, its
callbacks (checkpoint, curve, MLflow, progress), validation, progress output, MLflow logging.
It runs in a fresh process, because it enables op determinism for the rest of its process
and logs to the MLflow store of the working directory: the child works in a scratch folder,
which gets a store of its own. A callback appended to the training's own callbacks marks
every step, the validation and the epoch-end callbacks; afterwards the same process times
bare steps of the same model on one in-memory batch, so that the step inside fit is compared
with a step under the same settings.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from pathlib import Path
from unittest import mock

import keras

from benchmarks.compute import random_batch, step_seconds
from benchmarks.config import AUGMENT, BINARY, Config, prepare_params
from benchmarks.measure import rate, stats
from retinaseg.augment.warps import augment_training_set
from retinaseg.core.params import ModelParams, TrainParams, flatten
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.model.unet import build_unet
from retinaseg.prepare.sets import prepare_dataset
from retinaseg.training import fit

METHOD = ("retinaseg.training.fit.train_task in a fresh process, in a scratch folder with a new MLflow store; "
          "a callback after the training's own marks each step (ended by reading its loss), validation "
          "(to on_test_end) and the end of each epoch, after the other callbacks' on_epoch_end; "
          "the first epoch traces and is reported apart; then bare steps of the same model on one in-memory "
          "batch in the same process (op determinism on, as train_task leaves it)")


def synthetic_sets(cfg: Config, folder: Path, image_size: int) -> str:
    """Prepared and augmented sets of ``cfg.fit_images`` synthetic images in ``folder``; what they are."""
    generate(folder / "raw", num_images=cfg.fit_images, size=cfg.synthetic_size, seed=0)
    train_ids = tuple(range(1, cfg.fit_images))
    prepare_dataset(folder / "raw", folder / "prepared", tasks=[BINARY], params=prepare_params(image_size, train_ids))
    copies = AUGMENT.model_copy(update={"copies": cfg.fit_copies})
    augment_training_set(folder / "prepared", folder / "augmented", copies)
    width, height = cfg.synthetic_size
    return (f"synthetic: {cfg.fit_images} images of {width}x{height} prepared at {image_size} px (the last for "
            f"test), {cfg.fit_copies} augmented copies of each training image")


class FitTimeline(keras.callbacks.Callback):
    """Wall-clock marks of a fit, per epoch: its start, each step, validation, and its end."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict] = []
        self.train_begin = self.train_end = 0.0

    def on_train_begin(self, logs=None) -> None:
        self.train_begin = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.epochs.append({"begin": time.perf_counter(), "steps": []})

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._step_begin = time.perf_counter()
        self.epochs[-1].setdefault("steps_begin", self._step_begin)

    def on_train_batch_end(self, batch, logs=None) -> None:
        float(logs["loss"])  # waits for the step
        now = time.perf_counter()
        self.epochs[-1]["steps"].append(now - self._step_begin)
        self.epochs[-1]["steps_end"] = now

    def on_test_end(self, logs=None) -> None:
        self.epochs[-1]["validation_end"] = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.epochs[-1]["end"] = time.perf_counter()

    def on_train_end(self, logs=None) -> None:
        self.train_end = time.perf_counter()


def epoch_timings(cfg: Config, folder: Path, model_params: ModelParams, train_params: TrainParams,
                  image_size: int) -> dict:
    """Train on synthetic sets in ``folder`` through the pipeline's code path in a child process; its timings."""
    source = synthetic_sets(cfg, folder, image_size)
    params = train_params.model_copy(update={"epochs": cfg.fit_epochs})
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        timed = pool.apply(_train_and_time, (str(folder), model_params, params, image_size, cfg.warmup, cfg.reps))
    return {"method": METHOD, "data": source, **summary(timed, params.batch_size)}


def _train_and_time(folder: str, model_params: ModelParams, train_params: TrainParams, image_size: int,
                    warmup: int, reps: int) -> dict:
    """In the child: ``train_task`` with a FitTimeline, then bare steps; the raw marks."""
    os.chdir(folder)  # MLflow's store and artifacts go to the project folder: the working directory
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    timeline = FitTimeline()
    callbacks = fit._callbacks
    outputs = fit.Outputs(Path("models/binary"), Path("metrics/binary"), Path("checkpoints/binary"))
    started = time.perf_counter()
    with mock.patch.object(fit, "_callbacks", lambda *args: [*callbacks(*args), timeline]):
        trained = fit.train_task(BINARY, prepared_dir=Path("prepared"), augmented_dir=Path("augmented"),
                                 outputs=outputs, model_params=model_params, train_params=train_params,
                                 logged_params=flatten({"model": model_params.model_dump(),
                                                        "train": train_params.model_dump()}))
    ended = time.perf_counter()
    rows = len(fit.load_training_data(BINARY, Path("prepared"), Path("augmented"), train_params).train_x)
    model = build_unet(image_size, BINARY, model_params)
    fit.compile_unet(model, BINARY, train_params)
    bare = step_seconds(model, random_batch(train_params.batch_size, image_size), warmup, reps)
    return {"task_seconds": ended - started, "setup_seconds": timeline.train_begin - started,
            "after_fit_seconds": ended - timeline.train_end, "fit_end": timeline.train_end,
            "epochs": timeline.epochs, "rows": rows, "validation_images": len(trained["val_ids"]),
            "mixed_precision": trained["mixed_precision"], "bare_step_seconds": bare}


def summary(timed: dict, batch: int) -> dict:
    """Images per second of the epochs after the first, where their time went, and the step inside fit
    against the bare step."""
    epochs = timed["epochs"]
    ends = [epoch["begin"] for epoch in epochs[1:]] + [timed["fit_end"]]
    parts = [_parts(epoch, end) for epoch, end in zip(epochs, ends)]
    steady = parts[1:]
    in_fit = [seconds for epoch in epochs[1:] for seconds in epoch["steps"]]
    return {"rows": timed["rows"], "validation_images": timed["validation_images"], "batch": batch,
            "steps_per_epoch": len(epochs[0]["steps"]), "epochs": len(epochs),
            "mixed_precision": timed["mixed_precision"],
            "images_per_second": stats([timed["rows"] / part["seconds"] for part in steady]),
            "epoch_seconds": {key: statistics.mean(part[key] for part in steady) for key in steady[0]},
            "epochs_seconds": parts,
            "step_in_fit_seconds": stats(in_fit), "bare_step_seconds": stats(timed["bare_step_seconds"]),
            "bare_step_images_per_second": rate(batch, timed["bare_step_seconds"]),
            "step_in_fit_over_bare": statistics.median(in_fit) / statistics.median(timed["bare_step_seconds"]),
            "setup_seconds": timed["setup_seconds"], "after_fit_seconds": timed["after_fit_seconds"],
            "train_task_seconds": timed["task_seconds"],
            "note": "epoch_seconds: means over the epochs after the first (the first traces; epochs_seconds lists "
                    "every epoch). Parts: epoch_start (epoch-begin hooks, the epoch's input iterator), steps, "
                    "between_steps (input waits and batch hooks), validation (from the last step to the end of "
                    "evaluation), epoch_end_callbacks (checkpoint, curve, MLflow, progress state), after_epoch_end "
                    "(progress output, the loop); setup: train_task until fit starts (loading the sets, the MLflow "
                    "store (new here), the run and its logging, building and compiling); after fit: saving and "
                    "logging the model"}


def _parts(epoch: dict, end: float) -> dict:
    """One epoch's wall time, from its start to the next epoch's (or fit's end), split where the marks fall."""
    steps, steps_end = sum(epoch["steps"]), epoch["steps_end"]
    validation_end = epoch.get("validation_end", steps_end)
    return {"seconds": end - epoch["begin"], "epoch_start": epoch["steps_begin"] - epoch["begin"], "steps": steps,
            "between_steps": steps_end - epoch["steps_begin"] - steps, "validation": validation_end - steps_end,
            "epoch_end_callbacks": epoch["end"] - validation_end, "after_epoch_end": end - epoch["end"]}
