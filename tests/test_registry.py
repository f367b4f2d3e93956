"""Model Registry: each evaluated run becomes a version of retinaseg-<task>; the best-scored one is `champion`.

Runs here log a model entity named "model" (as training's ``log_model(name="model")`` does)
without files: registering reads only the entity, so the tests stay fast.
"""

import math
import os
import subprocess
import sys
import time

import pytest
from helpers import one_line_error

from retinaseg.evaluation import registry
from retinaseg.tracking import mlflow_runs


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A new SQLite store in ``tmp_path`` as MLFLOW_TRACKING_URI; returns the experiment id."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow_runs.setup()


def run_with_model(experiment_id, model_name="model"):
    """A finished run that logged a model entity called ``model_name``; returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput

    client = MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    model = client.create_logged_model(experiment_id, name=model_name, source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.set_terminated(run_id)
    return run_id


def champion_of(task):
    from mlflow import MlflowClient

    return str(MlflowClient().get_registered_model(registry.model_name(task)).aliases[registry.CHAMPION])


def test_champion_score_is_the_mean_core_dice_over_lesion_classes():
    metrics = {"test_red_core_f1": 0.2, "test_bright_core_f1": 0.6, "test_red_f1": 0.9, "test_macro_f1": 0.9}
    assert registry.champion_score(metrics, ["red", "bright"]) == pytest.approx(0.4)
    assert registry.champion_score(metrics, ["red"]) == 0.2
    assert registry.champion_score(metrics, ["red", "exudates"]) is None  # a class without a Dice
    assert registry.champion_score({"test_red_core_f1": math.nan}, ["red"]) is None


def test_versions_are_tagged_and_the_best_score_is_champion(store):
    from mlflow import MlflowClient

    runs = [run_with_model(store) for _ in range(3)]
    scores = [0.2, 0.5, 0.4]
    champions = []
    for index, (run_id, score) in enumerate(zip(runs, scores)):
        version, champion = registry.register(run_id, "multiclass", f"variant{index}", score)
        assert str(version.version) == str(index + 1) and version.run_id == run_id
        champions.append(str(champion.version))
    assert champions == ["1", "2", "2"]
    assert champion_of("multiclass") == "2"
    client = MlflowClient()
    for index, run_id in enumerate(runs):
        version = client.get_model_version("retinaseg-multiclass", str(index + 1))
        assert version.tags == {"variant": f"variant{index}", "test_core_dice": repr(scores[index])}
        assert version.source == f"models:/{client.get_run(run_id).outputs.model_outputs[0].model_id}"


def test_a_run_evaluated_again_keeps_its_version_with_the_new_score(store):
    from mlflow import MlflowClient

    first, second = run_with_model(store), run_with_model(store)
    registry.register(first, "binary", "binary", 0.5)
    registry.register(second, "binary", "binary", 0.3)
    version, champion = registry.register(second, "binary", "binary", 0.7)
    assert str(version.version) == "2" and str(champion.version) == "2"
    versions = MlflowClient().search_model_versions("name = 'retinaseg-binary'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert MlflowClient().get_model_version("retinaseg-binary", "2").tags["test_core_dice"] == "0.7"


def test_a_tie_leaves_the_alias_on_the_older_version_and_an_unscored_one_never_wins(store):
    runs = [run_with_model(store) for _ in range(3)]
    registry.register(runs[0], "multiclass", "multiclass", 0.4)
    registry.register(runs[1], "multiclass", "multiclass_transfer", 0.4)
    _, champion = registry.register(runs[2], "multiclass", "multiclass", None)
    assert str(champion.version) == "1" and champion_of("multiclass") == "1"


def test_tasks_register_into_their_own_models(store):
    registry.register(run_with_model(store), "binary", "binary", 0.1)
    registry.register(run_with_model(store), "multiclass", "multiclass", 0.9)
    assert champion_of("binary") == "1" and champion_of("multiclass") == "1"


def test_a_stale_read_is_corrected_before_the_alias_is_left(store, monkeypatch):
    """Our read missed version 2, which the other stage then registered and crowned: our late write of
    version 1 is undone by our next read."""
    from mlflow import MlflowClient

    runs = [run_with_model(store) for _ in range(2)]
    registry.register(runs[0], "multiclass", "multiclass", 0.3)
    registry.register(runs[1], "multiclass", "multiclass", 0.8)
    assert champion_of("multiclass") == "2"  # the other stage is done
    client = MlflowClient()
    real = client.search_model_versions
    reads = []

    def first_read_misses_version_2(filter_string, **kwargs):
        page = real(filter_string, **kwargs)
        reads.append(filter_string)
        if len(reads) == 1:
            page[:] = [version for version in page if str(version.version) != "2"]
        return page

    monkeypatch.setattr(client, "search_model_versions", first_read_misses_version_2)
    assert str(registry.crown(client, "retinaseg-multiclass").version) == "2"
    assert champion_of("multiclass") == "2" and len(reads) == 3  # stale: set 1; fresh: set 2; fresh: done


def test_a_run_without_a_logged_model_is_named_with_the_fix(store):
    run_id = run_with_model(store, model_name="other")
    one_line_error(lambda: registry.register(run_id, "binary", "binary", 0.5),
                   f"MLflow run {run_id}", "no logged model 'model'", "dvc repro --force")


REGISTER = """
import sys, time
from pathlib import Path

import mlflow
from retinaseg.evaluation import registry

run_id, score, start = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
(start.parent / f"ready-{run_id}").touch()
while not start.exists():
    time.sleep(0.002)
registry.register(run_id, "multiclass", "multiclass", score)
"""


def test_stages_registering_at_once_all_get_a_version_and_the_best_is_champion(store, tmp_path):
    from mlflow import MlflowClient

    scores = [0.3, 0.9, 0.5]
    runs = [run_with_model(store) for _ in scores]
    (tmp_path / "register.py").write_text(REGISTER)
    start = tmp_path / "start"
    processes = [subprocess.Popen([sys.executable, str(tmp_path / "register.py"), run_id, str(score), str(start)],
                                  env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for run_id, score in zip(runs, scores)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < len(runs):  # every process has imported MLflow
            assert all(process.poll() is None for process in processes), "a process ended before the start"
            assert time.monotonic() < deadline, "processes not ready after 120 s"
            time.sleep(0.01)
        start.touch()
        results = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in processes] == [0] * len(scores), [err[-500:] for _, err in results]
    versions = MlflowClient().search_model_versions("name = 'retinaseg-multiclass'")
    assert sorted(v.run_id for v in versions) == sorted(runs)
    best = next(v for v in versions if v.run_id == runs[1])
    assert champion_of("multiclass") == str(best.version)
