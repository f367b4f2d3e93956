"""Model Registry: every evaluated model is a version of ``retinaseg-<task>``; the best one has the alias ``champion``.

The champion score (tag ``test_core_dice`` of each version) is the mean over the task's
lesion classes of the test Dice against the lesion core, ``test_<class>_core_f1`` as
evaluation logs it (micro: pooled over every test pixel). The core (the annotators'
agreement, ``prepare.core_threshold``) is the same reference whatever a model was trained
on, so models of one task trained from scratch, transferred or on another target compare
fairly. ``models:/retinaseg-multiclass@champion`` is thus the better of ``multiclass`` and
``multiclass_transfer`` (tag ``variant``) over every run ever evaluated into the store.
A higher score wins; on a tie the older version keeps the alias. Scores compare only
between runs scored on the same test images and core: an experiment that changes the data
or the split (``data``, ``prepare.train_ids``, ``prepare.core_threshold``) should log to
another store (``MLFLOW_TRACKING_URI``), or its versions compete on another test set.

Evaluate stages may register at once (queued experiments, ``dvc queue start -j 2``).
What can race, and why the result is still right:

- creating the registered model: the loser gets "already exists" and goes on;
- version numbers: the store takes ``max + 1`` in a transaction and retries on a clash;
- the alias: each stage reads every version and sets the best, but its read may miss a
  version created just after. So a stage sets the alias, then reads again and repeats
  until a read shows the alias on the best version: the last stage to register reads after
  every version exists, so the alias ends on the best of all of them.

On a SQLite store the whole registration also holds the store's lock (``mlflow_runs.store_lock``),
so there it runs one at a time.
"""

from __future__ import annotations

import math
from typing import Any

from retinaseg.core.errors import PipelineError
from retinaseg.tracking import mlflow_runs

CHAMPION = "champion"
SCORE_TAG = "test_core_dice"
VARIANT_TAG = "variant"
#: The name training logs the model under (``mlflow.tensorflow.log_model(..., name="model")``).
LOGGED_MODEL = "model"
#: Rounds of "set the alias, read again" before giving up; each one needs a new version meanwhile.
CROWN_ATTEMPTS = 10


def model_name(task: str) -> str:
    return f"retinaseg-{task}"


def champion_score(metrics: dict[str, float], lesion_classes: list[str]) -> float | None:
    """Mean of ``test_<class>_core_f1`` over the lesion classes; None when a class has none.

    A class lacks it only when the test core has no lesion pixel and none was predicted
    (Dice 0/0): such a model cannot be ranked, so it never becomes champion.
    """
    values = [metrics.get(f"test_{name}_core_f1") for name in lesion_classes]
    if not values or any(value is None or math.isnan(value) for value in values):
        return None
    return sum(values) / len(values)


def register(run_id: str, task: str, variant: str, score: float | None) -> tuple[Any, Any]:
    """Register the run's logged model as a version of ``retinaseg-<task>`` and crown the best version.

    A run registered before (evaluated again) keeps its version, with the new score.
    Returns (this run's version, the champion version or None).
    """
    from mlflow import MlflowClient

    uri = mlflow_runs.tracking_uri()
    name = model_name(task)
    tags = {VARIANT_TAG: variant, SCORE_TAG: "none" if score is None else repr(score)}
    client = MlflowClient(uri, registry_uri=uri)
    with mlflow_runs.store_lock(uri):
        version = _version_of_run(client, name, run_id)
        if version is None:
            version = _create_version(client, name, run_id, tags)
        else:
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
        return version, crown(client, name)


def _version_of_run(client, name: str, run_id: str):
    versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    return min(versions, key=lambda version: int(version.version)) if versions else None


def _create_version(client, name: str, run_id: str, tags: dict[str, str]):
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = _logged_model_id(client, run_id)
    return client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, tags=tags,
                                       model_id=model_id)


def _logged_model_id(client, run_id: str) -> str:
    """The id of the model the run logged as ``model`` (the last one, if training logged it again)."""
    outputs = client.get_run(run_id).outputs
    logged = [output for output in (outputs.model_outputs if outputs else [])
              if client.get_logged_model(output.model_id).name == LOGGED_MODEL]
    if not logged:
        raise PipelineError(f"MLflow run {run_id} in {mlflow_runs.tracking_uri()} has no logged model "
                            f"{LOGGED_MODEL!r}; retrain it with `dvc repro --force` on its train stage")
    return max(logged, key=lambda output: output.step).model_id


def crown(client, name: str):
    """Put ``champion`` on the best-scored version of ``name`` and return that version (None if none is scored).

    Reads again after each change until a read shows the alias on the best version: see the
    module's note on concurrent registrations.
    """
    for _ in range(CROWN_ATTEMPTS):
        best = best_version(_all_versions(client, name))
        if best is None:
            return None
        if str(client.get_registered_model(name).aliases.get(CHAMPION)) == str(best.version):
            return best
        client.set_registered_model_alias(name, CHAMPION, str(best.version))
    raise PipelineError(f"registered model {name} in {mlflow_runs.tracking_uri()}: alias {CHAMPION!r} still moving "
                        f"after {CROWN_ATTEMPTS} rounds of new versions; run this evaluate stage again when the "
                        "others have ended")


def best_version(versions: list) -> Any:
    """The version with the highest score tag; on a tie the oldest. None when no version has a score."""
    scored = [(float(version.tags[SCORE_TAG]), -int(version.version), version) for version in versions
              if _is_number(version.tags.get(SCORE_TAG))]
    return max(scored, key=lambda row: row[:2])[2] if scored else None


def _is_number(text: str | None) -> bool:
    try:
        return text is not None and not math.isnan(float(text))
    except ValueError:
        return False


def _all_versions(client, name: str) -> list:
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions
