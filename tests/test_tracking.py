import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from retinaseg.core.errors import PipelineError
from retinaseg.tracking import mlflow_runs


def test_project_root_sees_through_dvc_temp_experiments(tmp_path):
    assert mlflow_runs.project_root(tmp_path) == tmp_path
    temp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_copy.mkdir(parents=True)
    assert mlflow_runs.project_root(temp_copy) == tmp_path


def test_tracking_uri_is_absolute_sqlite_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_runs.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_runs.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def isolated_git(tmp_path, monkeypatch):
    """Git that sees no repository above ``tmp_path`` and no settings of the machine or a caller."""
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return tmp_path


def commit_repo(repo):
    """A git repository at ``repo`` with one commit; returns its sha."""
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "file.txt").write_text("tracked\n")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "first", cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


@needs_git
def test_run_tags_carry_task_commit_and_experiment(isolated_git, monkeypatch):
    repo = isolated_git / "repo"
    commit = commit_repo(repo)
    monkeypatch.chdir(repo / "sub")
    monkeypatch.setenv("DVC_EXP_NAME", "brave-newt")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    tags = mlflow_runs.run_tags("binary")
    assert len(commit) == 40
    assert tags == {"task": "binary", "git_commit": commit, "mlflow.source.git.commit": commit,
                    "dvc_exp_name": "brave-newt", "dvc_exp_baseline_rev": "f" * 40}


@needs_git
def test_run_names_carry_the_variant_and_the_experiment_or_the_commit(isolated_git, monkeypatch):
    repo = isolated_git / "repo"
    commit = commit_repo(repo)
    monkeypatch.chdir(repo / "sub")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    name, _, short = mlflow_runs.run_name("binary").partition("@")
    assert name == "binary" and len(short) >= 7 and commit.startswith(short)
    monkeypatch.setenv("DVC_EXP_NAME", "brave-newt")
    assert mlflow_runs.run_name("multiclass_transfer") == "multiclass_transfer@brave-newt"


@needs_git
@pytest.mark.parametrize("where", ["outside any repository", "in a repository without commits",
                                   "in a repository but without the git command"])
def test_run_tags_without_a_readable_commit_have_no_git_commit(isolated_git, monkeypatch, where):
    folder = isolated_git / "folder"
    if where == "outside any repository":
        folder.mkdir()
    elif where == "in a repository without commits":
        folder.mkdir()
        git("init", "-q", cwd=folder)
    else:
        commit_repo(folder)
        (isolated_git / "empty").mkdir()
        monkeypatch.setenv("PATH", str(isolated_git / "empty"))
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert mlflow_runs.run_tags("multiclass") == {"task": "multiclass"}


