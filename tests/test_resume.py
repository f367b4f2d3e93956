"""A training process killed with SIGKILL resumes from its last finished epoch and ends as if never stopped."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from retinaseg.augment import augment_training_set
from retinaseg.params import AugmentParams, PrepareParams
from retinaseg.prepare import prepare_dataset
from retinaseg.synthetic import generate
from retinaseg.tasks import Task

TASK = Task("binary", {"hemorrhages": ("hemorrhages",)})
MULTICLASS = Task("multiclass", {"red": ("hemorrhages", "redsmalldots"), "bright": ("hardexudates",)})
#: A child process trains with these settings; KILL_AFTER > 0 makes it SIGKILL itself after that epoch.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import keras
    from retinaseg import training
    from retinaseg.params import ModelParams, TrainParams
    from retinaseg.tasks import Task

    root, out, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    original = training._callbacks

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    training._callbacks = lambda *args: original(*args) + [Kill()]
    training.train_task(
        Task("binary", {"hemorrhages": ("hemorrhages",)}), prepared_dir=root / "prepared",
        augmented_dir=root / "augmented",
        outputs=training.Outputs(out / "model", out / "curve.tsv", out / "checkpoints"),
        model_params=ModelParams(depth=2, base_filters=4, dropout=0.5, batch_norm=True, upsampling="transpose"),
        train_params=TrainParams(target="confidence", loss="dice_bce", lr=0.01, epochs=3, batch_size=2, seed=0,
                                 val_fraction=0.25, mixed_precision="float32", jit_compile=False, threads=0),
        logged_params={"train.lr": 0.01})
""")


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    generate(root / "raw", num_images=6, size=(80, 62), seed=1)
    prepare_dataset(root / "raw", root / "prepared", tasks=[TASK, MULTICLASS], workers=1,
                    params=PrepareParams(threshold=0.1, core_threshold=0.75, image_size=16, crop_to_fundus=True,
                                         train_ids="1-4"))
    augment_training_set(root / "prepared", root / "augmented",
                         AugmentParams(copies=2, seed=0, rotation_deg=10, shift=0.05, zoom=(0.9, 1.0), shear_deg=0,
                                       horizontal_flip=True, vertical_flip=False, brightness=0.0, contrast=0.0))
    return root


def train(arrays: Path, out: Path, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", CHILD, str(arrays), str(out), str(kill_after)],
                          capture_output=True, text=True, env=env, timeout=300)


