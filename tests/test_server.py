"""A shared tracking server: queued experiments log runs, metrics, artifacts and models over HTTP only.

A real ``mlflow server`` (started as ``make server`` does: SQLite store, artifacts served
through it) on a free port, and a fresh tiny project whose two queued experiments (different
``train.lr``) run two at a time with ``MLFLOW_TRACKING_URI`` on the server. To stay short
each reproduces ``evaluate@binary`` and what it needs (train, evaluate, registration; the
shared fetch, prepare and augment are reproduced once before queueing, as the README says,
which keeps the workers off DVC's run-cache race); the whole pipeline on the project's own store is
tests/test_pipeline.py's. Everything is read back through the server's REST API, and the project holds no
local store.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from project import LESION_CLASSES, free_port, run, server_process, tiny_project

from benchmarks.queue import SHARED, error_lines
from retinaseg.evaluation import registry
from retinaseg.tracking import mlflow_runs

LEARNING_RATES = {"server-lr-1": "0.001", "server-lr-2": "0.003"}
START_TIMEOUT = 120  # seconds for the server to answer; 7-15 s on 2 shared cores
WAIT = 900  # seconds for the queue


@pytest.fixture
def tracking_server(tmp_path):
    """``mlflow server`` as ``make server`` starts it, in ``tmp_path/server``; yields (URL, its folder)."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder}/mlflow-server.db",
               "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with server_process(command, folder, env, f"{url}/health", START_TIMEOUT) as wait_until_ready:
        wait_until_ready()
        yield url, folder


def stage_env(uri):
    """The environment of the pipeline's commands: the venv first, the server as the store."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": uri}


def run_queue(repo, uri, log):
    """`dvc queue start -j 2` with the server as the store, then poll until both experiments end."""
    with log.open("w") as out:
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=stage_env(uri), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
    assert started.returncode == 0, log.read_text()
    deadline, statuses = time.monotonic() + WAIT, {}
    while time.monotonic() < deadline:
        time.sleep(5)
        rows = [line.split() for line in run(["dvc", "queue", "status"], repo).stdout.splitlines()]
        statuses = {words[1]: words[-1] for words in rows if len(words) >= 3 and words[1] in LEARNING_RATES}
        if len(statuses) == len(LEARNING_RATES) and all(s in ("Success", "Failed") for s in statuses.values()):
            break
    return statuses


@pytest.mark.slow
def test_queued_experiments_log_everything_through_the_server(tracking_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri, server_folder = tracking_server
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    repo = tiny_project(tmp_path / "project")
    run(["dvc", "repro", SHARED], repo)
    for name, lr in LEARNING_RATES.items():
        run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "--name", name, "evaluate@binary"], repo)
    started = time.monotonic()
    try:
        statuses = run_queue(repo, uri, tmp_path / "queue-start.log")
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)  # the idle workers would linger for a minute
    seconds = time.monotonic() - started
    if statuses != dict.fromkeys(LEARNING_RATES, "Success"):
        pytest.fail(f"queue ended as {statuses} after {seconds:.0f} s; errors:\n" + "\n".join(
            f"{name}: {line}" for name in LEARNING_RATES
            for line in error_lines(run(["dvc", "queue", "logs", name], repo, check=False).stdout)))
    print(f"\n{len(LEARNING_RATES)} queued experiments, 2 at a time, logging to a server: {seconds:.0f} s")

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(mlflow_runs.EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/"), "proxied by the server, not a client path"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    epochs = yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"]
    for name, lr in LEARNING_RATES.items():
        ours = {r.info.run_name: r for r in runs if r.data.tags.get("dvc_exp_name") == name}
        assert set(ours) == {f"binary@{name}"}, (name, sorted(ours))
        for mlflow_run in ours.values():
            check_run(client, mlflow_run, lr, epochs, tmp_path)
    assert len(runs) == len(LEARNING_RATES)
    check_registry(client, runs)
    assert any((server_folder / "artifacts").rglob("eval.json")), "artifacts are stored by the server"
    local = [path for pattern in ("mlflow.db*", "mlruns", "mlartifacts") for path in repo.rglob(pattern)]
    assert local == [], "the project must hold no store of its own"


def check_run(client, mlflow_run, lr, epochs, tmp_path):
    """Params, per-epoch and test metrics, and eval.json downloaded through the server, agreeing."""
    run_id = mlflow_run.info.run_id
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["train.lr"] == lr
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(epochs))
    folder = tmp_path / "downloads" / run_id
    folder.mkdir(parents=True)
    evaluation = json.loads(Path(client.download_artifacts(run_id, "evaluation/eval.json", str(folder))).read_text())
    assert evaluation["n_images"] == 3
    assert mlflow_run.data.metrics["test_macro_f1"] == pytest.approx(evaluation["macro"]["f1"])


def check_registry(client, runs):
    """Both runs registered in retinaseg-binary; champion on the better mean core Dice, recomputed from the runs."""
    name = registry.model_name("binary")
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    scores = {r.info.run_id: registry.champion_score(r.data.metrics, LESION_CLASSES["binary"]) for r in runs}
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert scores[champion.run_id] == max(score for score in scores.values() if score is not None)
    assert client.get_model_version_download_uri(name, champion.version).startswith("mlflow-artifacts:/")
