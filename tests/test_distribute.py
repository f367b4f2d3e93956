"""train.distribute: mirrored over two logical CPU devices and multi_worker in two local processes train
as one device does, and only the chief writes.

Logical devices and collective operations are fixed when TensorFlow starts, so each strategy
trains in a fresh process; those processes run while this one trains the single-device
reference. The comparison uses a loss and a model whose arithmetic does not depend on how a
batch is split (binary cross-entropy, no batch normalisation, no dropout): the replicas then
compute the single device's step up to the order of the sums.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import one_line_error
from test_training import BINARY, MODEL, MULTICLASS, TRAIN, tiny_sets

from retinaseg.core.params import TrainParams
from retinaseg.model.unet import build_unet
from retinaseg.training import distribute

pytestmark = pytest.mark.slow

#: Batch-split-independent arithmetic, so that every strategy must give the single device's model.
SPLIT_FREE = {"model": MODEL.model_copy(update={"batch_norm": False, "dropout": 0.0}),
              "train": TRAIN.model_copy(update={"loss": "bce", "lr": 0.01, "epochs": 2, "batch_size": 4,
                                                "val_fraction": 0.4})}
#: Measured (2 cores, float32), mirrored and multi_worker against one device: the last epoch's variables
#: within 9.6e-07 and the optimizer's moments within 2.8e-06 of the largest value of their array, epoch
#: losses equal, validation losses within 1.2e-07. A resumed run whose optimizer was not restored is 0.87
#: away. The bounds leave a margin of 100.
STATE_TOLERANCE, LOSS_TOLERANCE = 3e-4, 1e-5
#: Runs train_task's arguments (JSON) in order, in this process or a fresh one. After every epoch the
#: progress (every variable, the optimizer's state) is copied to ``<out>_epoch<N>``; "interrupt_after"
#: stops a run after that epoch, as a killed run would, for the next run with the same "out" to resume.
RUNS = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path
    import keras
    from retinaseg.training import fit
    from retinaseg.core.params import ModelParams, TrainParams
    from retinaseg.core.tasks import Task

    class Snapshot(keras.callbacks.Callback):
        def __init__(self, out, after):
            super().__init__()
            self.out, self.after = out, after

        def on_epoch_end(self, epoch, logs=None):  # after the callbacks of train_task, so after SaveProgress
            shutil.copytree(self.out / "checkpoints", self.out.with_name(f"{self.out.name}_epoch{epoch + 1}"))
            if epoch + 1 == self.after:
                raise KeyboardInterrupt

    def train_runs(sets, runs):
        callbacks = fit._callbacks
        try:
            for run in runs:
                out = Path(run["out"])
                fit._callbacks = lambda *args: [*callbacks(*args), Snapshot(out, run.get("interrupt_after"))]
                try:
                    fit.train_task(
                        Task(run["task"], {name: tuple(kinds) for name, kinds in run["classes"].items()}),
                        prepared_dir=sets / "prepared", augmented_dir=sets / "augmented",
                        outputs=fit.Outputs(out / "model", out / "metrics", out / "checkpoints"),
                        model_params=ModelParams(**run["model"]), train_params=TrainParams(**run["train"]),
                        logged_params={}, variant=run.get("variant"),
                        init_from=fit.Outputs(Path(run["init_from"]) / "model", Path(run["init_from"]) / "metrics",
                                                   Path(run["init_from"]) / "checkpoints")
                        if run.get("init_from") else None,
                        freeze_encoder_epochs=run.get("freeze", 0))
                except KeyboardInterrupt:
                    print(f"interrupted {out.name} after epoch {run['interrupt_after']}")
        finally:
            fit._callbacks = callbacks
""")


def run_spec(out: Path, distribute_as: str, task=BINARY, **extra) -> dict:
    """One run: the split-free model and training under ``distribute_as``, writing into ``out``."""
    return {"out": str(out), "task": task.name, "classes": task.classes,
            "model": SPLIT_FREE["model"].model_dump(),
            "train": SPLIT_FREE["train"].model_dump() | {"distribute": distribute_as, "cpu_devices": 2}, **extra}


