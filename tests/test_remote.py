"""Results travel through a DVC remote: push after a repro, pull in another clone, use them there untrained.

The remote is a local folder, configured as a team would configure an S3 or GCS bucket
(``dvc remote add -d``); the clone starts with an empty DVC cache and no MLflow store.
"""

import json
import sys

import numpy as np
import pytest
from project import commit, run

PULLED = ("models/multiclass/model.keras", "data/prepared/test/images.npy",
          "data/predictions/multiclass/image008.npy", "metrics/eval/multiclass/overlays")


@pytest.mark.slow
def test_a_clone_pulls_what_a_repro_pushed_and_predicts_without_training(workspace, tmp_path):  # noqa: F811
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "remote", "add", "--default", "team", str(remote)], workspace)
    run(["dvc", "push"], workspace)
    commit(workspace, "team remote")
    assert any(path.is_file() for path in remote.rglob("*")), "the remote holds the pushed files"

    run(["git", "clone", "-q", str(workspace), str(clone)], tmp_path)
    assert not (clone / "models" / "multiclass").exists() and not (clone / ".dvc" / "cache").exists()
    run(["dvc", "pull"], clone)
    for path in PULLED:
        assert (clone / path).exists(), path
    assert (clone / PULLED[0]).read_bytes() == (workspace / PULLED[0]).read_bytes()
    status = json.loads(run(["dvc", "status", "--json"], clone).stdout)
    assert status == {"source": ["always changed"]}, "up to date; only the stage that runs on every repro shows"

    image = "data/raw/resources/images/ddb1_fundusimages/image008.png"
    for project in (workspace, clone):
        run([sys.executable, "-m", "retinaseg.evaluation.predict", image, "--model", "models/multiclass",
             "--eval", "metrics/eval/multiclass/eval.json", "--out", str(tmp_path / project.name)], project)
    assert not (clone / "mlflow.db").exists(), "predict needs no MLflow store"
    assert np.array_equal(np.load(tmp_path / "clone" / "image008.npy"), np.load(tmp_path / "project" / "image008.npy"))
