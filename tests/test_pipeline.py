"""A real `dvc repro` of the whole pipeline on a tiny configuration, in a temporary git repo.

The pipeline is reproduced once per session (``reproduced``); tests that only read it use
it as it is, tests that change params or run experiments get their own copy (``workspace``),
so every test holds in any order (the suite runs in random order).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """The project copied into a fresh git repo, reproduced once on tiny data and committed. Read only."""
    repo = tmp_path_factory.mktemp("reproduced") / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    for folder in ("stages", "src", ".dvc"):
        shutil.copytree(PROJECT / folder, repo / folder, ignore=shutil.ignore_patterns("tmp", "cache", "__pycache__"))
    set_params(repo, TINY)
    run(["git", "init", "-q"], repo)
    commit(repo, "tiny")
    repo.joinpath("first_repro.log").write_text(run(["dvc", "repro"], repo).stdout)
    commit(repo, "reproduced")
    return repo


@pytest.fixture
def workspace(reproduced, tmp_path):
    """A private copy of the reproduced project (git history, DVC cache and MLflow store included)."""
    copy = tmp_path / "project"
    shutil.copytree(reproduced, copy, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return copy


@pytest.mark.slow
def test_repro_writes_every_declared_output(reproduced):
    repo = reproduced
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert {"data/raw", "data/prepared", "data/augmented", "models/binary", "metrics/comparison.md"} <= set(outs)
    for path in outs:
        assert (repo / path).exists(), path
    for variant in VARIANTS:
        assert (repo / "models" / variant / "model.keras").stat().st_size > 0
        curve = (repo / "metrics" / variant / "train_curve.tsv").read_text().splitlines()
        assert curve[0].split("\t")[:3] == ["epoch", "dice", "loss"] and len(curve) == 3
        assert [line.split("\t")[0] for line in curve[1:]] == ["0", "1"]
        evaluation = json.loads((repo / "metrics" / variant / "eval.json").read_text())
        assert evaluation["n_images"] == 3 and len(evaluation["per_image"]) == 3
        for name in evaluation["lesion_classes"]:
            assert {"lesion_sensitivity", "fp_components_per_image", "image_sensitivity",
                    "image_specificity"} <= set(evaluation[name]["lesion"])
            assert "lesions" in evaluation["per_image"][0][name]
            core = evaluation[name]["core"]
            assert {"lesion_sensitivity", "fp_components_per_image", "optic_disc_components_per_image",
                    "n_reference_lesions"} <= set(core["lesion"])
            assert 0 <= core["predicted_fov_share"] <= 1 and 0 <= core["reference_fov_share"] <= 1
            assert {"tp", "fp", "fn", "lesions"} <= set(evaluation["per_image"][0][name]["core"])
            assert evaluation["threshold_source"] == "validation" and 0 < evaluation["thresholds"][name] < 1
            curve = json.loads((repo / "metrics" / variant / "pr_curves" / f"{name}.json").read_text())
            assert len(curve) == 11 and {"threshold", "precision", "recall"} <= set(curve[0])
        assert len(list((repo / "metrics" / variant / "overlays").glob("*.png"))) == 1
    table = (repo / "metrics" / "comparison.md").read_text()
    assert "| binary | scratch | hemorrhages |" in table and "| multiclass_transfer | binary | red |" in table
    assert (repo / "metrics" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(repo.rglob(".*.partial-*"))


@pytest.mark.slow
def test_transfer_starts_from_the_binary_model_and_depends_on_it(reproduced):
    repo = reproduced
    binary = json.loads((repo / "models" / "binary" / "run.json").read_text())
    transfer = json.loads((repo / "models" / "multiclass_transfer" / "run.json").read_text())
    assert transfer["init_from"] == "binary" and transfer["init_from_run_id"] == binary["run_id"]
    assert transfer["frozen_encoder_epochs"] == 1 and transfer["epochs"] == 2
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "models/binary" in [dep["path"] for dep in lock["stages"]["transfer"]["deps"]]
    assert "models/binary" not in [dep["path"] for dep in lock["stages"]["train@multiclass"]["deps"]]


@pytest.mark.slow
def test_plots_show_renders_curves_and_overlays(reproduced, tmp_path):
    repo = reproduced
    run(["dvc", "plots", "show", "--out", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    for fragment in ("train_curve.tsv", "pr_curves", "overlays", "comparison.png"):
        assert fragment in page, fragment


@pytest.mark.slow
def test_mlflow_holds_one_run_per_task_with_params_and_metrics(reproduced):
    repo = reproduced
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(VARIANTS)
    assert runs["multiclass_transfer"].data.tags["init_from_run_id"] == runs["binary"].info.run_id
    for variant, run in runs.items():
        defaults = yaml.safe_load((PROJECT / "params.yaml").read_text())
        assert run.data.params["model.depth"] == "2" and run.data.params["train.loss"] == defaults["train"]["loss"]
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
        assert "test_macro_f1" in run.data.metrics
        assert len(run.data.tags["git_commit"]) == 40
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        assert {"evaluation/eval.json", "evaluation/overlays", "evaluation/pr_curves"} <= set(artifacts)
        assert "test_hemorrhages_f1" in run.data.metrics or "test_red_f1" in run.data.metrics
        assert any(name.endswith("_core_predicted_fov_share") for name in run.data.metrics)
        comparison = [a.path for a in client.list_artifacts(run.info.run_id, "comparison")]
        assert comparison == ["comparison/comparison.md", "comparison/comparison.png"]
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        planes = 1 if variant == "binary" else 3
        assert list(model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
        assert model.predict(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, planes)
    assert experiment.artifact_location == (repo / "mlruns").as_uri()


@pytest.mark.slow
def test_second_repro_runs_nothing_and_lr_change_reruns_only_training(workspace):
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == []
    set_params(workspace, {"train": {"lr": 0.002}})
    assert "train.lr" in run(["dvc", "params", "diff"], workspace).stdout
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == [
        "compare", "evaluate@binary", "evaluate@multiclass", "evaluate@multiclass_transfer",
        "train@binary", "train@multiclass", "transfer"]


@pytest.mark.slow
def test_bad_param_fails_before_work_naming_the_key(workspace):
    set_params(workspace, {"model": {"depth": 9}})
    result = run(["dvc", "repro"], workspace, check=False)
    assert result.returncode != 0
    assert "model.depth = 9 is not allowed; expected an integer from 2 to 6" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    started = ran_stages(result.stdout)  # the first stage whose params changed stops at once
    assert len(started) == 1 and started[0] in ("train@binary", "train@multiclass")


@pytest.mark.slow
def test_experiment_with_another_loss_is_listed(workspace):
    run(["dvc", "exp", "run", "-S", "train.loss=bce", "--name", "bce-loss"], workspace)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], workspace).stdout
    assert "bce-loss" in shown and "bce" in shown and "dice" in shown


@pytest.mark.slow
def test_temp_experiment_logs_into_the_workspace_store(workspace):
    from mlflow.tracking import MlflowClient

    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.003", "--name", "temp-lr"], workspace)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    tagged = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'temp-lr'")
    assert sorted(r.info.run_name for r in tagged) == sorted(VARIANTS)
    assert all(r.data.params["train.lr"] == "0.003" and "test_macro_f1" in r.data.metrics for r in tagged)


@pytest.mark.slow
def test_score_command_rewrites_the_evaluate_stage_eval_json(reproduced, tmp_path):
    """The evaluate stage scores its prediction files with the same code as `python -m retinaseg.score`."""
    for variant in VARIANTS:
        task = json.loads((reproduced / "models" / variant / "run.json").read_text())["task"]
        out = tmp_path / f"{variant}.json"
        run([sys.executable, "-m", "retinaseg.score", "--reference", "data/prepared/test",
             "--predictions", f"data/predictions/{variant}", "--task", task,
             "--rules", f"metrics/{variant}/eval.json", "--out", str(out)], reproduced)
        assert out.read_bytes() == (reproduced / "metrics" / variant / "eval.json").read_bytes()
