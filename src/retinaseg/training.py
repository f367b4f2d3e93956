"""Train one task's U-Net from the augmented set, validating on held-out training images."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from retinaseg import hardware, losses, tracking
from retinaseg.atomic import atomic_path, write_json
from retinaseg.errors import PipelineError
from retinaseg.model import build_unet, is_encoder_layer, transfer_weights
from retinaseg.preprocess import load_set


#: Value of full confidence in each kind of stored target (``train.target``).
TARGET_SCALE = {"mask": 1.0, "confidence": 255.0}


def validation_ids(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Held-out training images for model selection; never augmented copies of them."""
    if fraction == 0:
        return np.empty(0, dtype=train_ids.dtype)
    count = min(len(train_ids) - 1, max(1, round(fraction * len(train_ids))))
    if count < 1:
        raise PipelineError(f"train.val_fraction = {fraction} leaves no training image "
                            f"(only {len(train_ids)} training ids); set it to 0 or add training ids")
    return np.sort(np.random.default_rng(seed).choice(train_ids, count, replace=False))


def make_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, shuffle_seed: int | None,
                 target_scale: float = 1.0):
    """tf.data pipeline: uint8 arrays in memory -> shuffled float32 batches, prefetched.

    Targets are divided by ``target_scale``: 1 for {0,1} masks, 255 for confidence planes.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return (dataset.batch(batch_size)
            .map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, tf.cast(y, tf.float32) / target_scale),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def train_task(task: str, *, prepared_dir: Path, augmented_dir: Path, model_dir: Path, curve_path: Path,
               model_params: dict[str, Any], train_params: dict[str, Any], logged_params: dict[str, Any],
               variant: str | None = None, init_dir: Path | None = None,
               freeze_encoder_epochs: int = 0) -> dict[str, Any]:
    """Train, keep the best epoch by validation Dice, log everything to MLflow.

    ``variant`` names the run (default: the task). With ``init_dir`` (a trained
    ``models/<task>``), the model starts from that model's weights wherever layer shapes
    match, and its encoder stays frozen for the first ``freeze_encoder_epochs`` of the
    same epoch budget. Writes ``model_dir/model.keras`` and ``model_dir/run.json`` (the
    MLflow run that evaluate continues), and the per-epoch curve at ``curve_path``, all
    atomically.
    """
    variant = variant or task
    import keras
    import mlflow

    precision = hardware.configure(train_params["mixed_precision"], train_params["threads"])
    keras.utils.set_random_seed(train_params["seed"])

    target = train_params["target"]
    augmented = load_set(augmented_dir, task, target=target)
    prepared = load_set(prepared_dir / "train", task, target=target)
    held_out = validation_ids(prepared["ids"], train_params["val_fraction"], train_params["seed"])
    train_rows = ~np.isin(augmented["ids"], held_out)
    val_rows = np.isin(prepared["ids"], held_out)
    train_x, train_y = augmented["images"][train_rows], augmented[task][train_rows]
    image_size, num_classes = train_y.shape[1], train_y.shape[-1]
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    class_names, crop_to_fundus = manifest["tasks"][task]["classes"], manifest["crop_to_fundus"]
    batch_size = train_params["batch_size"]
    scale = TARGET_SCALE[target]
    train_data = make_dataset(train_x, train_y, batch_size, shuffle_seed=train_params["seed"], target_scale=scale)
    val_data = make_dataset(prepared["images"][val_rows], prepared[task][val_rows], batch_size, None, scale)
    monitor = "val_dice" if len(held_out) else "dice"

    weights = losses.class_weights_from_masks(train_y / scale) if train_params["loss"].startswith("weighted") else None
    model = build_unet(image_size, num_classes, model_params["depth"], model_params["base_filters"],
                       model_params["dropout"], model_params["batch_norm"], model_params["upsampling"])
    source = _initialise(model, init_dir) if init_dir else None
    print(f"train {variant}: {model.name}, {model.count_params():,} parameters, {precision}, "
          f"{train_rows.sum()} training rows from {len(np.unique(augmented['ids'][train_rows]))} images, "
          f"{val_rows.sum()} validation images")

    def compile_model(train_encoder: bool) -> None:
        for layer in model.layers:
            if is_encoder_layer(layer):
                layer.trainable = train_encoder
        model.compile(optimizer=keras.optimizers.Adam(train_params["lr"], name="adam"),
                      loss=losses.build_loss(train_params["loss"], num_classes, weights),
                      metrics=[losses.dice_coefficient], jit_compile=train_params["jit_compile"])

    epochs = train_params["epochs"]
    frozen_epochs = freeze_encoder_epochs if source else 0
    tags = tracking.run_tags(task)
    if source:
        tags.update({"init_from_run_id": source["run_id"], "init_from_task": source["task"]})
    experiment_id = tracking.setup()
    with (mlflow.start_run(experiment_id=experiment_id, run_name=variant, tags=tags) as run,
          atomic_path(model_dir, is_dir=True) as out, atomic_path(curve_path) as curve):
        tracking.log_params({**logged_params, "mixed_precision_used": precision, "num_classes": num_classes,
                             "parameters": model.count_params(), "val_ids": held_out.tolist(),
                             "class_weights": weights, "variant": variant,
                             "init_from": source["task"] if source else "scratch",
                             "init_copied_layers": len(source["copied"]) if source else 0,
                             "init_new_layers": source["kept"] if source else []})
        checkpoint = out / "model.keras"
        # One set of callbacks across both phases, so the best epoch and the curve span all epochs.
        callbacks = [keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.ModelCheckpoint(checkpoint, monitor=monitor, mode="max", save_best_only=True),
                     keras.callbacks.CSVLogger(curve, separator="\t", append=True),
                     mlflow.tensorflow.MlflowCallback(log_every_epoch=True)]
        history: dict[str, list[float]] = {}
        started = time.perf_counter()
        for first, last, train_encoder in ((0, frozen_epochs, False), (frozen_epochs, epochs, True)):
            if first == last or (history and any(math.isnan(v) for v in history["loss"])):
                continue
            compile_model(train_encoder)
            phase = model.fit(train_data, validation_data=val_data if len(held_out) else None,
                              initial_epoch=first, epochs=last, verbose=2, callbacks=callbacks).history
            for key, values in phase.items():
                history.setdefault(key, []).extend(values)
        seconds = time.perf_counter() - started
        if any(math.isnan(value) for value in history["loss"]):
            raise PipelineError(f"train {variant}: the loss became NaN at epoch {len(history['loss'])}; "
                                f"lower train.lr (now {train_params['lr']}) or try another train.loss")
        best_epoch = int(np.argmax(history[monitor]))
        summary = {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": tracking.tracking_uri(),
                   "variant": variant, "task": task, "classes": class_names, "val_ids": held_out.tolist(),
                   "image_size": image_size, "crop_to_fundus": crop_to_fundus,
                   "init_from": source["task"] if source else "scratch",
                   "init_from_run_id": source["run_id"] if source else None,
                   "frozen_encoder_epochs": frozen_epochs, "mixed_precision": precision,
                   "parameters": model.count_params(), "train_seconds": round(seconds, 1),
                   "epochs": len(history["loss"]), "best_epoch": best_epoch + 1,
                   f"best_{monitor}": float(history[monitor][best_epoch])}
        mlflow.log_metrics({"train_seconds": seconds, "best_epoch": best_epoch + 1,
                            f"best_{monitor}": summary[f"best_{monitor}"]})
        best = keras.saving.load_model(checkpoint, compile=False)
        if frozen_epochs:  # a best epoch from the frozen phase was saved with the encoder frozen
            best.trainable = True
            best.save(checkpoint)
        sample = train_x[:1].astype(np.float32) / 255.0
        signature = mlflow.models.infer_signature(sample, best.predict(sample, verbose=0))
        mlflow.tensorflow.log_model(best, name="model", signature=signature)
        write_json(out / "run.json", summary)
        mlflow.log_artifact(str(out / "run.json"))
    print(f"train {variant}: best {monitor} {summary[f'best_{monitor}']:.3f} at epoch {best_epoch + 1}, "
          f"{seconds:.0f} s; MLflow run {run.info.run_id}")
    return summary


def _initialise(model, init_dir: Path) -> dict[str, Any]:
    """Load the source model's weights into ``model``; return its run and what was copied."""
    import keras

    model_file = init_dir / "model.keras"
    if not model_file.exists():
        raise PipelineError(f"{model_file}: missing; the transfer starts from it, run "
                            f"`dvc repro train@{init_dir.name}` first")
    source = json.loads((init_dir / "run.json").read_text())
    copied, kept = transfer_weights(keras.saving.load_model(model_file, compile=False), model)
    if not copied:
        raise PipelineError(f"{model_file}: no layer has the shape of the new model's; train both with the "
                            "same model.depth and model.base_filters")
    print(f"init from {init_dir}: {len(copied)} layers copied, new: {', '.join(kept)}")
    return {**source, "copied": copied, "kept": kept}
