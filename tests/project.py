"""A tiny copy of the project in a temporary git repo, and the commands and servers tests run on it."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

PROJECT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"num_images": 8, "image_width": 150, "image_height": 116},
    "prepare": {"image_size": 32, "train_ids": "1-5"},
    "augment": {"copies": 1},
    "model": {"depth": 2, "base_filters": 4},
    "train": {"epochs": 2, "batch_size": 4, "val_fraction": 0.2},
    "transfer": {"freeze_encoder_epochs": 1},
    "evaluate": {"n_overlays": 1, "pr_thresholds": 11},
}
VARIANTS = ("binary", "multiclass", "multiclass_transfer")
LESION_CLASSES = {"binary": ["hemorrhages"], "multiclass": ["red", "bright"]}


def run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo, changes):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for block, values in changes.items():
        params[block].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output):
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def tiny_project(repo: Path) -> Path:
    """The project copied into a new git repo at ``repo``, with tiny params, committed, never reproduced."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    for folder in ("stages", "src", ".dvc"):
        shutil.copytree(PROJECT / folder, repo / folder, ignore=shutil.ignore_patterns("tmp", "cache", "__pycache__"))
    set_params(repo, TINY)
    run(["git", "init", "-q"], repo)
    commit(repo, "tiny")
    return repo


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(command, cwd, env, ready_url, timeout=120):
    """Run ``command`` in its own session until ``ready_url`` answers; always stop it and all it started.

    Its output goes to ``cwd/server.log``, quoted when it ends early or never answers.
    """
    log = Path(cwd) / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield lambda: wait_until_answers(ready_url, process, log, timeout)
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
                process.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def wait_until_answers(url, process, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server ended (exit {process.returncode}):\n{log.read_text()[-2000:]}"
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-2000:]}")
