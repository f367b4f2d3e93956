"""MLflow set-up shared by train and evaluate: one store per project, one run per task.

The store is ``sqlite:///<project>/mlflow.db`` with artifacts in ``<project>/mlruns``,
addressed by absolute paths so that ``dvc exp run --temp`` and queued experiments (which
run in copies under ``.dvc/tmp/exps``) log into the same store as the workspace.
``MLFLOW_TRACKING_URI`` still wins when set. A tracking server (http/https, e.g. ``make
server``) keeps artifacts where it is configured to: the experiment is created with the
server's default artifact root (``mlflow-artifacts:/`` with ``--serve-artifacts``), so
clients upload through the server and need no shared disk.

``setup`` checks the store before any work: a tracking server that does not answer, or
answers but is not MLflow, stops the stage within seconds with a one-line error (MLflow's
own client would retry for minutes). Several stages may start at once (``dvc exp run
--queue`` with ``dvc queue start -j 2``, ``dvc exp run --run-all -j N``): the first
creation of a SQLite store (its schema migrations) and of the experiment is serialised by
a file lock beside the database, ``mlflow.db.lock``, which also serialises model registrations.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from retinaseg.core.errors import PipelineError, one_line

EXPERIMENT = "retinal-lesion-segmentation"
#: Tells MLflow 3's UI that this experiment trains models, so it opens on the runs table (not the GenAI overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
#: Seconds a tracking server gets to answer the probe in ``setup`` (one attempt, no retries).
PROBE_TIMEOUT = 5
#: Seconds to wait for another process creating the SQLite store or the experiment.
LOCK_TIMEOUT = 300
SERVER_HINT = "`make server`, or `mlflow server --host 127.0.0.1 --port 5000`"


def project_root(cwd: Path | None = None) -> Path:
    """The project folder, seen through DVC's temporary experiment copies."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for index in range(len(parts) - 2):
        if parts[index:index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return cwd


def project_store(root: Path | None = None) -> str:
    """The project's own store, used unless MLFLOW_TRACKING_URI names another."""
    return f"sqlite:///{project_root(root)}/mlflow.db"


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or project_store(root)


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)


def runs_table_url(base: str, root: Path | None = None) -> str:
    """The MLflow UI page of the project's runs table at ``base`` (the UI's own address), or its start page
    when the store holds no experiment of the project yet."""
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return base  # asking would create an empty store
    experiment = MlflowClient(uri).get_experiment_by_name(experiment_name())
    return f"{base}/#/experiments/{experiment.experiment_id}/runs" if experiment else base


