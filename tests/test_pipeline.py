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

import numpy as np
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


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """The project copied into a fresh git repo, reproduced once on tiny data and committed. Read only."""
    repo = tiny_project(tmp_path_factory.mktemp("reproduced") / "project")
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
    assert {"data/raw", "data/prepared", "data/augmented", "models/binary", "metrics/comparison.md",
            "data/predictions/multiclass_transfer", "metrics/train/binary/train_curve.tsv"} <= set(outs)
    for path in outs:
        assert (repo / path).exists(), path
    for variant in VARIANTS:
        assert (repo / "models" / variant / "model.keras").stat().st_size > 0
        curve = (repo / "metrics" / "train" / variant / "train_curve.tsv").read_text().splitlines()
        assert curve[0].split("\t")[:3] == ["epoch", "dice", "loss"] and len(curve) == 3
        assert [line.split("\t")[0] for line in curve[1:]] == ["0", "1"]
        evaluation = json.loads((repo / "metrics" / "eval" / variant / "eval.json").read_text())
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
            curve = json.loads((repo / "metrics" / "eval" / variant / "pr_curves" / f"{name}.json").read_text())
            assert len(curve) == 11 and {"threshold", "precision", "recall"} <= set(curve[0])
        assert len(list((repo / "metrics" / "eval" / variant / "overlays").glob("*.png"))) == 1
    table = (repo / "metrics" / "comparison.md").read_text()
    assert "| binary | scratch | hemorrhages |" in table and "| multiclass_transfer | binary | red |" in table
    assert (repo / "metrics" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(repo.rglob(".*.partial-*"))
    assert not (repo / "checkpoints").exists() or not any((repo / "checkpoints").iterdir()), "progress removed"


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
def test_second_repro_runs_nothing_and_an_evaluate_change_reruns_only_evaluation(workspace):
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["source"]  # always run; changes nothing
    set_params(workspace, {"evaluate": {"min_component_px": 5}})
    assert "evaluate.min_component_px" in run(["dvc", "params", "diff"], workspace).stdout
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == [
        "compare", "evaluate@binary", "evaluate@multiclass", "evaluate_transfer", "source"]


@pytest.mark.slow
def test_bad_param_fails_before_work_naming_the_key(workspace):
    set_params(workspace, {"model": {"depth": 9}})
    result = run(["dvc", "repro"], workspace, check=False)
    assert result.returncode != 0
    assert "model.depth = 9 is not allowed; expected an integer from 2 to 6" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert ran_stages(result.stdout) == ["source"], "the first stage, which always runs, stops the pipeline"


@pytest.mark.slow
def test_experiment_is_listed_with_its_params(workspace):
    run(["dvc", "exp", "run", "-S", "evaluate.threshold_beta=1", "--name", "f1-thresholds"], workspace)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], workspace).stdout
    assert "f1-thresholds" in shown and "evaluate.threshold_beta" in shown


@pytest.mark.slow
def test_temp_experiment_logs_into_the_workspace_store(workspace):
    from mlflow.tracking import MlflowClient

    # Only what the binary model needs: the run lands in the store all the same.
    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.003", "--name", "temp-lr", "evaluate@binary"], workspace)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    tagged = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'temp-lr'")
    assert [r.info.run_name for r in tagged] == ["binary"]
    assert tagged[0].data.params["train.lr"] == "0.003" and "test_macro_f1" in tagged[0].data.metrics


@pytest.mark.slow
def test_score_command_rewrites_the_evaluate_stage_eval_json(reproduced, tmp_path):
    """The evaluate stage scores its prediction files with the same code as `python -m retinaseg.score`."""
    for variant in VARIANTS:
        task = json.loads((reproduced / "models" / variant / "run.json").read_text())["task"]
        out = tmp_path / f"{variant}.json"
        run([sys.executable, "-m", "retinaseg.score", "--reference", "data/prepared/test",
             "--predictions", f"data/predictions/{variant}", "--task", task,
             "--rules", f"metrics/eval/{variant}/eval.json", "--out", str(out)], reproduced)
        assert out.read_bytes() == (reproduced / "metrics" / "eval" / variant / "eval.json").read_bytes()


@pytest.mark.slow
def test_a_task_added_in_params_is_prepared_trained_evaluated_and_compared(workspace):
    """dvc.yaml lists no task: its stages come from `tasks` in params.yaml."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["tasks"]["bright"] = {"exudates": ["hardexudates", "softexudates"]}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = run(["dvc", "stage", "list", "--name-only"], workspace).stdout.split()
    assert {"train@bright", "evaluate@bright"} <= set(stages)
    ran = ran_stages(run(["dvc", "repro", "evaluate@bright"], workspace).stdout)  # not the other tasks' retraining
    ran += ran_stages(run(["dvc", "repro", "--single-item", "compare"], workspace).stdout)
    assert ran == ["augment", "evaluate@bright", "prepare", "source", "train@bright", "compare"]
    evaluation = json.loads((workspace / "metrics" / "eval" / "bright" / "eval.json").read_text())
    assert evaluation["lesion_classes"] == ["exudates"]
    assert "| bright | scratch | exudates |" in (workspace / "metrics" / "comparison.md").read_text()
    assert (workspace / "data" / "prepared" / "train" / "masks_bright.npy").exists()


@pytest.mark.slow
def test_a_changed_file_in_a_local_source_reruns_fetch_and_an_unchanged_one_nothing(workspace):
    import time

    from PIL import Image

    source = workspace / "local_copy"
    shutil.copytree(workspace / "data" / "raw", source)
    set_params(workspace, {"data": {"source": str(source)}})
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["compare", "fetch", "source"], \
        "the same files from another place: prepare and training stay as they are (compare declares data.source)"
    started = time.perf_counter()
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["source"]
    assert time.perf_counter() - started <= 3.0, "an unchanged source costs a no-op repro at most 3 s"
    maps = sorted((source / "resources" / "images" / "ddb1_groundtruth" / "hemorrhages").glob("*.png"))
    pixels = np.array(Image.open(maps[0]))
    pixels[:8, :8] = 21
    Image.fromarray(pixels).save(maps[0])
    assert ran_stages(run(["dvc", "repro", "fetch"], workspace).stdout) == ["fetch", "source"]


@pytest.mark.slow
def test_same_inputs_give_byte_identical_eval_json_and_an_empty_metrics_diff(workspace, reproduced):
    run(["dvc", "repro", "--force", "--single-item", "evaluate@binary", "evaluate_transfer"], workspace)
    for variant in ("binary", "multiclass_transfer"):
        path = Path("metrics") / "eval" / variant / "eval.json"
        assert (workspace / path).read_bytes() == (reproduced / path).read_bytes()
    assert run(["dvc", "metrics", "diff", "--json"], workspace).stdout.strip() in ("", "{}")
