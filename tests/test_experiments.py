"""Changes to a reproduced tiny project: params, experiments, a new task, a changed source.

Each test works on its own copy of the reproduced project (the ``workspace`` fixture,
tests/conftest.py), so every test holds in any order.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from project import ran_stages, run, set_params


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
    run(["dvc", "exp", "run", "-S", "evaluate.operating_point=f_beta", "-S", "evaluate.threshold_beta=1",
         "--name", "f1-thresholds"], workspace)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], workspace).stdout
    assert "f1-thresholds" in shown and "evaluate.threshold_beta" in shown and "evaluate.operating_point" in shown
    header = shown.splitlines()[0].split(",")
    assert "binary.hemorrhages.cpm" in header and "transfer.train_s" in header
    transfer_params = {f"transfer.{key}" for key in yaml.safe_load((workspace / "params.yaml").read_text())["transfer"]}
    figures = [column for column in header if column.startswith(("binary.", "multiclass.", "transfer."))
               and column not in transfer_params]
    assert len(figures) == 25 and max(map(len, figures)) <= 30
    assert not [column for column in header if ".json:" in column], "keys unique across files: no file prefixes"
    evaluation = json.loads((workspace / "metrics" / "eval" / "binary" / "eval.json").read_text())
    assert evaluation["operating_point"] == "f_beta" and evaluation["threshold_beta"] == 1.0


@pytest.mark.slow
def test_temp_experiment_logs_into_the_workspace_store(workspace):
    from mlflow.tracking import MlflowClient

    # Only what the binary model needs: the run lands in the store all the same.
    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.003", "--name", "temp-lr", "evaluate@binary"], workspace)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    tagged = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'temp-lr'")
    assert [r.info.run_name for r in tagged] == ["binary@temp-lr"], "the run is named after its experiment"
    assert tagged[0].data.params["train.lr"] == "0.003" and "test_macro_f1" in tagged[0].data.metrics


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
    from PIL import Image

    source = workspace / "local_copy"
    shutil.copytree(workspace / "data" / "raw", source)
    set_params(workspace, {"data": {"source": str(source)}})
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["compare", "fetch", "source"], \
        "the same files from another place: prepare and training stay as they are (compare declares data.source)"
    # An unchanged source reruns nothing (its cost is timed by `python -m benchmarks --only dvc_noop`, not here).
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["source"]
    maps = sorted((source / "resources" / "images" / "ddb1_groundtruth" / "hemorrhages").glob("*.png"))
    pixels = np.array(Image.open(maps[0]))
    pixels[:8, :8] = 21
    Image.fromarray(pixels).save(maps[0])
    assert ran_stages(run(["dvc", "repro", "fetch"], workspace).stdout) == ["fetch", "source"]


@pytest.mark.slow
def test_same_inputs_give_the_same_model_hash_byte_identical_eval_json_and_no_metrics_diff(workspace, reproduced):
    """A retrained model is the same DVC output (nothing machine- or time-dependent in models/), as in two clones."""
    run(["dvc", "repro", "--force", "--single-item", "train@binary", "evaluate@binary", "evaluate_transfer"], workspace)

    def model_hashes(repo):
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        return [out["md5"] for out in lock["stages"]["train@binary"]["outs"] if out["path"] == "models/binary"]

    assert model_hashes(workspace) == model_hashes(reproduced) != []
    for variant in ("binary", "multiclass_transfer"):
        path = Path("metrics") / "eval" / variant / "eval.json"
        assert (workspace / path).read_bytes() == (reproduced / path).read_bytes()
    changed = json.loads(run(["dvc", "metrics", "diff", "--json"], workspace).stdout or "{}")
    assert set(changed) <= {"metrics/train/binary/train.json"}, "only the training seconds may differ"
    assert set(changed.get("metrics/train/binary/train.json", {})) <= {"binary.train_s"}
