"""A real `dvc repro` of the whole pipeline on a tiny configuration, in a temporary git repo, read back.

The pipeline is reproduced once per run (the ``reproduced`` fixture, tests/conftest.py); the
tests here only read it. Tests that change it get their own copy: tests/test_experiments.py.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from project import LESION_CLASSES, PROJECT, VARIANTS, free_port, run, server_process

from retinaseg.evaluation import froc


@pytest.mark.slow
def test_repro_writes_every_declared_output(reproduced):
    repo = reproduced
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert {"data/raw", "data/prepared", "data/augmented", "models/binary", "metrics/comparison.md",
            "data/predictions/multiclass_transfer", "metrics/train/binary/train_curve.tsv",
            "metrics/train/binary/mlflow_run.json", "metrics/eval/binary/eval.json"} <= set(outs)
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
            assert 0 <= core["froc"]["cpm"] <= 1 and set(core["froc"]["sensitivity_at_fp"]) == set(froc.CPM_RATES)
            assert {"sensitivity_at_1_fp", "sensitivity_at_2_fp"} <= set(core["froc"])
            low, high = core["bootstrap"]["cpm_ci95"]
            assert low is None or low <= high
            truth = evaluation[name]["truth"]  # the tiny data is realistic synthetic: its truth is known
            assert truth["froc"]["n_lesions"] == truth["lesion"]["n_reference_lesions"] > 0
            assert {"by_kind", "by_size", "by_annotators"} <= set(truth["froc"])
            for reference in ("core", "truth"):
                froc_curve = json.loads((repo / "metrics" / "eval" / variant / "froc" /
                                         f"{name}_{reference}.json").read_text())
                assert len(froc_curve) == len(froc.SWEEP_THRESHOLDS)
        assert len(list((repo / "metrics" / "eval" / variant / "overlays").glob("*.png"))) == 1
    table = (repo / "metrics" / "comparison.md").read_text()
    assert "| binary | scratch | hemorrhages |" in table and "| multiclass_transfer | binary | red |" in table
    assert (repo / "metrics" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(repo.rglob(".*.partial-*"))
    assert not (repo / "checkpoints").exists() or not any((repo / "checkpoints").iterdir()), "progress removed"


@pytest.mark.slow
def test_dvc_metrics_are_the_few_deciding_figures_under_keys_unique_across_models(reproduced):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced).stdout)
    files = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    expected = {f"metrics/{kind}/{variant}/{name}" for variant in VARIANTS
                for kind, name in (("train", "train.json"), ("eval", "summary.json"))}
    assert set(files) == expected, "eval.json is an output, not a metric"
    keys = {}
    for path, content in files.items():
        (key, figures), = content["data"].items()
        keys.setdefault(key, set()).update(figures)
    assert keys["binary"] == {"hemorrhages", "found", "fp", "area", "best_val_dice", "train_s"}
    assert keys["transfer"] == {"red", "bright", "found", "fp", "area", "best_val_dice", "train_s"}
    assert set(keys) == {"binary", "multiclass", "transfer"}, "one key per model: DVC adds no file prefix"
    evaluation = json.loads((reproduced / "metrics" / "eval" / "binary" / "eval.json").read_text())
    figures = files["metrics/eval/binary/summary.json"]["data"]["binary"]
    assert figures["hemorrhages"] == {"cpm": evaluation["hemorrhages"]["core"]["froc"]["cpm"],
                                      "dice": evaluation["hemorrhages"]["core"]["micro"]["f1"]}
    assert figures["found"] == evaluation["hemorrhages"]["core"]["lesion"]["lesion_sensitivity"]


@pytest.mark.slow
def test_transfer_starts_from_the_binary_model_and_depends_on_it(reproduced):
    repo = reproduced
    binary = json.loads((repo / "metrics" / "train" / "binary" / "mlflow_run.json").read_text())
    linked = json.loads((repo / "metrics" / "train" / "multiclass_transfer" / "mlflow_run.json").read_text())
    transfer = json.loads((repo / "models" / "multiclass_transfer" / "run.json").read_text())
    assert transfer["init_from"] == "binary" and linked["init_from_run_id"] == binary["run_id"]
    assert transfer["frozen_encoder_epochs"] == 1 and transfer["epochs"] == 2
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "models/binary" in [dep["path"] for dep in lock["stages"]["transfer"]["deps"]]
    assert "models/binary" not in [dep["path"] for dep in lock["stages"]["train@multiclass"]["deps"]]


@pytest.mark.slow
def test_plots_show_renders_curves_and_overlays(reproduced, tmp_path):
    repo = reproduced
    run(["dvc", "plots", "show", "--out", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    for fragment in ("train_curve.tsv", "pr_curves", "overlays", "comparison.png", "froc.json", '"type": "log"'):
        assert fragment in page, fragment


@pytest.mark.slow
def test_mlflow_holds_one_run_per_task_with_params_and_metrics(reproduced):
    repo = reproduced
    import keras
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    runs = {run.data.tags["variant"]: run for run in client.search_runs([experiment.experiment_id])}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    hashes = {out["path"]: out["md5"].removesuffix(".dir") for stage in ("prepare", "augment")
              for out in lock[stage]["outs"]}
    assert set(runs) == set(VARIANTS)
    for variant, found in runs.items():  # named after the model and the commit it was trained from
        name, _, commit = found.info.run_name.partition("@")
        assert name == variant and len(commit) >= 7 and found.data.tags["git_commit"].startswith(commit)
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
        for figure in ("core_cpm", "core_sensitivity_at_1_fp", "core_outside_marks_cpm", "truth_cpm"):
            assert any(name.endswith(f"_{figure}") for name in run.data.metrics), figure
        assert {"evaluation/froc"} <= set(artifacts)
        comparison = [a.path for a in client.list_artifacts(run.info.run_id, "comparison")]
        assert comparison == ["comparison/comparison.md", "comparison/comparison.png"]
        contexts = {tag.value: entry.dataset for entry in run.inputs.dataset_inputs for tag in entry.tags
                    if tag.key == "mlflow.data.context"}
        assert {name: dataset.name for name, dataset in contexts.items()} == {
            "training": "data/augmented", "validation": "data/prepared/train", "test": "data/prepared/test"}
        assert contexts["test"].digest == contexts["validation"].digest == hashes["data/prepared"]
        assert contexts["training"].digest == hashes["data/augmented"]
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        assert model.metadata.metadata["classes"] == json.loads(
            (repo / "models" / variant / "run.json").read_text())["classes"]
        assert model.metadata.saved_input_example_info is not None
        requirements = Path(mlflow.pyfunc.get_model_dependencies(f"runs:/{run.info.run_id}/model")).read_text()
        assert {f"keras=={keras.__version__}", f"numpy=={np.__version__}"} <= set(requirements.split())
        planes = 1 if variant == "binary" else 3
        assert list(model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
        assert model.predict(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, planes)
    assert experiment.artifact_location == (repo / "mlruns").as_uri()


@pytest.mark.slow
def test_registry_holds_each_task_with_the_best_version_as_champion(reproduced):
    """Evaluation registers every model of a task; `champion` is on the best mean core Dice, recomputed here."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{reproduced}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("retinal-lesion-segmentation")
    runs = {run.data.tags["variant"]: run for run in client.search_runs([experiment.experiment_id])}
    for task, variants in (("binary", ["binary"]), ("multiclass", ["multiclass", "multiclass_transfer"])):
        versions = client.search_model_versions(f"name = 'retinaseg-{task}'")
        assert sorted(version.tags["variant"] for version in versions) == variants
        scores = {}
        for version in versions:
            mlflow_run = runs[version.tags["variant"]]
            assert version.run_id == mlflow_run.info.run_id
            score = float(np.mean([mlflow_run.data.metrics[f"test_{name}_core_f1"] for name in LESION_CLASSES[task]]))
            assert float(version.tags["test_core_dice"]) == pytest.approx(score, abs=1e-12)
            scores[int(version.version)] = score
        champion = client.get_model_version_by_alias(f"retinaseg-{task}", "champion")
        best = max(scores.values())
        assert int(champion.version) == min(number for number, score in scores.items() if score == best), scores