def setup(root: Path | None = None) -> str:
    """Point MLflow at the project store and return the experiment id (created if needed).

    Checks the store first (a PipelineError naming the URI and the fix when it cannot be
    used) and is safe when several processes call it at once on a new store.
    """
    uri = tracking_uri(root)
    check_store(uri)
    import mlflow
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    name = experiment_name()
    with store_lock(uri):
        try:
            experiment = mlflow.get_experiment_by_name(name)  # the first use creates and migrates a new store
            if experiment is None:
                try:
                    return mlflow.create_experiment(name, artifact_location=_artifact_location(uri, root),
                                                    tags=EXPERIMENT_KIND)
                except MlflowException:  # "already exists": created meanwhile by a process outside our lock
                    experiment = mlflow.get_experiment_by_name(name)
                    if experiment is None:
                        raise
        except (MlflowException, sqlalchemy.exc.SQLAlchemyError) as error:
            raise PipelineError(f"MLflow store {uri} cannot be used: {one_line(error)}") from None
    if experiment.lifecycle_stage == "deleted":
        raise PipelineError(f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted in {uri}; "
                            f"restore it with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                            "or set MLFLOW_EXPERIMENT_NAME to another name")
    return experiment.experiment_id


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("http", "https")


def _artifact_location(uri: str, root: Path | None) -> str | None:
    """``<project>/mlruns`` beside a database store; None (the server's own root) for a tracking server.

    A file location chosen by a client would name a folder on that client's disk, which
    neither the server nor other clients can read.
    """
    return None if is_server(uri) else (project_root(root) / "mlruns").as_uri()


def check_store(uri: str) -> None:
    """Stop at once, with the fix, when the tracking server at ``uri`` cannot be used.

    A tracking server (http/https) gets one request with a short timeout and no retries,
    the cheap read ``GET /api/2.0/mlflow/experiments/get-by-name``; it must answer as
    MLflow does (JSON: the experiment, or RESOURCE_DOES_NOT_EXIST). Other stores are
    checked by their first use in ``setup``.
    """
    if is_server(uri):
        _probe_server(uri)


def _probe_server(uri: str) -> None:
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    fix = (f"start the server (e.g. {SERVER_HINT}, then MLFLOW_TRACKING_URI=http://127.0.0.1:5000) "
           f"or unset MLFLOW_TRACKING_URI to use the project's store {project_store()}")
    endpoint = "/api/2.0/mlflow/experiments/get-by-name"
    try:
        response = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, backoff_factor=0,
                                backoff_jitter=0, timeout=PROBE_TIMEOUT, raise_on_status=False,
                                params={"experiment_name": experiment_name()})
    except MlflowException as error:
        raise PipelineError(f"MLflow tracking server {uri} does not answer ({_connection_reason(error)}); "
                            f"{fix}") from None
    status = response.status_code
    if status in (401, 403):
        raise PipelineError(f"MLflow tracking server {uri} refused access (HTTP {status}); set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), "
                            f"or unset MLFLOW_TRACKING_URI to use the project's store {project_store()}")
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    if status >= 500:
        message = body.get("message") if isinstance(body, dict) else None
        detail = f": {one_line(message, limit=160)}" if message else ""
        raise PipelineError(f"MLflow tracking server {uri} failed (HTTP {status}{detail}); see the server's log, "
                            f"or unset MLFLOW_TRACKING_URI to use the project's store {project_store()}")
    mlflow_answer = isinstance(body, dict) and ((status == 200 and "experiment" in body) or (
        status == 404 and body.get("error_code") == "RESOURCE_DOES_NOT_EXIST"))
    if not mlflow_answer:
        raise PipelineError(f"{uri} answers but is not an MLflow tracking server (HTTP {status} for {endpoint}); "
                            f"check the host, port and path in MLFLOW_TRACKING_URI, {fix}")


def _connection_reason(error: BaseException) -> str:
    """A short reason for a failed request: refused, unknown host, timed out, or the error's first line."""
    import socket

    import requests
    import urllib3

    chain = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    text = " ".join(str(e) for e in chain)
    # Before the timeouts: urllib3's NewConnectionError (refused, unknown host) is a ConnectTimeoutError.
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in text:
        return "unknown host"
    if any(isinstance(e, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)) for e in chain):
        return "TLS error: " + one_line(chain[-1], limit=160)
    timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if any(isinstance(e, timeouts) for e in chain):
        return f"no answer within {PROBE_TIMEOUT} s"
    return one_line(chain[-1], limit=160)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for an in-memory database."""
    path = uri.split("?", 1)[0].removeprefix("sqlite://")
    if path.startswith("/"):
        path = path[1:]  # sqlite:///relative.db or sqlite:////absolute.db
    if not path or path == ":memory:":
        return None
    return Path(path).absolute()


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while a SQLite store and its experiment are opened or created, or a model is
    registered (``registry``); any other store goes unlocked."""
    path = _sqlite_path(uri) if urlsplit(uri).scheme.lower() == "sqlite" else None
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError, of which it is one
        raise PipelineError(f"waited {LOCK_TIMEOUT} s for {lock.lock_file}, held by another process opening the "
                            "MLflow store or registering a model; check for a hung stage (`ps`) and stop it") from None
    except OSError as error:
        raise PipelineError(f"MLflow store {uri}: cannot create {lock.lock_file} ({error.strerror or error}); "
                            "check the folder, or set MLFLOW_TRACKING_URI to a store you can write") from None
    try:
        yield
    finally:
        lock.release()


