"""A polite stop: a signal, or the end of the parent process, becomes a stop at the next batch."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from project import run, set_params, tiny_project

from retinaseg.training import resume, starters, stopping

#: Epochs of the tiny project's training: enough that it is still training when its dvc repro is stopped.
EPOCHS = 60


def test_a_signal_becomes_a_stop_at_the_next_batch(monkeypatch):
    with stopping.PoliteStop() as stop:
        stop.on_train_batch_end(0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        with pytest.raises(stopping.StopRequested) as stopped:
            stop.on_train_batch_end(1)
    assert (stopped.value.reason, stopped.value.exit_code) == ("SIGTERM", 143)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler before is back"


TWICE = textwrap.dedent("""
    import os, signal, sys, time
    from retinaseg.training import stopping
    with stopping.PoliteStop():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print("first: asked to stop", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    print("second: ignored")
""")


def test_a_second_signal_ends_the_process_at_once():
    twice = subprocess.run([sys.executable, "-c", TWICE], capture_output=True, text=True, timeout=60)
    assert twice.returncode == -signal.SIGTERM and twice.stdout.split("\n")[0] == "first: asked to stop"
    assert "ignored" not in twice.stdout


def test_the_end_of_the_parent_becomes_a_stop(monkeypatch):
    monkeypatch.setattr(stopping, "POLL_SECONDS", 0.05)
    parent = os.getppid()
    monkeypatch.setattr(starters, "watched", lambda: [(os.getpid(), parent + 1)])  # as if reparented
    with stopping.PoliteStop() as stop:
        time.sleep(0.3)
        with pytest.raises(stopping.StopRequested, match=f"the end of its parent process \\(pid {parent + 1}\\)"):
            stop.on_test_batch_end(0)


@pytest.mark.slow
def test_a_training_whose_dvc_repro_is_stopped_stops_too_and_the_next_repro_resumes(tmp_path):
    """SIGTERM to `dvc repro` ends DVC at once, without passing it on: its training sees its parent go and stops."""
    from mlflow import MlflowClient

    repo = tiny_project(tmp_path / "project")
    set_params(repo, {"train": {"epochs": EPOCHS}})
    run(["dvc", "repro", "augment"], repo)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "repro.log"
    with log.open("w") as out:
        dvc = subprocess.Popen(["dvc", "repro", "train@binary"], cwd=repo, env=env, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    checkpoints, lock = repo / "checkpoints" / "binary", repo / "checkpoints" / "binary.lock"
    deadline = time.monotonic() + 300
    while not (checkpoints / "epoch-0001").exists() and dvc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    training = int(lock.read_text().split()[1])
    dvc.send_signal(signal.SIGTERM)
    assert dvc.wait(30) != 0
    sent = time.monotonic()
    while alive(training) and time.monotonic() - sent < 30:
        time.sleep(0.1)
    assert not alive(training), f"the training (pid {training}) still runs 30 s after its dvc repro ended"
    stopped = [line for line in log.read_text().splitlines() if "stopped by" in line]
    assert len(stopped) == 1 and stopped[0].startswith("train binary: stopped by the end of its parent process"), \
        log.read_text()[-3000:]
    assert stopped[0].endswith("; dvc repro resumes")
    saved = resume.Progress(checkpoints, "").units()[0]
    state = json.loads((saved / resume.STATE).read_text())
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    assert client.get_run(state["run_id"]).info.status == "KILLED"

    again = run(["dvc", "repro", "train@binary"], repo)
    assert f"resuming after epoch {state['epoch']}" in again.stdout
    assert client.get_run(state["run_id"]).info.status == "FINISHED"


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
