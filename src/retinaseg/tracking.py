"""MLflow set-up shared by train and evaluate: one store per project, one run per task.

The store is ``sqlite:///<project>/mlflow.db`` with artifacts in ``<project>/mlruns``,
addressed by absolute paths so that ``dvc exp run --temp`` and queued experiments (which
run in copies under ``.dvc/tmp/exps``) log into the same store as the workspace.
``MLFLOW_TRACKING_URI`` still wins when set.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from retinaseg.errors import PipelineError

EXPERIMENT = "retinal-lesion-segmentation"


def project_root(cwd: Path | None = None) -> Path:
    """The project folder, seen through DVC's temporary experiment copies."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for index in range(len(parts) - 2):
        if parts[index:index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return cwd


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(root)}/mlflow.db"


def setup(root: Path | None = None) -> str:
    """Point MLflow at the project store and return the experiment id (created if needed)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (project_root(root) / "mlruns").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifacts)


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


def log_params(params: dict[str, Any]) -> None:
    """Log flattened params; lists become strings, as MLflow stores text."""
    import mlflow

    mlflow.log_params({key: str(value) if isinstance(value, (list, tuple)) else value
                       for key, value in params.items()})


def require_run(run_id: str, model_dir: Path) -> None:
    """Stop with a clear message when a model's training run is not in this MLflow store.

    That happens when models come from a DVC cache or remote but ``mlflow.db`` does not.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    setup()
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise PipelineError(f"{model_dir}/run.json: MLflow run {run_id} is not in {tracking_uri()}; "
                            f"retrain it with `dvc repro --force` on its train stage, or point "
                            "MLFLOW_TRACKING_URI at the store that holds it") from None


def log_to_runs(runs: dict[str, Path], files: list[Path], artifact_path: str) -> None:
    """Attach the same files to several finished runs (run id -> model folder), so each run's page shows them."""
    from mlflow import MlflowClient

    for run_id, model_dir in runs.items():
        require_run(run_id, model_dir)
    client = MlflowClient()
    for run_id in runs:
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
