"""The one loader of a trained model and the settings it was trained with (its run.json).

Training (transfer), evaluation and ``predict`` all load through ``load_trained``, so a
missing or unreadable model gives the same one-line error everywhere.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaseg.core.errors import PipelineError, one_line
from retinaseg.core.outputs import RunRecord
from retinaseg.core.tasks import Task
from retinaseg.tracking import mlflow_runs

_HELP = ("pass a model.keras file, a models/<variant> folder (`dvc repro` trains them) "
         "or an MLflow URI such as runs:/<run_id>/model or models:/retinaseg-<task>@champion")


@dataclass(frozen=True)
class TrainedModel:
    """A loaded Keras model, its task and the preprocessing it was trained with."""

    model: Any
    run: RunRecord
    task: Task
    image_size: int
    crop_to_fundus: bool
    location: str

    def require(self, key: str) -> Any:
        """A run.json entry that the caller cannot do without (older run.json files lack some)."""
        written = self.run.as_written()
        if key not in written:
            raise PipelineError(f"{self.location}: its run.json has no {key!r}; retrain it with `dvc repro`")
        return written[key]


def is_mlflow_uri(spec: str) -> bool:
    """MLflow's own schemes have a single slash (runs:/, models:/); any other has '://'."""
    return spec.startswith(("runs:/", "models:/")) or "://" in spec


def load_trained(spec: str | Path) -> TrainedModel:
    """Load a model file, a ``models/<variant>`` folder or an MLflow model URI, with its run.json.

    MLflow URIs: ``runs:/<run_id>/model``, or from the Model Registry (``registry``)
    ``models:/retinaseg-<task>/<version>`` and ``models:/retinaseg-<task>@champion``.
    """
    spec = str(spec)
    if is_mlflow_uri(spec):
        model, run = _load_mlflow(spec)
    else:
        model_file = _model_file(Path(spec))
        model, run = _load_keras(model_file), _read_run(model_file.parent / "run.json")
    return _trained(model, run, spec)


def _model_file(path: Path) -> Path:
    model_file = path / "model.keras" if path.is_dir() or not path.suffix else path
    if not model_file.is_file():
        raise PipelineError(f"{model_file}: missing; {_HELP}")
    return model_file


def _load_keras(path: Path):
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors and more for bad files
        raise PipelineError(f"{path}: not a readable Keras model ({type(error).__name__}: {one_line(error)}); "
                            f"{_HELP}") from None


def _read_run(path: Path) -> RunRecord | None:
    """The run.json at ``path``; None without one, since the settings can then be read from the model."""
    return RunRecord.read(path) if path.is_file() else None


def _load_mlflow(uri: str) -> tuple[Any, RunRecord | None]:
    """The Keras model behind an MLflow URI, and the run.json of its run if it has one.

    The store is only read, so no experiment is created (unlike ``mlflow_runs.setup``), and a
    missing sqlite file is an error rather than a new empty store in the current folder.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    store = mlflow_runs.tracking_uri()
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        raise PipelineError(f"{uri}: no MLflow store at {store}; run from the project folder "
                            "or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one output line per image
    try:
        model = mlflow.tensorflow.load_model(uri)
    except (MlflowException, OSError, ValueError) as error:
        raise PipelineError(f"{uri}: cannot load it from {store} ({type(error).__name__}: {one_line(error)}); "
                            "check the run id, model name, version or alias with "
                            f"`mlflow ui --backend-store-uri {store}`") from None
    return model, _mlflow_run_json(uri)


def _mlflow_run_json(uri: str) -> RunRecord | None:
    """The settings the model was logged with (its metadata), else run.json from the artifact root of the run
    that logged it; None if neither is there.

    Older runs lack both, and some URIs resolve to no run, so every failure means "absent".
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
        if info.metadata and "classes" in info.metadata:
            return RunRecord.parse(dict(info.metadata), f"the metadata of {uri}")
        run_id = info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json", dst_path=tmp)
            return _read_run(Path(path))
    except (MlflowException, OSError, ValueError, TypeError):
        return None


def _trained(model, run: RunRecord | None, spec: str) -> TrainedModel:
    """Merge run.json over defaults read from the model, noting what had to be guessed."""
    if "scale_to_unit" not in [layer.name for layer in model.layers[:2]]:
        raise PipelineError(f"{spec}: the model does not scale pixel values itself (trained by an older "
                            "version, which fed it values divided by 255); retrain it with `dvc repro`")
    size, planes = model.input_shape[1], model.output_shape[-1]
    guess = Task.from_planes("", [f"class{i}" for i in range(1, planes + 1)] if planes == 1
                             else ["background", *(f"class{i}" for i in range(1, planes))])
    defaults = {"task": guess.kind, "classes": guess.plane_names, "image_size": size, "crop_to_fundus": True}
    run = run or RunRecord()
    written = run.as_written()
    guessed = [key for key in defaults if key not in written]
    if guessed:
        missing = f"the run.json of {spec} lacks {', '.join(guessed)}" if written else f"no run.json found for {spec}"
        print(f"note: {missing}; using " + ", ".join(f"{key}={defaults[key]}" for key in guessed))
    settings = {**defaults, **{key: written[key] for key in defaults if key in written}}
    if len(settings["classes"]) != planes or settings["image_size"] != size:
        raise PipelineError(f"{spec}: run.json says {len(settings['classes'])} classes at "
                            f"{settings['image_size']} px but the model has {planes} planes at {size} px; "
                            "pass the run.json written with this model")
    return TrainedModel(model, run, Task.from_planes(settings["task"], settings["classes"]), settings["image_size"],
                        settings["crop_to_fundus"], spec)


def predict_batches(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class probabilities for uint8 images (the model scales pixels itself), in batches to bound memory."""
    return np.concatenate([model.predict(images[start:start + batch_size].astype(np.float32), verbose=0)
                           for start in range(0, len(images), batch_size)])