def run_tags(task: str) -> dict[str, str]:
    """Tags that tie a run to its code: task, git commit, DVC experiment name if any."""
    tags = {"task": task}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def run_name(variant: str) -> str:
    """``<variant>@<DVC experiment>`` under ``dvc exp run``, else ``<variant>@<short commit>``: runs of one
    model in ten experiments keep ten names in the runs table."""
    label = os.environ.get("DVC_EXP_NAME") or _git("rev-parse", "--short", "HEAD")
    return f"{variant}@{label}" if label else variant


def log_params(params: dict[str, Any]) -> None:
    """Log flattened params; lists become strings, as MLflow stores text."""
    import mlflow

    mlflow.log_params({key: str(value) if isinstance(value, (list, tuple)) else value
                       for key, value in params.items()})


def dvc_hash(path: str, lock: Path = Path("dvc.lock")) -> str | None:
    """The md5 that ``dvc.lock`` records for the output ``path`` (without DVC's ``.dir``), or None if it has none.

    During ``dvc repro`` an upstream stage's entry is written before the next stage starts.
    """
    import yaml

    try:
        stages = yaml.safe_load(lock.read_text())["stages"].values()
        hashes = [out["md5"] for stage in stages for out in stage.get("outs", []) if out.get("path") == path]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return hashes[0].removesuffix(".dir") if hashes else None


def log_dataset(context: str, folder: str, images: Any, targets: Any) -> None:
    """Log one split of the active run as an MLflow dataset (the runs table's Dataset column).

    Its name and source are the DVC output ``folder`` it was read from (``data/prepared/train``),
    its digest that output's DVC hash, so a run names the data version it used (``data.source``,
    where that data came from, is a param of the training run).
    """
    import warnings

    import mlflow

    top = "/".join(folder.split("/")[:2])  # data/prepared/train is inside the DVC output data/prepared
    with warnings.catch_warnings():  # a relative path fits two local source types; MLflow picks the right one
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted", UserWarning)
        dataset = mlflow.data.from_numpy(images, source=folder, targets=targets, name=folder, digest=dvc_hash(top))
    mlflow.log_input(dataset, context=context)


#: Beside a training's curve: the MLflow run that trained a model (evaluate continues it), kept out of
#: ``models/<variant>`` because a run id differs on every training and DVC would see a new model. The store
#: is not named in it (``tracking_uri`` finds it), so the committed file holds no machine's path.
RUN_FILE = "mlflow_run.json"


def read_run(path: Path) -> dict[str, Any]:
    """The ``RUN_FILE`` a training wrote: ``run_id``, ``experiment_id``, ``init_from_run_id``."""
    try:
        run = json.loads(Path(path).read_text())
        if not isinstance(run.get("run_id"), str):
            raise ValueError("no run_id")
    except (OSError, ValueError, AttributeError) as error:
        raise PipelineError(f"{path}: no readable MLflow run of a training ({type(error).__name__}: "
                            f"{one_line(error)}); rerun the training with `dvc repro --force <its train stage>`"
                            ) from None
    return run


def require_run(run_path: Path) -> str:
    """The run id in ``run_path``; stop with a clear message when that run is not in this MLflow store.

    That happens when models come from a DVC cache or remote but ``mlflow.db`` does not.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = read_run(run_path)["run_id"]
    setup()
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise PipelineError(f"{run_path}: MLflow run {run_id} is not in {tracking_uri()}; "
                            f"retrain it with `dvc repro --force` on its train stage, or point "
                            "MLFLOW_TRACKING_URI at the store that holds it") from None
    return run_id


def end_run(run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End a run left open by a killed process (``KILLED``), so the store does not show it running forever;
    ``tags`` say why."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri())
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)
    except MlflowException:
        pass  # not in this store (another machine's, or deleted): nothing is left running here


def log_to_runs(run_paths: list[Path], files: list[Path], artifact_path: str) -> None:
    """Attach the same files to several finished runs (their ``RUN_FILE`` paths), so each run's page shows them."""
    from mlflow import MlflowClient

    run_ids = [require_run(path) for path in run_paths]
    client = MlflowClient()
    for run_id in run_ids:
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