def weights(model_dir: Path) -> list[np.ndarray]:
    return keras.saving.load_model(model_dir / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_killed_training_resumes_in_the_same_run_and_ends_as_an_uninterrupted_one(arrays, tmp_path):
    from mlflow import MlflowClient

    whole = train(arrays, tmp_path / "whole" / "run")
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = tmp_path / "killed" / "run"
    first = train(arrays, killed, kill_after=2)
    assert first.returncode == -9, "the child killed itself after epoch 2"
    state = json.loads((killed / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and not (killed / "model").exists() and not (killed / "curve.tsv").exists()
    client = MlflowClient(f"sqlite:///{killed.parent}/mlflow.db")
    assert client.get_run(state["run_id"]).info.status == "RUNNING"

    second = train(arrays, killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming after epoch 2" in second.stdout
    run = json.loads((killed / "model" / "run.json").read_text())
    assert run["run_id"] == state["run_id"] and run["epochs"] == 3
    assert client.get_run(run["run_id"]).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run["run_id"], "loss")] == [0, 1, 2]
    assert not (killed / "checkpoints").exists(), "progress is removed once the outputs are written"

    expected = json.loads((tmp_path / "whole" / "run" / "model" / "run.json").read_text())
    assert run["best_epoch"] == expected["best_epoch"] and run["best_val_dice"] == expected["best_val_dice"]
    assert (killed / "curve.tsv").read_text() == (tmp_path / "whole" / "run" / "curve.tsv").read_text()
    for resumed, uninterrupted in zip(weights(killed / "model"), weights(tmp_path / "whole" / "run" / "model"),
                                      strict=True):
        assert np.array_equal(resumed, uninterrupted)


@pytest.mark.slow
def test_progress_of_other_inputs_is_discarded_and_its_run_ended_as_killed(arrays, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from retinaseg import training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    arguments = tiny_training(arrays, tmp_path)
    callbacks = training._callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the progress of epoch 1 is saved (the last callback before this)

    monkeypatch.setattr(training, "_callbacks", lambda *args: callbacks(*args) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        training.train_task(TASK, **arguments)
    monkeypatch.setattr(training, "_callbacks", callbacks)
    state_file = tmp_path / "checkpoints" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["epoch"] == 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.update_run(state["run_id"], status="RUNNING")  # as SIGKILL leaves it (an interrupt ends it itself)
    state_file.write_text(json.dumps({**state, "signature": "inputs that have changed since"}))
    summary = training.train_task(TASK, **arguments)
    assert summary["run_id"] != state["run_id"] and summary["epochs"] == 2
    assert client.get_run(state["run_id"]).info.status == "KILLED"


def tiny_training(arrays: Path, folder: Path) -> dict:
    """train_task's arguments for a 2-epoch run on the tiny arrays, writing into ``folder``."""
    from retinaseg import training
    from retinaseg.params import ModelParams, TrainParams

    return dict(
        prepared_dir=arrays / "prepared", augmented_dir=arrays / "augmented",
        outputs=training.Outputs(folder / "model", folder / "curve.tsv", folder / "checkpoints"),
        model_params=ModelParams(depth=2, base_filters=4, dropout=0.5, batch_norm=True, upsampling="transpose"),
        train_params=TrainParams(target="mask", loss="dice", lr=0.01, epochs=2, batch_size=2, seed=0,
                                 val_fraction=0.25, mixed_precision="float32", jit_compile=False, threads=0),
        logged_params={})


@pytest.mark.slow
def test_a_store_failing_after_training_keeps_the_training_for_the_rerun(arrays, tmp_path, monkeypatch):
    """The rerun finds every epoch done and only logs: the trained model is not thrown away."""
    from retinaseg import training
    from retinaseg.errors import PipelineError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    arguments = tiny_training(arrays, tmp_path)
    log_results = training._log_results

    def store_gone(*args, **kwargs):
        raise PipelineError("MLflow tracking server http://127.0.0.1:9 does not answer (connection refused)")

    monkeypatch.setattr(training, "_log_results", store_gone)
    with pytest.raises(PipelineError, match="does not answer"):
        training.train_task(TASK, **arguments)
    assert not (tmp_path / "model").exists() and json.loads((tmp_path / "checkpoints" / "state.json").read_text())[
        "epoch"] == 2
    monkeypatch.setattr(training, "_log_results", log_results)
    fits = []
    monkeypatch.setattr(keras.Model, "fit", lambda self, *args, **kwargs: fits.append(kwargs))
    summary = training.train_task(TASK, **arguments)
    assert fits == [], "no epoch is trained again"
    assert summary["epochs"] == 2 and (tmp_path / "model" / "model.keras").exists()


@pytest.mark.slow
def test_a_transfer_interrupted_at_the_end_of_its_frozen_phase_resumes_to_the_same_model(arrays, tmp_path,
                                                                                          monkeypatch):
    """The second phase starts with a fresh optimizer whether or not the run was interrupted in between."""
    from retinaseg import training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    source = tiny_training(arrays, tmp_path / "binary")
    training.train_task(TASK, **source)

    def transfer(folder: Path) -> dict:
        arguments = tiny_training(arrays, folder)
        arguments["train_params"] = arguments["train_params"].model_copy(update={"epochs": 3})
        return training.train_task(MULTICLASS, **arguments, variant="multiclass_transfer",
                                   init_dir=tmp_path / "binary" / "model", freeze_encoder_epochs=1)

    whole = transfer(tmp_path / "whole")
    callbacks = training._callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # the frozen phase is over and its progress saved
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "_callbacks", lambda *args: callbacks(*args) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        transfer(tmp_path / "resumed")
    monkeypatch.setattr(training, "_callbacks", callbacks)
    resumed = transfer(tmp_path / "resumed")
    assert resumed["epochs"] == whole["epochs"] == 3 and resumed["best_epoch"] == whole["best_epoch"]
    for got, expected in zip(weights(tmp_path / "resumed" / "model"), weights(tmp_path / "whole" / "model"),
                             strict=True):
        assert np.array_equal(got, expected)
