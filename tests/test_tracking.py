import shutil
import subprocess
from pathlib import Path

import pytest

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
    tags = tracking.run_tags("binary")
    assert len(commit) == 40
    assert tags == {"task": "binary", "git_commit": commit, "mlflow.source.git.commit": commit,
                    "dvc_exp_name": "brave-newt", "dvc_exp_baseline_rev": "f" * 40}


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
    assert tracking.run_tags("multiclass") == {"task": "multiclass"}


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
