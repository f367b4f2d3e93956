from pathlib import Path

from retinaseg import tracking


def test_project_root_sees_through_dvc_temp_experiments(tmp_path):
    assert tracking.project_root(tmp_path) == tmp_path
    temp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_copy.mkdir(parents=True)
    assert tracking.project_root(temp_copy) == tmp_path


def test_tracking_uri_is_absolute_sqlite_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_run_tags_carry_task_commit_and_experiment(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brave-newt")
    tags = tracking.run_tags("binary")
    assert tags["task"] == "binary" and tags["dvc_exp_name"] == "brave-newt"
    assert len(tags.get("git_commit", "0" * 40)) == 40


def test_setup_creates_experiment_with_artifacts_in_project(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment_id = tracking.setup(tmp_path)
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.name == tracking.EXPERIMENT
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    assert tracking.setup(tmp_path) == experiment_id
    assert Path(tmp_path / "mlflow.db").exists()


def test_a_run_missing_from_the_store_is_named_with_the_fix(tmp_path, monkeypatch):
    from helpers import one_line_error

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    one_line_error(lambda: tracking.require_run("0123456789abcdef0123456789abcdef", Path("models/binary")),
                   "models/binary/run.json: MLflow run 0123456789abcdef0123456789abcdef is not in",
                   "dvc repro --force")
