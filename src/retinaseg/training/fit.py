"""Train stages: fit one task's U-Net on the augmented set, validating on held-out training images."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from retinaseg.core.arrays import TARGET_SCALE, load_set
from retinaseg.core.atomic import atomic_path, write_json
from retinaseg.core.errors import PipelineError, Stopped
from retinaseg.core.outputs import RunRecord
from retinaseg.core.params import ModelParams, TrainParams
from retinaseg.core.tasks import Task
from retinaseg.model import losses
from retinaseg.model.keras_file import make_reproducible
from retinaseg.model.trained import load_trained
from retinaseg.model.unet import build_unet, is_encoder_layer, transfer_weights
from retinaseg.tracking import mlflow_runs, summary
from retinaseg.training import distribute, hardware, resume
from retinaseg.training.resume import Progress, SaveProgress
from retinaseg.training.stopping import PoliteStop, StopRequested


@dataclass(frozen=True)
class TrainingData:
    """Augmented training rows and the held-out validation images of one task, as uint8 arrays."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_ids: np.ndarray
    train_images: int


@dataclass(frozen=True)
class Outputs:
    """Where a training run writes, and where it keeps its progress until it ends (outside the stage's outputs,
    which DVC deletes before a rerun).

    ``model_dir`` holds what depends only on the inputs (model.keras, run.json), so DVC gives the same
    model the same hash in every clone on one kind of CPU; ``metrics_dir`` what differs on every run: the
    epoch curve, the deciding figures (``summary``) and the MLflow run (``mlflow_runs.RUN_FILE``).
    """

    model_dir: Path
    metrics_dir: Path
    progress_dir: Path

    @classmethod
    def of(cls, variant: str) -> Outputs:
        """The pipeline's folders of one model: models/, metrics/train/ and checkpoints/ ``<variant>``."""
        return cls(Path("models") / variant, Path("metrics/train") / variant, Path("checkpoints") / variant)

    @property
    def curve_path(self) -> Path:
        return self.metrics_dir / "train_curve.tsv"

    @property
    def figures_path(self) -> Path:
        return self.metrics_dir / "train.json"

    @property
    def run_path(self) -> Path:
        return self.metrics_dir / mlflow_runs.RUN_FILE