@pytest.mark.slow
def test_the_served_champion_answers_as_predict(reproduced, tmp_path):
    """`mlflow models serve` of the registry's champion, posted the image predict fed the model, answers its
    probabilities; predict loads the same alias from the project's store."""
    model, port = "models:/retinaseg-multiclass@champion", free_port()
    image = reproduced / "data" / "raw" / "resources" / "images" / "ddb1_fundusimages" / "image006.png"  # a test image
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{reproduced}/mlflow.db"}
    serve = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    out, url = tmp_path / "predicted", f"http://127.0.0.1:{port}"
    (tmp_path / "serve").mkdir()
    with server_process(serve, tmp_path / "serve", env, f"{url}/ping") as wait_until_ready:
        run([str(Path(sys.executable).with_name("retinaseg-predict")), str(image), "--model", model, "--out",
             str(out), "--save-probabilities"], reproduced)  # meanwhile; the store is the project's own
        wait_until_ready()
        model_input = np.load(out / "image006_input.npy")
        answer = requests.post(f"{url}/invocations", json={"inputs": model_input[None].astype(np.float32).tolist()},
                               timeout=60)
    assert answer.status_code == 200, answer.text
    served = np.asarray(answer.json()["predictions"], dtype=np.float32)
    assert model_input.shape == (32, 32, 3) and served.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(served.sum(axis=-1), 1, atol=1e-5)  # softmax over background, red, bright
    assert np.abs(served[0] - np.load(out / "image006_probabilities.npy")).max() <= 1e-5
    assert np.load(out / "image006.npy").shape == (116, 150, 3)


@pytest.mark.slow
def test_score_command_rewrites_the_evaluate_stage_eval_json(reproduced, tmp_path):
    """The evaluate stage scores its prediction files with the same code as `retinaseg-score`."""
    for variant in VARIANTS:
        task = json.loads((reproduced / "models" / variant / "run.json").read_text())["task"]
        out = tmp_path / f"{variant}.json"
        run([str(Path(sys.executable).with_name("retinaseg-score")), "--reference", "data/prepared/test",
             "--predictions", f"data/predictions/{variant}", "--task", task,
             "--rules", f"metrics/eval/{variant}/eval.json", "--out", str(out)], reproduced)
        assert out.read_bytes() == (reproduced / "metrics" / "eval" / variant / "eval.json").read_bytes()
