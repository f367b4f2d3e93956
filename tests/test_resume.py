"""Training progress: one unit per epoch, damaged units skipped, one training per model; a training killed with
SIGKILL, killed inside a save or stopped by SIGTERM resumes from its last consistent epoch and ends as if never stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from retinaseg.augment.warps import augment_training_set
from retinaseg.core.errors import PipelineError
from retinaseg.core.params import AugmentParams, PrepareParams
from retinaseg.core.tasks import Task
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.prepare.sets import prepare_dataset
from retinaseg.training import resume

TASK = Task("binary", {"hemorrhages": ("hemorrhages",)})
#: Where a training under ``out`` writes its curve (``fit.Outputs.curve_path``).
CURVE = Path("metrics") / "train_curve.tsv"
MULTICLASS = Task("multiclass", {"red": ("hemorrhages", "redsmalldots"), "bright": ("hardexudates",)})
#: A child process trains with these settings, as the train stage runs (one line and an exit code when stopped).
#: Its mode: "kill:N" SIGKILLs itself after epoch N; "kill-in-save:N" SIGKILLs itself between two files of epoch
#: N's progress unit; "slow" sleeps after every batch from the second epoch on, to be stopped from outside.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import keras
    from retinaseg.core import stage
    from retinaseg.training import fit, resume
    from retinaseg.core.params import ModelParams, TrainParams
    from retinaseg.core.tasks import Task

    root, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    action, _, epoch = mode.partition(":")
    original = fit._callbacks

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if action == "kill" and index + 1 == int(epoch):
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_batch_end(self, batch, logs=None):
            if action == "slow" and self.model.optimizer.iterations.numpy() > 6:
                time.sleep(0.5)

    if action == "kill-in-save":
        copy = resume.shutil.copyfile
        def copy_then_die(source, target):
            if Path(target).parent.name.startswith(f".epoch-{int(epoch):04d}"):
                os.kill(os.getpid(), signal.SIGKILL)
            return copy(source, target)
        resume.shutil.copyfile = copy_then_die

    fit._callbacks = lambda *args: original(*args) + [Kill()]
    stage.run(lambda argv: fit.train_task(
        Task("binary", {"hemorrhages": ("hemorrhages",)}), prepared_dir=root / "prepared",
        augmented_dir=root / "augmented",
        outputs=fit.Outputs(out / "model", out / "metrics", out / "checkpoints"),
        model_params=ModelParams(depth=2, base_filters=4, dropout=0.5, batch_norm=True, upsampling="transpose"),
        train_params=TrainParams(target="confidence", loss="dice_bce", lr=0.01, epochs=3, batch_size=2, seed=0,
                                 val_fraction=0.25, mixed_precision="float32", jit_compile=False, threads=0),
        logged_params={"train.lr": 0.01}))
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


def child(arrays: Path, out: Path, mode: str = "") -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(arrays), str(out), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def train(arrays: Path, out: Path, mode: str = "") -> subprocess.CompletedProcess:
    process = child(arrays, out, mode)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(arrays, tmp_path_factory) -> Path:
    """The outputs of the run that nothing stopped, for the stopped ones to end equal to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    whole = train(arrays, out)
    assert whole.returncode == 0, whole.stderr[-2000:]
    return out


