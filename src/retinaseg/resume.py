"""Training progress kept outside the stage's outputs, so a killed training resumes where it stopped.

DVC deletes a stage's outputs before it reruns it, so after every epoch the state a
resumed run needs goes to a folder of its own (``checkpoints/<variant>/``): every model
variable (weights, batch-norm statistics, dropout seed states), the optimizer's variables,
the epochs' logs, the best model so far, the MLflow run id and the curve. With the same
inputs (the signature) a rerun continues from the last finished epoch and ends with the
same model as an uninterrupted run; with other inputs the folder is discarded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retinaseg.atomic import atomic_path, write_json
from retinaseg.errors import PipelineError

STATE, VARIABLES, OPTIMIZER = "state.json", "variables.npz", "optimizer.npz"
BEST_MODEL, CURVE = "best.keras", "train_curve.tsv"


def signature(*parts: Any) -> str:
    """A digest of everything that shapes a training run; a resumed run must match it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_signature(path: Path) -> str:
    """Size and modification time of a data file, as DVC's own state identifies an unchanged file."""
    status = path.stat()
    return f"{path.as_posix()}:{status.st_size}:{status.st_mtime_ns}"


class Progress:
    """The resumable state of one training run in ``folder``."""

    def __init__(self, folder: Path, run_signature: str) -> None:
        self.folder, self.signature = folder, run_signature

    def _saved(self) -> dict[str, Any] | None:
        """The state file as saved, or None when there is none (or a killed writer left it unreadable)."""
        try:
            return json.loads((self.folder / STATE).read_text())
        except (OSError, ValueError):
            return None

    def load(self) -> dict[str, Any] | None:
        """The saved state when it belongs to these inputs; otherwise the folder is cleared and None returned."""
        state = self._saved()
        if state is not None and state.get("signature") == self.signature:
            return state
        self.clear()
        return None

    def stale_run_id(self) -> str | None:
        """The MLflow run of a saved state that ``load`` would discard (other inputs), to end it as killed."""
        state = self._saved()
        return state.get("run_id") if state is not None and state.get("signature") != self.signature else None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        """An empty folder for a run that starts from epoch 0."""
        self.clear()
        self.folder.mkdir(parents=True)

    @property
    def best_model(self) -> Path:
        return self.folder / BEST_MODEL

    @property
    def curve(self) -> Path:
        return self.folder / CURVE

    def hand_over(self, model_file: Path, curve: Path) -> None:
        """Copy the best model and the curve to the stage's outputs once training has ended."""
        shutil.copyfile(self.best_model, model_file)
        shutil.copyfile(self.curve, curve)

    def restore(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Every model variable as saved, and the curve cut back to the saved epochs."""
        with np.load(self.folder / VARIABLES) as saved:
            values = [saved[f"v{index}"] for index in range(len(saved.files))]
        if [value.shape for value in values] != [tuple(variable.shape) for variable in model.variables]:
            raise PipelineError(f"{self.folder}: saved for another model; delete the folder to start afresh")
        for variable, value in zip(model.variables, values):
            variable.assign(value)
        if self.curve.exists():
            lines = self.curve.read_bytes().splitlines(keepends=True)
            self.curve.write_bytes(b"".join(lines[:1 + state["epoch"]]))

    def restore_optimizer(self, model: keras.Model) -> None:
        """The optimizer's variables (moments, step count) of the phase being resumed."""
        model.optimizer.build(model.trainable_variables)
        with np.load(self.folder / OPTIMIZER) as saved:
            for index, variable in enumerate(model.optimizer.variables):
                variable.assign(saved[f"v{index}"])


class SaveProgress(keras.callbacks.Callback):
    """After every epoch, write the state a killed run resumes from; each file replaced atomically.

    MLflow's Keras callback logs each epoch's metrics in the background: they are flushed
    before the state names the epoch done, so a run killed right after it keeps them.
    """

    def __init__(self, progress: Progress, run_id: str, history: list[dict[str, float]]) -> None:
        super().__init__()
        self.progress, self.run_id, self.history = progress, run_id, history

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import mlflow

        mlflow.flush_async_logging()
        self.progress.folder.mkdir(parents=True, exist_ok=True)
        self.history.append({key: float(value) for key, value in (logs or {}).items()})
        for name, variables in ((VARIABLES, self.model.variables), (OPTIMIZER, self.model.optimizer.variables)):
            with atomic_path(self.progress.folder / name) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **{f"v{index}": np.asarray(variable) for index, variable in enumerate(variables)})
        write_json(self.progress.folder / STATE, {"signature": self.progress.signature, "epoch": epoch + 1,
                                                   "run_id": self.run_id, "history": self.history})