def validation_ids(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Held-out training images for model selection; never augmented copies of them."""
    if fraction == 0:
        return np.empty(0, dtype=train_ids.dtype)
    count = min(len(train_ids) - 1, max(1, round(fraction * len(train_ids))))
    if count < 1:
        raise PipelineError(f"train.val_fraction = {fraction} leaves no training image "
                            f"(only {len(train_ids)} training ids); set it to 0 or add training ids")
    return np.sort(np.random.default_rng(seed).choice(train_ids, count, replace=False))


def load_training_data(task: Task, prepared_dir: Path, augmented_dir: Path, params: TrainParams) -> TrainingData:
    """The augmented rows of every training image except the validation ones, and those (unaugmented)."""
    augmented = load_set(augmented_dir, task.name, target=params.target)
    prepared = load_set(prepared_dir / "train", task.name, target=params.target)
    held_out = validation_ids(prepared["ids"], params.val_fraction, params.seed)
    train_rows = ~np.isin(augmented["ids"], held_out)
    val_rows = np.isin(prepared["ids"], held_out)
    return TrainingData(augmented["images"][train_rows], augmented[task.name][train_rows],
                        prepared["images"][val_rows], prepared[task.name][val_rows], held_out,
                        len(np.unique(augmented["ids"][train_rows])))


class EpochOrder(keras.callbacks.Callback):
    """Tells the training dataset which epoch starts, so that its order comes from (seed, epoch) alone.

    An uninterrupted run and one resumed at epoch k then see the same batches in every epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.assign(epoch)


def make_dataset(images: np.ndarray, targets: np.ndarray, batch_size: int, shuffle_seed: int | None,
                 target_scale: float = 1.0, epoch: tf.Variable | None = None):
    """tf.data pipeline: uint8 arrays in memory -> float32 batches, prefetched.

    With ``shuffle_seed``, every pass (Keras starts one per epoch) is a permutation drawn from
    the seed and the value of ``epoch`` at that moment (see ``EpochOrder``; 0 without it).
    Images keep their pixel values (the model scales them); targets are divided by
    ``target_scale``: 1 for {0,1} masks, 255 for confidence planes.
    """
    count = len(images)
    if shuffle_seed is None:
        rows = tf.data.Dataset.range(count)
    else:
        epoch = tf.constant(0, tf.int64) if epoch is None else epoch

        def permutation(_):
            seed = tf.stack([tf.constant(shuffle_seed, tf.int64), tf.convert_to_tensor(epoch)])
            return tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=seed))

        rows = tf.data.Dataset.range(1).flat_map(permutation).apply(tf.data.experimental.assert_cardinality(count))
    images, targets = tf.constant(images), tf.constant(targets)
    return (rows.batch(batch_size)
            .map(lambda batch: (tf.cast(tf.gather(images, batch), tf.float32),
                                tf.cast(tf.gather(targets, batch), tf.float32) / target_scale),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def compile_unet(model, task: Task, params: TrainParams, class_weights: list[float] | None = None,
                 train_encoder: bool = True) -> None:
    """Compile as every training run does (Adam, ``train.loss``, Dice metric), the encoder frozen or not."""
    for layer in model.layers:
        if is_encoder_layer(layer):
            layer.trainable = train_encoder
    loss = losses.build_loss(params.loss, task, class_weights)
    model.compile(optimizer=keras.optimizers.Adam(params.lr, name="adam"),
                  loss=distribute.replica_share(loss, model.distribute_strategy),
                  metrics=[losses.dice_coefficient], jit_compile=params.jit_compile)


def fit_phases(model, task: Task, params: TrainParams, data: TrainingData, callbacks: list,
               frozen_epochs: int, class_weights: list[float] | None, progress: Progress | None = None,
               done: int = 0) -> dict[str, list[float]]:
    """Fit ``params.epochs`` epochs: the first ``frozen_epochs`` with the encoder frozen, then all layers.

    One set of callbacks spans both phases, so the best epoch and the curve cover every epoch.
    ``done`` epochs of a killed run are skipped; within a phase the optimizer resumes from
    ``progress``, and each epoch's batches do not depend on the epochs before, so the run goes
    on as if never stopped.
    """
    scale = TARGET_SCALE[params.target]
    order = EpochOrder()
    train_data = make_dataset(data.train_x, data.train_y, params.batch_size, params.seed, scale, order.epoch)
    val_data = make_dataset(data.val_x, data.val_y, params.batch_size, None, scale) if len(data.val_ids) else None
    history: dict[str, list[float]] = {}
    for first, last, train_encoder in ((0, frozen_epochs, False), (frozen_epochs, params.epochs, True)):
        start = max(first, done)
        if start >= last:
            continue
        with model.distribute_strategy.scope():  # each phase's optimizer is made, and restored, on every replica
            compile_unet(model, task, params, class_weights, train_encoder)
            if start > first:
                progress.restore_optimizer(model)
        # The dataset shuffles itself, by (seed, epoch); fit's own shuffle does not apply to datasets.
        phase = model.fit(train_data, validation_data=val_data, initial_epoch=start, epochs=last, verbose=2,
                          shuffle=False, callbacks=[order, *callbacks]).history
        for key, values in phase.items():
            history.setdefault(key, []).extend(values)
        if not all(math.isfinite(value) for value in history["loss"]):
            if progress:
                progress.clear()
            raise PipelineError(f"train {task.name}: the loss became {history['loss'][-1]} at epoch "
                                f"{done + len(history['loss'])}; "
                                f"lower train.lr (now {params.lr}) or try another train.loss")
    return history


def train_task(task: Task, *, prepared_dir: Path, augmented_dir: Path, outputs: Outputs,
               model_params: ModelParams, train_params: TrainParams, logged_params: dict[str, Any],
               variant: str | None = None, init_from: Outputs | None = None,
               freeze_encoder_epochs: int = 0) -> dict[str, Any]:
    """Train, keep the best epoch by validation Dice, log everything to MLflow.

    ``variant`` names the run (default: the task). With ``init_from`` (another task's training), the
    model starts from its weights wherever layer shapes match, its encoder frozen for the first
    ``freeze_encoder_epochs`` of the same epoch budget. Writes ``outputs`` atomically (of multi_worker's processes, the chief
    alone); a run killed mid-way resumes from ``outputs.progress_dir`` in the same MLflow run.
    """
    chief = distribute.is_chief(train_params.distribute)  # a bad TF_CONFIG stops the stage before any work
    experiment_id = mlflow_runs.setup() if chief else ""  # first: a tracking server that is down stops the stage
    variant = variant or task.name
    data = load_training_data(task, prepared_dir, augmented_dir, train_params)
    weights = _class_weights(data, train_params)
    precision, strategy = _start_tensorflow(train_params, data)
    model, init, frozen_epochs = _model(task, data, model_params, strategy, init_from, freeze_encoder_epochs)
    if not chief:
        return _train_in_step(model, task, train_params, data, frozen_epochs, weights)
    import mlflow

    with resume.exclusive(outputs.progress_dir, f"model {variant}"), PoliteStop() as stop:
        progress, state = _progress(outputs.progress_dir, logged_params, variant, init, prepared_dir,
                                    augmented_dir, distribute.resumes(train_params.distribute))
        print(f"train {variant}: {model.name}, {model.count_params():,} parameters, {precision}, "
              f"{len(data.train_x)} training rows from {data.train_images} images, {len(data.val_x)} validation "
              "images" + (f"; resuming after epoch {state['epoch']}" if state else ""))
        monitor = "val_dice" if len(data.val_ids) else "dice"
        epochs = list(state["history"]) if state else []
        try:
            with (_start_run(experiment_id, variant, _tags(task, variant, init), state) as run,
                  atomic_path(outputs.model_dir, is_dir=True) as out, atomic_path(outputs.metrics_dir, is_dir=True) as
                  records):
                mlflow_runs.log_params({**logged_params, **_run_params(variant, task, model, data, weights, init),
                                     "mixed_precision_used": precision, "train.distribute": train_params.distribute,
                                     "replicas": distribute.replicas(strategy)})
                _log_datasets(data, prepared_dir, augmented_dir)
                _resume(model, progress, state, run.info.run_id)
                started = time.perf_counter()
                callbacks = _callbacks(progress, monitor, run.info.run_id, epochs, stop)
                fit_phases(model, task, train_params, data, callbacks, frozen_epochs, weights, progress,
                           done=state["epoch"] if state else 0)
                seconds = time.perf_counter() - started
                progress.hand_over(out / "model.keras", records / outputs.curve_path.name)
                described = {"variant": variant, **_described(task, data, model, prepared_dir, init, frozen_epochs,
                                                               precision), **_best_epoch(epochs, monitor)}
                _log_results(described, seconds, monitor, out / "model.keras", data.train_x[:1],
                             unfreeze=bool(frozen_epochs))
                make_reproducible(out / "model.keras")
                RunRecord(**described).write(out / "run.json")
                linked = _write_records(records, outputs, run.info.run_id, experiment_id, init,
                                        summary.training_figures(variant, monitor, described[f"best_{monitor}"], seconds))
                mlflow.log_artifact(str(out / "run.json"))
        except StopRequested as stopped:
            raise _stopped(variant, stopped, run.info.run_id, len(epochs)) from None
        progress.clear()
    print(f"train {variant}: best {monitor} {described[f'best_{monitor}']:.3f} at epoch {described['best_epoch']}, "
          f"{seconds:.0f} s; MLflow run {run.info.run_id}")
    return {**described, **linked, "train_seconds": round(seconds, 1)}


def _described(task: Task, data: TrainingData, model, prepared_dir: Path, init: dict[str, Any] | None,
               frozen_epochs: int, precision: str) -> dict[str, Any]:
    """What run.json says of the model and its data: classes, image size and crop (all predict needs), origin."""
    return {"task": task.name, "classes": task.plane_names, "val_ids": data.val_ids.tolist(),
            "image_size": data.train_x.shape[1], "crop_to_fundus": _crop_to_fundus(prepared_dir),
            "init_from": init["task"] if init else "scratch",
            "frozen_encoder_epochs": frozen_epochs, "mixed_precision": precision, "parameters": model.count_params()}


def _best_epoch(epochs: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """The epochs trained, the best one (counted from 1) and its ``monitor`` value."""
    best = int(np.argmax([logs[monitor] for logs in epochs]))
    return {"epochs": len(epochs), "best_epoch": best + 1, f"best_{monitor}": epochs[best][monitor]}


def _log_datasets(data: TrainingData, prepared_dir: Path, augmented_dir: Path) -> None:
    """The training rows and the validation images as the MLflow datasets of the run, named by their DVC folders."""
    mlflow_runs.log_dataset("training", augmented_dir.as_posix(), data.train_x, data.train_y)
    if len(data.val_x):
        mlflow_runs.log_dataset("validation", (prepared_dir / "train").as_posix(), data.val_x, data.val_y)


def _write_records(records: Path, outputs: Outputs, run_id: str, experiment_id: str, init: dict[str, Any] | None,
                   figures: dict[str, Any]) -> dict[str, Any]:
    """Beside the curve in ``records`` (``outputs.metrics_dir`` being written): the MLflow run and the figures."""
    linked = {"run_id": run_id, "experiment_id": experiment_id, "init_from_run_id": init["run_id"] if init else None}
    write_json(records / outputs.run_path.name, linked)
    write_json(records / outputs.figures_path.name, figures)
    return linked


def _stopped(variant: str, stopped: StopRequested, run_id: str, epochs_done: int) -> Stopped:
    """End the MLflow run of a training asked to stop as KILLED, saying why, and the one line the stage prints."""
    note = f"stopped by {stopped.reason} after epoch {epochs_done}"
    mlflow_runs.end_run(run_id, "KILLED", {"stopped": note})
    return Stopped(f"train {variant}: {note}; dvc repro resumes", stopped.exit_code)


def _start_tensorflow(params: TrainParams, data: TrainingData) -> tuple[str, tf.distribute.Strategy]:
    """Precision, threads and the strategy's devices, which TensorFlow fixes when it starts (the first tensor
    or model), so they come first; then the seeds. Returns the precision used and the strategy."""
    precision = hardware.configure(params.mixed_precision, params.threads)
    strategy = distribute.strategy(params)
    distribute.check_batches(params, distribute.replicas(strategy),
                             {"training rows": len(data.train_x), "validation images": len(data.val_x)})
    keras.utils.set_random_seed(params.seed)
    # Same inputs, same model, byte for byte; costs about 6 % a step here (`python -m benchmarks --only determinism`).
    tf.config.experimental.enable_op_determinism()
    return precision, strategy


def _model(task: Task, data: TrainingData, model_params: ModelParams, strategy: tf.distribute.Strategy,
           init_from: Outputs | None, freeze_encoder_epochs: int) -> tuple[keras.Model, dict[str, Any] | None, int]:
    """The U-Net, its variables made in the strategy's scope; the trained model it starts from, if any;
    and the epochs its encoder stays frozen."""
    with strategy.scope():
        model = build_unet(data.train_x.shape[1], task, model_params)
    distribute.enable_multi_worker_fit(model, strategy)
    init = _initialise(model, init_from) if init_from else None
    return model, init, freeze_encoder_epochs if init else 0


def _class_weights(data: TrainingData, params: TrainParams) -> list[float] | None:
    """Per-plane weights from the training targets, for the weighted losses only."""
    if not params.loss.startswith("weighted"):
        return None
    return losses.class_weights_from_masks(data.train_y / TARGET_SCALE[params.target])


def _run_params(variant: str, task: Task, model, data: TrainingData, weights: list[float] | None,
                init: dict[str, Any] | None) -> dict[str, Any]:
    """What the run decided beyond params.yaml: model size, validation images, weights, starting point."""
    return {"num_classes": task.num_planes, "parameters": model.count_params(), "val_ids": data.val_ids.tolist(),
            "class_weights": weights, "variant": variant, "init_from": init["task"] if init else "scratch",
            "init_copied_layers": len(init["copied"]) if init else 0,
            "init_new_layers": init["kept"] if init else []}


def _progress(folder: Path, logged_params: dict[str, Any], variant: str, init: dict[str, Any] | None,
              prepared_dir: Path, augmented_dir: Path, resumable: bool) -> tuple[Progress, dict[str, Any] | None]:
    """The resumable state of this run, if a killed run with the same inputs left one.

    The MLflow run of a state left by other inputs is ended as KILLED, not left running;
    so is that of a state that cannot be resumed (``resumable`` false), which is discarded.
    """
    progress = Progress(folder, resume.signature(
        logged_params, variant, init["run_id"] if init else None,
        resume.file_signature(prepared_dir / "manifest.json"), resume.file_signature(augmented_dir / "images.npy")))
    found = progress.load()
    if found.damage:
        print(f"train {variant}: {found.damage}")
    for run_id in found.abandoned_runs:
        mlflow_runs.end_run(run_id, "KILLED")
    state = found.state
    if state and not resumable:
        print(f"train {variant}: the {state['epoch']} epoch(s) a killed run left in {folder} cannot be resumed "
              "by train.distribute = multi_worker (the other workers do not have them); starting afresh")
        mlflow_runs.end_run(state["run_id"], "KILLED")
        return progress, None
    return progress, state


def _train_in_step(model, task: Task, params: TrainParams, data: TrainingData, frozen_epochs: int,
                   class_weights: list[float] | None) -> dict[str, Any]:
    """A multi_worker process other than the chief: every step of the chief's fit, writing nothing.

    Outputs, progress and MLflow are the chief's; stopping on NaN or infinity is decided
    from the same all-reduced loss in every process, so all of them stop together.
    """
    history = fit_phases(model, task, params, data, [keras.callbacks.TerminateOnNaN()], frozen_epochs, class_weights)
    print(f"train {task.name}: worker done, {len(history['loss'])} epochs in step with the chief")
    return {"task": task.name, "chief": False, "epochs": len(history["loss"]), "loss": history["loss"]}


def _start_run(experiment_id: str, variant: str, tags: dict[str, str], state: dict[str, Any] | None):
    """A new MLflow run, or the killed run being resumed."""
    import mlflow

    if state:
        return mlflow.start_run(run_id=state["run_id"])
    return mlflow.start_run(experiment_id=experiment_id, run_name=mlflow_runs.run_name(variant), tags=tags)


def _resume(model, progress: Progress, state: dict[str, Any] | None, run_id: str) -> None:
    """Restore the model as the saved epochs left it, or start an empty progress folder for ``run_id``."""
    if state:
        progress.restore(model)
    else:
        progress.start(run_id)


def _callbacks(progress: Progress, monitor: str, run_id: str, epochs: list[dict[str, float]],
               stop: PoliteStop) -> list:
    """Stop on NaN or infinity, keep the best epoch, write the curve, log every epoch to MLflow, save the
    progress a stopped or killed run resumes from (all of it in the progress folder until training ends),
    and stop between batches when asked to."""
    import mlflow

    best = max((logs[monitor] for logs in epochs), default=None)
    return [keras.callbacks.TerminateOnNaN(),
            keras.callbacks.ModelCheckpoint(progress.best_model, monitor=monitor, mode="max", save_best_only=True,
                                            initial_value_threshold=best),
            keras.callbacks.CSVLogger(progress.curve, separator="\t", append=True),
            mlflow.tensorflow.MlflowCallback(log_every_epoch=True),
            SaveProgress(progress, run_id, epochs), stop]


def _tags(task: Task, variant: str, init: dict[str, Any] | None) -> dict[str, str]:
    tags = {**mlflow_runs.run_tags(task.name), "variant": variant}
    if init:
        tags.update({"init_from_run_id": init["run_id"], "init_from_task": init["task"]})
    return tags


def _crop_to_fundus(prepared_dir: Path) -> bool:
    """Whether the prepared images were cropped to the fundus: predict must crop new images alike."""
    return json.loads((prepared_dir / "manifest.json").read_text())["crop_to_fundus"]


def _log_results(described: dict[str, Any], seconds: float, monitor: str, checkpoint: Path, sample: np.ndarray,
                 unfreeze: bool) -> None:
    """Log the run's final metrics and the best epoch's model with its signature, an input example and the
    settings predict needs (``metadata``) to MLflow.

    The model is made fully trainable on disk first: a best epoch from the frozen phase was
    saved with the encoder frozen.
    """
    import mlflow

    mlflow.log_metrics({"train_seconds": seconds, "best_epoch": described["best_epoch"],
                        f"best_{monitor}": described[f"best_{monitor}"]})

    best = keras.saving.load_model(checkpoint, compile=False)
    if unfreeze:
        best.trainable = True
        best.save(checkpoint)
    sample = sample.astype(np.float32)
    signature = mlflow.models.infer_signature(sample, best.predict(sample, verbose=0))
    # What predict needs beside the weights travels with the model, and so with every registered version of it.
    metadata = {key: described[key] for key in ("task", "classes", "image_size", "crop_to_fundus")}
    mlflow.tensorflow.log_model(best, name="model", signature=signature, input_example=sample, metadata=metadata,
                                pip_requirements=model_requirements())


def model_requirements() -> list[str]:
    """The packages a logged model loads with, pinned as installed here.

    Given, MLflow does not infer them by loading the model again in a subprocess, which took
    6-7 s per logged model on 2 cores.
    """
    from importlib import metadata

    pinned = []
    for name in ("tensorflow", "tensorflow-cpu", "keras", "numpy"):
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned


def _initialise(model, init_from: Outputs) -> dict[str, Any]:
    """Load the trained model's weights into ``model``; return its run and what was copied."""
    init_dir = init_from.model_dir
    if not (init_dir / "model.keras").is_file():
        raise PipelineError(f"{init_dir / 'model.keras'}: missing; the transfer starts from it, run "
                            f"`dvc repro train@{init_dir.name}` first")
    donor = load_trained(init_dir)
    copied, kept = transfer_weights(donor.model, model)
    if not copied:
        raise PipelineError(f"{init_dir}: no layer has the shape of the new model's; train both with the "
                            "same model.depth and model.base_filters")
    print(f"init from {init_dir}: {len(copied)} layers copied, new: {', '.join(kept)}")
    return {"run_id": mlflow_runs.read_run(init_from.run_path)["run_id"], "task": donor.require("task"),
            "copied": copied, "kept": kept}