def resume_to_the_same_model(arrays: Path, out: Path, uninterrupted: Path, after: int) -> subprocess.CompletedProcess:
    """Rerun the training in ``out``: it resumes after epoch ``after`` and ends as the uninterrupted run."""
    again = train(arrays, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming after epoch {after}" in again.stdout
    assert_same_model(out, uninterrupted)
    return again


def assert_same_model(resumed: Path, uninterrupted: Path) -> None:
    run, expected = (json.loads((out / "model" / "run.json").read_text()) for out in (resumed, uninterrupted))
    assert run["best_epoch"] == expected["best_epoch"] and run["best_val_dice"] == expected["best_val_dice"]
    assert (resumed / CURVE).read_text() == (uninterrupted / CURVE).read_text()
    for got, want in zip(weights(resumed / "model"), weights(uninterrupted / "model"), strict=True):
        assert np.array_equal(got, want)


def weights(model_dir: Path) -> list[np.ndarray]:
    return keras.saving.load_model(model_dir / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_killed_training_resumes_in_the_same_run_and_ends_as_an_uninterrupted_one(arrays, tmp_path, uninterrupted):
    from mlflow import MlflowClient

    killed = tmp_path / "killed" / "run"
    first = train(arrays, killed, "kill:2")
    assert first.returncode == -9, "the child killed itself after epoch 2"
    state = json.loads((killed / "checkpoints" / "epoch-0002" / "state.json").read_text())
    assert state["epoch"] == 2 and not (killed / "model").exists() and not (killed / CURVE).exists()
    client = MlflowClient(f"sqlite:///{killed.parent}/mlflow.db")
    assert client.get_run(state["run_id"]).info.status == "RUNNING"

    second = train(arrays, killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming after epoch 2" in second.stdout
    run = {**json.loads((killed / "model" / "run.json").read_text()),
           **json.loads((killed / "metrics" / "mlflow_run.json").read_text())}
    assert run["run_id"] == state["run_id"] and run["epochs"] == 3
    assert client.get_run(run["run_id"]).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run["run_id"], "loss")] == [0, 1, 2]
    assert not (killed / "checkpoints").exists(), "progress is removed once the outputs are written"
    assert_same_model(killed, uninterrupted)


@pytest.mark.slow
def test_a_kill_inside_a_save_and_a_damaged_unit_resume_from_the_last_consistent_epoch(arrays, tmp_path,
                                                                                      uninterrupted):
    """Killed between two files of epoch 3's unit, then epoch 2's optimizer file cut short: epoch 1 is resumed."""
    out = tmp_path / "run"
    first = train(arrays, out, "kill-in-save:3")
    assert first.returncode == -9, first.stderr[-2000:]
    checkpoints = out / "checkpoints"
    assert [unit.name for unit in resume.Progress(checkpoints, "").units()] == ["epoch-0002", "epoch-0001"]
    assert list(checkpoints.glob(".epoch-0003.partial-*")), "the kill came in the middle of the unit"
    damaged = checkpoints / "epoch-0002" / resume.OPTIMIZER
    damaged.write_bytes(damaged.read_bytes()[:100])

    second = resume_to_the_same_model(arrays, out, uninterrupted, after=1)
    notes = [line for line in second.stdout.splitlines() if str(damaged) in line]
    assert notes == [f"train binary: {damaged} is truncated or from another epoch (its sha256 differs from "
                     "state.json's); resuming after epoch 1"], second.stdout


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_stops_within_seconds_and_resumes_to_the_same_model(arrays, tmp_path,
                                                                                    uninterrupted):
    from mlflow import MlflowClient

    out = tmp_path / "run"
    process = child(arrays, out, "slow")
    first_unit = out / "checkpoints" / "epoch-0001"
    deadline = time.monotonic() + 240
    while not first_unit.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2, whose batches take 0.5 s each
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert seconds < 10, f"took {seconds:.1f} s to stop"
    assert [line for line in stderr.splitlines() if "stopped" in line] == [
        "train binary: stopped by SIGTERM after epoch 1; dvc repro resumes"]
    assert [unit.name for unit in resume.Progress(out / "checkpoints", "").units()] == ["epoch-0001"]
    run_id = json.loads((first_unit / resume.STATE).read_text())["run_id"]
    stopped = MlflowClient(f"sqlite:///{out.parent}/mlflow.db").get_run(run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["stopped"] == "stopped by SIGTERM after epoch 1"
    assert not (out / "model").exists()

    resume_to_the_same_model(arrays, out, uninterrupted, after=1)


@pytest.mark.slow
def test_progress_of_other_inputs_is_discarded_and_its_run_ended_as_killed(arrays, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from retinaseg.training import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    arguments = tiny_training(arrays, tmp_path)
    callbacks = fit._callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the progress of epoch 1 is saved (the last callback before this)

    monkeypatch.setattr(fit, "_callbacks", lambda *args: callbacks(*args) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        fit.train_task(TASK, **arguments)
    monkeypatch.setattr(fit, "_callbacks", callbacks)
    run_file = tmp_path / "checkpoints" / "run.json"
    state = json.loads(run_file.read_text())
    assert json.loads((tmp_path / "checkpoints" / "epoch-0001" / "state.json").read_text())["epoch"] == 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.update_run(state["run_id"], status="RUNNING")  # as SIGKILL leaves it (an interrupt ends it itself)
    run_file.write_text(json.dumps({**state, "signature": "inputs that have changed since"}))
    summary = fit.train_task(TASK, **arguments)
    assert summary["run_id"] != state["run_id"] and summary["epochs"] == 2
    assert client.get_run(state["run_id"]).info.status == "KILLED"


def tiny_training(arrays: Path, folder: Path) -> dict:
    """train_task's arguments for a 2-epoch run on the tiny arrays, writing into ``folder``."""
    from retinaseg.core.params import ModelParams, TrainParams
    from retinaseg.training import fit

    return dict(
        prepared_dir=arrays / "prepared", augmented_dir=arrays / "augmented",
        outputs=fit.Outputs(folder / "model", folder / "metrics", folder / "checkpoints"),
        model_params=ModelParams(depth=2, base_filters=4, dropout=0.5, batch_norm=True, upsampling="transpose"),
        train_params=TrainParams(target="mask", loss="dice", lr=0.01, epochs=2, batch_size=2, seed=0,
                                 val_fraction=0.25, mixed_precision="float32", jit_compile=False, threads=0),
        logged_params={})


@pytest.mark.slow
def test_a_store_failing_after_training_keeps_the_training_for_the_rerun(arrays, tmp_path, monkeypatch):
    """The rerun finds every epoch done and only logs: the trained model is not thrown away."""
    from retinaseg.core.errors import PipelineError
    from retinaseg.training import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    arguments = tiny_training(arrays, tmp_path)
    log_results = fit._log_results

    def store_gone(*args, **kwargs):
        raise PipelineError("MLflow tracking server http://127.0.0.1:9 does not answer (connection refused)")

    monkeypatch.setattr(fit, "_log_results", store_gone)
    with pytest.raises(PipelineError, match="does not answer"):
        fit.train_task(TASK, **arguments)
    assert not (tmp_path / "model").exists()
    assert json.loads((tmp_path / "checkpoints" / "epoch-0002" / "state.json").read_text())["epoch"] == 2
    monkeypatch.setattr(fit, "_log_results", log_results)
    fits = []
    monkeypatch.setattr(keras.Model, "fit", lambda self, *args, **kwargs: fits.append(kwargs))
    summary = fit.train_task(TASK, **arguments)
    assert fits == [], "no epoch is trained again"
    assert summary["epochs"] == 2 and (tmp_path / "model" / "model.keras").exists()


@pytest.mark.slow
def test_a_transfer_interrupted_at_the_end_of_its_frozen_phase_resumes_to_the_same_model(arrays, tmp_path,
                                                                                          monkeypatch):
    """The second phase starts with a fresh optimizer whether or not the run was interrupted in between."""
    from retinaseg.training import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    source = tiny_training(arrays, tmp_path / "binary")
    fit.train_task(TASK, **source)

    def transfer(folder: Path) -> dict:
        arguments = tiny_training(arrays, folder)
        arguments["train_params"] = arguments["train_params"].model_copy(update={"epochs": 3})
        return fit.train_task(MULTICLASS, **arguments, variant="multiclass_transfer",
                                   init_from=source["outputs"], freeze_encoder_epochs=1)

    whole = transfer(tmp_path / "whole")
    callbacks = fit._callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # the frozen phase is over and its progress saved
                raise KeyboardInterrupt

    monkeypatch.setattr(fit, "_callbacks", lambda *args: callbacks(*args) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        transfer(tmp_path / "resumed")
    monkeypatch.setattr(fit, "_callbacks", callbacks)
    resumed = transfer(tmp_path / "resumed")
    assert resumed["epochs"] == whole["epochs"] == 3 and resumed["best_epoch"] == whole["best_epoch"]
    for got, expected in zip(weights(tmp_path / "resumed" / "model"), weights(tmp_path / "whole" / "model"),
                             strict=True):
        assert np.array_equal(got, expected)


UNIT_FILES = (resume.VARIABLES, resume.OPTIMIZER, resume.BEST_MODEL, resume.CURVE, resume.STATE)


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)  # the optimizer's moments exist and differ by seed
    return model


@pytest.fixture(scope="module")
def models():
    """The model of each epoch 1-3 of a run (distinct weights and optimizer moments)."""
    return {epoch: tiny_model(epoch) for epoch in (1, 2, 3)}


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, models):
    """A progress folder as a run leaves it after 3 epochs: a unit per epoch, the last two kept."""
    folder = tmp_path_factory.mktemp("template") / "checkpoints"
    progress = resume.Progress(folder, "inputs")
    progress.start("run-1")
    for epoch, model in models.items():
        model.save(progress.best_model)
        with progress.curve.open("a") as curve:
            curve.write(f"{epoch}\n")
        progress.save(epoch, "run-1", [{"loss": float(epoch)}] * epoch, model)
    return folder


@pytest.fixture
def folder(tmp_path, three_epochs):
    """A copy of the 3-epoch progress folder to damage."""
    return shutil.copytree(three_epochs, tmp_path / "checkpoints")


def test_each_epoch_is_one_unit_and_the_last_two_are_kept(folder):
    progress = resume.Progress(folder, "inputs")
    assert [unit.name for unit in progress.units()] == ["epoch-0003", "epoch-0002"]
    assert sorted(path.name for path in progress.units()[0].iterdir()) == sorted(UNIT_FILES)
    found = progress.load()
    assert found.state["epoch"] == 3 and found.damage is None and found.abandoned_runs == []


@pytest.mark.parametrize("name", UNIT_FILES)
@pytest.mark.parametrize("damage", ["truncated", "from the epoch before"])
def test_a_damaged_file_of_any_kind_is_named_and_the_epoch_before_resumed(folder, models, name, damage):
    newest = folder / "epoch-0003" / name
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.write_bytes((folder / "epoch-0002" / name).read_bytes())
    progress = resume.Progress(folder, "inputs")
    found = progress.load()
    assert found.state["epoch"] == 2 and found.abandoned_runs == []
    assert found.damage.startswith(f"{newest} ") and found.damage.endswith("; resuming after epoch 2")
    assert "\n" not in found.damage
    assert [unit.name for unit in progress.units()] == ["epoch-0002"], "the damaged unit is gone"
    model = tiny_model(7)
    progress.restore(model)
    for got, expected in zip(model.get_weights(), models[2].get_weights(), strict=True):
        assert np.array_equal(got, expected)
    assert progress.curve.read_text() == "1\n2\n"
    restored = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    restored.compile(optimizer="adam", loss="mse")
    progress.restore_optimizer(restored)
    for got, expected in zip(restored.optimizer.variables, models[2].optimizer.variables, strict=True):
        assert np.array_equal(got, expected)


def test_no_consistent_unit_starts_from_epoch_0_and_abandons_the_run(folder):
    for unit in ("epoch-0002", "epoch-0003"):
        (folder / unit / resume.OPTIMIZER).write_bytes(b"")
    found = resume.Progress(folder, "inputs").load()
    assert found.state is None and found.abandoned_runs == ["run-1"]
    assert found.damage.endswith("; starting from epoch 0") and not folder.exists()


def test_an_unreadable_run_file_starts_from_epoch_0_and_abandons_the_run_its_units_name(folder):
    (folder / resume.RUN).write_text('{"signa')
    found = resume.Progress(folder, "inputs").load()
    assert found.state is None and found.abandoned_runs == ["run-1"]
    assert found.damage == f"{folder / resume.RUN} is unreadable; starting from epoch 0"


def test_other_inputs_discard_the_folder_quietly(folder):
    found = resume.Progress(folder, "other inputs").load()
    assert (found.state, found.damage, found.abandoned_runs) == (None, None, ["run-1"]) and not folder.exists()


def test_a_save_interrupted_between_its_files_leaves_the_unit_before_whole(folder, models, monkeypatch):
    progress = resume.Progress(folder, "inputs")
    copies = []

    def copy_then_die(source, target):
        copies.append(target)
        raise KeyboardInterrupt  # as a kill between two files of the unit would

    monkeypatch.setattr(resume.shutil, "copyfile", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        progress.save(4, "run-1", [{"loss": 1.0}] * 4, models[1])
    assert copies, "the save was cut after it had written the variables"
    monkeypatch.undo()
    units = sorted(path.name for path in folder.iterdir() if path.name.startswith(("epoch-", ".epoch-")))
    assert units == ["epoch-0002", "epoch-0003"]
    assert resume.Progress(folder, "inputs").load().state["epoch"] == 3


def test_a_unit_that_a_kill_left_half_written_is_ignored(folder):
    partial = folder / ".epoch-0004.partial-abc"  # what atomic_path's temporary folder looks like after SIGKILL
    partial.mkdir()
    (partial / resume.VARIABLES).write_bytes(b"PK")
    assert resume.Progress(folder, "inputs").load().state["epoch"] == 3


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from retinaseg.training import resume
    with resume.exclusive(Path(sys.argv[1]), "model binary"):
        print("holding", flush=True)
        time.sleep(60)
""")


def test_a_second_training_of_a_model_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "checkpoints" / "binary"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(PipelineError) as refused:
            with resume.exclusive(folder, "model binary"):
                pass
        message = str(refused.value)
        assert f"model binary is already being trained by pid {holder.pid}" in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    with resume.exclusive(folder, "model binary"):  # a killed holder leaves nothing locked
        assert (tmp_path / "checkpoints" / "binary.lock").read_text() == f"pid {os.getpid()}"
    assert not (tmp_path / "checkpoints" / "binary.lock").exists(), "the lock file goes with its training"
