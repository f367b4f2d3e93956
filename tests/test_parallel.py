"""Experiments run in parallel from DVC's queue: every one succeeds and logs to MLflow.

Four queued experiments with different ``train.lr``, run two at a time (``dvc queue start
-j 2``) on a copy of the project without ``mlflow.db``, so the first two start together: their
train stages create the SQLite store and the MLflow experiment at the same moment, then both
log into it concurrently. To stay short each experiment reproduces ``evaluate@binary`` and what
it needs. As the README says, the stages every experiment shares (fetch, prepare, augment) are
reproduced once before the experiments are queued: then every worker skips them. Run by two
workers at once, they would race on the same entry of DVC's run cache, and one of the two
experiments fails now and then (treeverse/dvc#10673; ``python -m benchmarks.queue`` counts it).
"""

import csv

import pytest
import yaml
from project import ran_stages, run, tiny_project

from benchmarks.queue import (
    LEARNING_RATES,
    SHARED,
    error_lines,
    queue_experiments,
    start_queue,
    wait_for_queue,
)
from retinaseg.tracking import mlflow_runs

VARIANT = "binary"


@pytest.fixture
def fresh_project(tmp_path):
    """The project copied into a new git repo with tiny params, committed, never reproduced."""
    return tiny_project(tmp_path / "project")


@pytest.mark.slow
def test_queued_experiments_run_two_at_a_time_and_all_log_to_mlflow(fresh_project, tmp_path):
    from mlflow.tracking import MlflowClient

    repo = fresh_project
    run(["dvc", "repro", SHARED], repo)  # the stages every experiment shares, once, before queueing
    assert not (repo / "mlflow.db").exists()
    queue_experiments(repo)
    start_queue(repo, tmp_path / "queue-start.log")
    try:
        statuses, seconds = wait_for_queue(repo)
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)  # the idle workers would linger for a minute
    if statuses != dict.fromkeys(LEARNING_RATES, "Success"):
        pytest.fail(f"queue ended as {statuses} after {seconds:.0f} s; errors:\n" + "\n".join(
            f"{name}: {line}" for name, status in statuses.items() if status != "Success"
            for line in error_lines(run(["dvc", "queue", "logs", name], repo, check=False).stdout)))
    print(f"\n{len(LEARNING_RATES)} queued experiments, 2 at a time: {seconds:.0f} s")
    for name in LEARNING_RATES:
        ran = ran_stages(run(["dvc", "queue", "logs", name], repo).stdout)
        assert not {"fetch", "prepare", "augment"} & set(ran), f"{name} ran {ran}: shared stages must be skipped"
        assert {"train@binary", "evaluate@binary"} <= set(ran)

    table = list(csv.DictReader(run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout.splitlines()))
    shown = {row["Experiment"]: row for row in table if row["Experiment"]}
    for name, lr in LEARNING_RATES.items():
        assert float(shown[name]["train.lr"]) == float(lr), table

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    ours = [e for e in client.search_experiments() if e.name == mlflow_runs.EXPERIMENT]
    assert len(ours) == 1
    assert ours[0].artifact_location == (repo / "mlruns").as_uri()
    runs = client.search_runs([ours[0].experiment_id], max_results=1000)
    assert len(runs) == len(LEARNING_RATES)
    epochs = yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"]
    for name, lr in LEARNING_RATES.items():
        (mlflow_run,) = [r for r in runs if r.data.tags.get("dvc_exp_name") == name]
        assert mlflow_run.info.run_name == f"{VARIANT}@{name}" and mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.params["train.lr"] == lr
        assert mlflow_run.data.params["train.epochs"] == str(epochs)
        assert len(client.get_metric_history(mlflow_run.info.run_id, "loss")) == epochs
        assert {"best_epoch", "test_macro_f1", "test_hemorrhages_f1"} <= set(mlflow_run.data.metrics)
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two runs overlapped in time"