def start(sets: Path, folder: Path, runs: list[dict], store: Path, tf_config: str | None = None) -> subprocess.Popen:
    """A fresh process training ``runs`` into ``folder``, logging to the MLflow ``store``.

    The workers of multi_worker train on one thread each: they share the cores with the other
    processes, and mirrored, the longest, may use them all once those have finished.
    """
    if tf_config:
        runs = [run | {"train": run["train"] | {"threads": 1}} for run in runs]
    folder.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    code = RUNS + "\ntrain_runs(Path(sys.argv[1]), json.loads(sys.argv[2]))\n"
    return subprocess.Popen([sys.executable, "-c", code, str(sets), json.dumps(runs)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    return output


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def cluster(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every strategy's runs: their processes start together, and this one trains the single device meanwhile.

    mirrored: a binary run killed after its first epoch and resumed, then the transfer from it with
    one frozen epoch (without validation images: only its epochs are looked at). multi_worker: a binary run in two processes. None: the same binary run. The
    transfer and the single device stop after their last epoch: the epochs are what is compared here,
    their outputs and logging are those of the other runs (and of test_training). The runs log to one
    MLflow store, but the multi_worker worker is given a store of its own, which it must not create.
    """
    root = tmp_path_factory.mktemp("distribute")
    sets = tiny_sets(root / "sets", image_size=32, train_ids="1-5", copies=7)  # 24 training rows, 2 validation
    mirrored, store, ports = root / "mirrored", root / "mlflow.db", free_ports(2)
    transfer = run_spec(mirrored / "transfer", "mirrored", MULTICLASS, variant="multiclass_transfer",
                        init_from=str(mirrored / "binary"), freeze=1, interrupt_after=2)
    transfer["train"]["val_fraction"] = 0.0
    processes = {
        "mirrored": start(sets, mirrored, [run_spec(mirrored / "binary", "mirrored", interrupt_after=1),
                                           run_spec(mirrored / "binary", "mirrored"), transfer], store),
        "chief": start(sets, root / "chief", [run_spec(root / "chief" / "binary", "multi_worker")], store,
                       cluster(ports, 0)),
        "worker": start(sets, root / "worker", [run_spec(root / "worker" / "binary", "multi_worker")],
                        root / "worker" / "mlflow.db", cluster(ports, 1))}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
            runs = {}
            exec(RUNS, runs)
            runs["train_runs"](sets, [run_spec(root / "single" / "binary", "none", interrupt_after=2)])
        return root, {name: finished(process) for name, process in processes.items()}
    finally:  # a failure here, or a worker waiting for a chief that failed, leaves no process behind
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def saved_unit(run: Path, epoch: int) -> Path:
    """The progress unit of ``epoch`` in the copy of ``run``'s checkpoints taken after that epoch."""
    return run.with_name(f"{run.name}_epoch{epoch}") / f"epoch-{epoch:04d}"


def curve(run: Path, epoch: int) -> dict[str, np.ndarray]:
    """The epoch curve as ``run`` saved it after ``epoch``."""
    rows = [line.split("\t") for line in (saved_unit(run, epoch) / "train_curve.tsv").read_text().splitlines()]
    return {name: np.array([float(row[column]) for row in rows[1:]]) for column, name in enumerate(rows[0])}


def state(run: Path, epoch: int, kind: str = "variables") -> list[np.ndarray]:
    """The model's variables, or the optimizer's, as ``run`` saved them after ``epoch``."""
    with np.load(saved_unit(run, epoch) / f"{kind}.npz") as saved:
        return [saved[f"v{index}"] for index in range(len(saved.files))]


def assert_trains_as_one_device(run: Path, single: Path) -> None:
    losses = curve(run, 2)["loss"]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    np.testing.assert_allclose(losses, curve(single, 2)["loss"], rtol=LOSS_TOLERANCE)
    for kind in ("variables", "optimizer"):
        for got, expected in zip(state(run, 2, kind), state(single, 2, kind), strict=True):
            assert np.abs(got - expected).max() <= STATE_TOLERANCE * max(np.abs(expected).max(), 1e-30), kind


def placement(store: Path) -> list[tuple[str, str, str]]:
    """(variant, train.distribute, replicas) of every MLflow run in ``store``, sorted."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    return sorted((run.data.tags["variant"], run.data.params["train.distribute"], run.data.params["replicas"])
                  for run in runs)


def test_a_run_killed_and_resumed_under_mirrored_trains_as_one_device(trained):
    """Over two logical CPU devices, resumed after its first epoch: variables and the optimizer's
    moments are restored onto both replicas, and the second epoch goes on as on one device."""
    root, logs = trained
    assert "interrupted binary after epoch 1" in logs["mirrored"] and "resuming after epoch 1" in logs["mirrored"]
    assert_trains_as_one_device(root / "mirrored" / "binary", root / "single" / "binary")
    assert (root / "mirrored" / "binary" / "model" / "model.keras").is_file()


def test_multi_worker_trains_in_step_and_only_the_chief_writes(trained):
    root, logs = trained
    assert_trains_as_one_device(root / "chief" / "binary", root / "single" / "binary")
    assert (root / "chief" / "binary" / "model" / "model.keras").is_file()
    assert "worker done, 2 epochs in step with the chief" in logs["worker"]
    assert list((root / "worker").iterdir()) == [], "no model, curve, progress or MLflow store"


def test_each_run_logs_its_strategy_and_replicas_to_mlflow(trained):
    root, _ = trained
    assert placement(root / "mlflow.db") == [("binary", "mirrored", "2"), ("binary", "multi_worker", "2"),
                                             ("binary", "none", "1"), ("multiclass_transfer", "mirrored", "2")]


def test_the_transfer_keeps_its_encoder_frozen_then_trains_it_under_mirrored(trained):
    root, logs = trained
    mirrored = root / "mirrored"
    assert "interrupted transfer after epoch 2" in logs["mirrored"]
    source = keras.saving.load_model(mirrored / "binary" / "model" / "model.keras", compile=False)
    paths = [variable.path for variable in build_unet(32, MULTICLASS, SPLIT_FREE["model"]).variables]
    source = {variable.path: np.asarray(variable) for variable in source.variables}
    frozen, trained_all = (dict(zip(paths, state(mirrored / "transfer", epoch), strict=True)) for epoch in (1, 2))
    encoder, decoder = ([path for path in source if path.startswith(prefix)] for prefix in ("down", "up"))
    assert encoder and decoder
    for path in encoder:
        assert np.array_equal(frozen[path], source[path]), f"{path} changed while frozen"
        assert not np.array_equal(trained_all[path], frozen[path]), f"{path} was not trained after the frozen epoch"
    for path in decoder:
        assert not np.array_equal(frozen[path], source[path]), f"{path} did not train in the frozen epoch"


def test_multi_worker_starts_a_killed_run_afresh_and_ends_it(tmp_path, monkeypatch, capsys):
    """The other workers lack the chief's progress, so it cannot be resumed: its MLflow run ends as KILLED."""
    from mlflow import MlflowClient

    from retinaseg.tracking import mlflow_runs
    from retinaseg.training import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    experiment, client = mlflow_runs.setup(), MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    killed = client.create_run(experiment).info.run_id
    for data in (tmp_path / "manifest.json", tmp_path / "images.npy"):
        data.write_text("{}")
    folder, inputs = tmp_path / "checkpoints", ({}, "binary", None, tmp_path, tmp_path)
    progress, _ = fit._progress(folder, *inputs, resumable=True)
    progress.start(killed)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    progress.save(3, killed, [], model)
    assert fit._progress(folder, *inputs, resumable=True)[1]["epoch"] == 3, "resumed on one machine"
    assert fit._progress(folder, *inputs, resumable=False)[1] is None
    assert "the 3 epoch(s) a killed run left" in capsys.readouterr().out
    assert client.get_run(killed).info.status == "KILLED"


def test_a_batch_that_leaves_a_replica_without_an_image_is_refused():
    params = TrainParams(**{**TRAIN.model_dump(), "batch_size": 4, "distribute": "mirrored"})
    one_line_error(lambda: distribute.check_batches(params, 2, {"training rows": 9}),
                   "train.batch_size = 4 leaves a batch of 1 of the 9 training rows, fewer than the 2 replicas")
    one_line_error(lambda: distribute.check_batches(params, 5, {"validation images": 8}), "batch of 4")
    distribute.check_batches(params, 2, {"training rows": 10, "validation images": 0})


def test_logical_devices_cannot_change_once_tensorflow_has_started():
    import tensorflow as tf

    tf.constant(0)  # TensorFlow starts, if nothing in this process has started it yet
    started = len(tf.config.list_logical_devices("CPU"))
    one_line_error(lambda: distribute.logical_cpus(started + 1),
                   f"train.cpu_devices = {started + 1}: TensorFlow already started with {started} CPU device(s)",
                   "fresh process")
    assert len(distribute.logical_cpus(started)) == started, "the split it started with is accepted"


@pytest.mark.parametrize("environ, chief", [
    ({"TF_CONFIG": cluster([1, 2], 0)}, True),
    ({"TF_CONFIG": cluster([1, 2], 1)}, False),
    ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                               "task": {"type": "worker", "index": 0}})}, False),
    ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                               "task": {"type": "chief", "index": 0}})}, True),
])
def test_the_chief_is_worker_0_or_the_chief_task(environ, chief):
    assert distribute.is_chief("multi_worker", environ) is chief
    assert distribute.is_chief("mirrored", environ) and distribute.is_chief("none", {})


@pytest.mark.parametrize("text, fragments", [
    ("", ("needs the TF_CONFIG environment variable", "TF_CONFIG='{")),
    ("{cluster", ("TF_CONFIG = {cluster is not a cluster", "write it as TF_CONFIG=")),
    (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}), ("is not a cluster",)),
    (json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}), ("is not a cluster",)),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), ("is not a cluster",)),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}),
     ('task {"type": "worker", "index": 1} is not in its cluster', "task.index")),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}), ("not in its cluster",)),
])
def test_a_missing_or_unusable_tf_config_names_it_and_the_fix(text, fragments):
    one_line_error(lambda: distribute.is_chief("multi_worker", {"TF_CONFIG": text}), *fragments)