def test_setup_creates_experiment_with_artifacts_in_project(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment_id = mlflow_runs.setup(tmp_path)
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.name == mlflow_runs.EXPERIMENT
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    assert mlflow_runs.setup(tmp_path) == experiment_id
    assert Path(tmp_path / "mlflow.db").exists()


def test_the_experiment_opens_on_its_runs_table_and_make_ui_prints_its_url(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert mlflow_runs.runs_table_url("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert not (tmp_path / "mlflow.db").exists(), "asking for the URL creates no store"
    experiment_id = mlflow_runs.setup(tmp_path)
    experiment = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert mlflow_runs.runs_table_url("http://127.0.0.1:5000", tmp_path) == \
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"


@pytest.mark.parametrize("preset", [None, "false"])
def test_mlflow_telemetry_is_off_unless_a_user_turns_it_on(preset):
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    if preset:
        env["MLFLOW_DISABLE_TELEMETRY"] = preset
    code = ("import retinaseg, os; from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY; "
            "print(MLFLOW_DISABLE_TELEMETRY.get(), os.environ['DO_NOT_TRACK'])")
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == (["True", "true"] if preset is None else ["False", "true"])


def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path):
    """A client-side folder would be on the client's disk only; the server's root (mlflow-artifacts:/ with
    --serve-artifacts) is the same for every client. tests/test_server.py checks it on a real server."""
    assert mlflow_runs._artifact_location("http://127.0.0.1:5000", tmp_path) is None
    assert mlflow_runs._artifact_location("HTTPS://mlflow.example.org", tmp_path) is None
    assert mlflow_runs._artifact_location(f"sqlite:///{tmp_path}/other.db", tmp_path) == (tmp_path / "mlruns").as_uri()


def test_a_run_missing_from_the_store_is_named_with_the_fix(tmp_path, monkeypatch):
    from helpers import one_line_error

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    run_file = tmp_path / "metrics" / "train" / "binary" / mlflow_runs.RUN_FILE
    run_file.parent.mkdir(parents=True)
    run_file.write_text('{"run_id": "0123456789abcdef0123456789abcdef"}')
    one_line_error(lambda: mlflow_runs.require_run(run_file),
                   f"{run_file}: MLflow run 0123456789abcdef0123456789abcdef is not in", "dvc repro --force")


@pytest.mark.parametrize("text", ["", "{not json", '{"experiment_id": "1"}', "[]"])
def test_an_unreadable_run_file_is_named_with_the_fix(tmp_path, text):
    from helpers import one_line_error

    run_file = tmp_path / mlflow_runs.RUN_FILE
    run_file.write_text(text)
    one_line_error(lambda: mlflow_runs.read_run(run_file), f"{run_file}: no readable MLflow run", "dvc repro --force")
    one_line_error(lambda: mlflow_runs.read_run(tmp_path / "missing.json"), "missing.json: no readable MLflow run")


# --- A tracking server that is down or is not MLflow: setup stops within seconds with one line.

PROBE_LIMIT = 10  # seconds: what the pipeline promises; MLflow's own client retries for about 4 minutes


def outcome_within(seconds, call):
    """Run ``call`` in a thread; fail if it is still running after ``seconds``; return what it raised."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    outcome["seconds"] = time.monotonic() - started
    return outcome


def assert_one_line_error(outcome, *fragments):
    error = outcome.get("error")
    assert isinstance(error, PipelineError), f"expected a PipelineError, got {error!r}"
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def closed_port():
    """A local port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A local port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@contextmanager
def http_server(status, body, content_type="application/json"):
    """A local HTTP server answering every GET with ``status`` and ``body``; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_setup_stops_at_once_when_no_server_listens(closed_port, monkeypatch):
    uri = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"MLflow tracking server {uri} does not answer (connection refused)",
                          "mlflow server --host 127.0.0.1 --port 5000", "unset MLFLOW_TRACKING_URI")


def test_setup_stops_when_the_server_does_not_answer(silent_port, monkeypatch):
    uri = f"http://127.0.0.1:{silent_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow_runs, "PROBE_TIMEOUT", 1, raising=False)
    outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"{uri} does not answer (no answer within 1 s)", "unset MLFLOW_TRACKING_URI")
    assert outcome["seconds"] < 5  # one attempt, no retries


def test_setup_stops_when_the_server_is_not_mlflow(monkeypatch):
    with http_server(404, "<html>Not Found</html>", "text/html") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"{uri} answers but is not an MLflow tracking server (HTTP 404",
                          "unset MLFLOW_TRACKING_URI")


def test_setup_names_refused_access(monkeypatch):
    with http_server(401, '{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}') as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"{uri} refused access (HTTP 401)", "MLFLOW_TRACKING_USERNAME")


def test_setup_names_a_failing_server(monkeypatch):
    with http_server(500, '{"error_code": "INTERNAL_ERROR", "message": "database is locked"}') as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"MLflow tracking server {uri} failed (HTTP 500: database is locked)",
                          "server's log")


@pytest.mark.parametrize("status, body", [
    (404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Could not find experiment"}'),
    (200, '{"experiment": {"experiment_id": "1", "name": "retinal-lesion-segmentation"}}'),
])
def test_store_check_accepts_what_an_mlflow_server_answers(status, body):
    with http_server(status, body) as uri:
        mlflow_runs.check_store(uri)


def test_a_stage_with_the_server_down_prints_one_error_line_and_exits_1(closed_port):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port}"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c",
                             "from retinaseg.core import stage; from retinaseg.tracking import mlflow_runs; "
                             "stage.run(lambda argv: mlflow_runs.setup())"],
                            env=env, capture_output=True, text=True, timeout=3 * PROBE_LIMIT)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: MLflow tracking server http://127.0.0.1:"), lines
    assert seconds < PROBE_LIMIT, f"{seconds:.0f} s"


# --- Several processes on one new SQLite store: one experiment, every run kept.

def test_experiment_created_meanwhile_by_another_process_is_reused(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = mlflow_runs.setup(tmp_path)
    real = mlflow.get_experiment_by_name
    calls = []

    def not_there_yet(name):  # the other process creates it between our read and our create
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", not_there_yet)
    assert mlflow_runs.setup(tmp_path) == first
    assert len(calls) == 2


def test_a_deleted_experiment_is_named_with_the_fix(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment_id = mlflow_runs.setup(tmp_path)
    MlflowClient().delete_experiment(experiment_id)
    outcome = outcome_within(PROBE_LIMIT, lambda: mlflow_runs.setup(tmp_path))
    assert_one_line_error(outcome, f"MLflow experiment '{mlflow_runs.EXPERIMENT}' (id {experiment_id}) is deleted",
                          f"mlflow experiments restore --experiment-id {experiment_id}")


def test_a_store_in_a_folder_that_cannot_exist_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/file/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    outcome = outcome_within(PROBE_LIMIT, mlflow_runs.setup)
    assert_one_line_error(outcome, f"MLflow store {uri}: cannot create {tmp_path}/file/mlflow.db.lock",
                          "MLFLOW_TRACKING_URI")


def test_a_store_held_by_a_hung_process_is_named_after_the_lock_timeout(tmp_path, monkeypatch):
    from filelock import FileLock

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow_runs, "LOCK_TIMEOUT", 0.5)
    held, release = threading.Event(), threading.Event()

    def hold():  # another thread, so the lock is not re-entered
        with FileLock(tmp_path / "mlflow.db.lock"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    try:
        outcome = outcome_within(PROBE_LIMIT, lambda: mlflow_runs.setup(tmp_path))
    finally:
        release.set()
        holder.join(10)
    assert_one_line_error(outcome, f"waited 0.5 s for {tmp_path}/mlflow.db.lock, held by another process")
    assert mlflow_runs.setup(tmp_path)  # free again


WORKER = """
import sys, time
from pathlib import Path

import mlflow
from retinaseg.tracking import mlflow_runs

root, index, start = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
(start.parent / f"ready-{index}").touch()
while not start.exists():
    time.sleep(0.002)
experiment_id = mlflow_runs.setup(root)
with mlflow.start_run(experiment_id=experiment_id, run_name=f"worker-{index}"):
    mlflow.log_params({"worker": index, "train.lr": 0.001 * (index + 1)})
    for step in range(3):
        mlflow.log_metric("loss", 1 / (index + step + 1), step=step)
    mlflow.log_metric("test_macro_f1", index / 10)
"""


def last_error_line(stderr):
    """The last line of a traceback that names an exception (SQLAlchemy ends with a link instead)."""
    lines = [line.strip() for line in stderr.splitlines() if "Error" in line or "Exception" in line]
    return lines[-1] if lines else stderr.strip()[-300:]


def test_processes_starting_together_on_a_new_store_all_log_their_runs(tmp_path):
    """4 processes call setup() at the same moment on a new store, then each logs a run."""
    from mlflow.tracking import MlflowClient

    workers = 4
    root, sync = tmp_path / "project", tmp_path / "sync"
    root.mkdir()
    sync.mkdir()
    (tmp_path / "worker.py").write_text(WORKER)
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    processes = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(root), str(index),
                                   str(sync / "start")], cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for index in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < workers:  # every process has imported mlflow
            assert all(process.poll() is None for process in processes), "a worker ended before the start"
            assert time.monotonic() < deadline, "workers not ready after 120 s"
            time.sleep(0.01)
        (sync / "start").touch()
        results = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    failures = [f"worker {index} exit {process.returncode}: {last_error_line(err)}"
                for index, (process, (_, err)) in enumerate(zip(processes, results)) if process.returncode]
    assert not failures, failures

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    ours = [e for e in client.search_experiments() if e.name == mlflow_runs.EXPERIMENT]
    assert len(ours) == 1
    runs = client.search_runs([ours[0].experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"worker-{index}" for index in range(workers)]
    for run in runs:
        index = int(run.data.params["worker"])
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == str(0.001 * (index + 1))
        assert run.data.metrics["test_macro_f1"] == index / 10
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [
            1 / (index + step + 1) for step in range(3)]
