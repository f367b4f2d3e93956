"""Training progress kept outside the stage's outputs, so a stopped or killed training resumes where it stopped.

DVC deletes a stage's outputs before it reruns it, so the state a resumed run needs goes to
a folder of its own (``checkpoints/<variant>/``):

- ``run.json``: the inputs' signature and the MLflow run, written when the run starts;
- ``work/``: what Keras' callbacks write during the run (the best model so far, the curve);
- ``epoch-NNNN/``: the progress after epoch NNNN as one unit: every model variable (weights,
  batch-norm statistics, dropout seed states), the optimizer's variables, copies of the best
  model and the curve, and ``state.json`` with the epochs' logs and the sha256 of every file.
  A unit is written under a temporary name and renamed, so a kill leaves the one before whole.
  The last two units are kept.

A rerun with the same inputs (the signature) restores the newest unit whose files all match
its state and ends with the same model as an uninterrupted run; a damaged unit is named and
skipped, never a reason to stop. With other inputs the folder is discarded. ``exclusive``
keeps a second training of the same model out of the folder while one runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retinaseg.core.atomic import atomic_path, write_json
from retinaseg.core.errors import PipelineError

RUN, STATE, VARIABLES, OPTIMIZER = "run.json", "state.json", "variables.npz", "optimizer.npz"
BEST_MODEL, CURVE, WORK, UNIT = "best.keras", "train_curve.tsv", "work", "epoch-"
#: Units kept: the newest, and the one before in case the newest is found damaged.
KEPT_UNITS = 2


def signature(*parts: Any) -> str:
    """A digest of everything that shapes a training run; a resumed run must match it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_signature(path: Path) -> str:
    """Size and modification time of a data file, as DVC's own state identifies an unchanged file."""
    status = path.stat()
    return f"{path.as_posix()}:{status.st_size}:{status.st_mtime_ns}"


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Damaged(Exception):
    """A file of a progress unit that cannot be what its state says."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} {why}")


@dataclass
class Found:
    """What ``Progress.load`` found: the state to resume (or None), the damage it skipped (one line, or None),
    and the MLflow runs that no resume will continue (to be ended as KILLED)."""

    state: dict[str, Any] | None
    damage: str | None = None
    abandoned_runs: list[str] = field(default_factory=list)


class Progress:
    """The resumable state of one training run in ``folder``."""

    def __init__(self, folder: Path, run_signature: str) -> None:
        self.folder, self.signature = folder, run_signature
        self.unit: Path | None = None  # the unit being resumed

    @property
    def work(self) -> Path:
        return self.folder / WORK

    @property
    def best_model(self) -> Path:
        return self.work / BEST_MODEL

    @property
    def curve(self) -> Path:
        return self.work / CURVE

    def units(self) -> list[Path]:
        """The saved units, newest first."""
        found = [path for path in self.folder.glob(f"{UNIT}*") if path.is_dir() and path.name[len(UNIT):].isdigit()]
        return sorted(found, key=lambda path: int(path.name[len(UNIT):]), reverse=True)

    def load(self) -> Found:
        """The newest consistent unit saved for these inputs; every other unit is discarded.

        A run of other inputs is discarded whole (its MLflow run abandoned). A unit whose files do not
        all match its state is named in ``damage`` and skipped for the one before, or for epoch 0.
        """
        run = _read_json(self.folder / RUN)
        if run is None or run.get("signature") != self.signature:
            units = self.units()
            if run is None:
                found = Found(None, f"{self.folder / RUN} is unreadable; starting from epoch 0" if units else None,
                              _run_ids(units))
            else:
                found = Found(None, None, [run["run_id"]] if isinstance(run.get("run_id"), str) else [])
            self.clear()
            return found
        problems = []
        for unit in self.units():
            try:
                state = self._check(unit, run["run_id"])
            except Damaged as damaged:
                problems.append(str(damaged))
                shutil.rmtree(unit, ignore_errors=True)
                continue
            self.unit = unit
            damage = f"{problems[0]}; resuming after epoch {state['epoch']}" if problems else None
            return Found(state, damage)
        self.clear()
        return Found(None, f"{problems[0]}; starting from epoch 0" if problems else None, [run["run_id"]])

    def _check(self, unit: Path, run_id: str) -> dict[str, Any]:
        """The state of ``unit`` if every file in it is the one its state names (else ``Damaged``)."""
        state = _read_json(unit / STATE)
        if state is None or not {"signature", "epoch", "run_id", "history", "files"} <= state.keys():
            raise Damaged(unit / STATE, "is unreadable")
        if (state["signature"], state["run_id"], state["epoch"]) != (self.signature, run_id, int(unit.name[len(UNIT):])):
            raise Damaged(unit / STATE, "belongs to another epoch or run")
        for name, digest in state["files"].items():
            path = unit / name
            if not path.is_file():
                raise Damaged(path, "is missing")
            if _sha256(path) != digest:
                raise Damaged(path, "is truncated or from another epoch (its sha256 differs from state.json's)")
        return state

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, run_id: str) -> None:
        """An empty folder for a run that starts from epoch 0."""
        self.clear()
        self.work.mkdir(parents=True)
        write_json(self.folder / RUN, {"signature": self.signature, "run_id": run_id})

    def save(self, epoch: int, run_id: str, history: list[dict[str, float]], model: keras.Model) -> None:
        """The unit of ``epoch`` (epochs done): written whole under a temporary name, then renamed."""
        unit = self.folder / f"{UNIT}{epoch:04d}"
        with atomic_path(unit, is_dir=True) as tmp:
            for name, variables in ((VARIABLES, model.variables), (OPTIMIZER, model.optimizer.variables)):
                with open(tmp / name, "wb") as handle:
                    np.savez(handle, **{f"v{index}": np.asarray(variable) for index, variable in enumerate(variables)})
            for kept in (self.best_model, self.curve):
                if kept.exists():
                    shutil.copyfile(kept, tmp / kept.name)
            files = {path.name: _sha256(path) for path in sorted(tmp.iterdir())}
            write_json(tmp / STATE, {"signature": self.signature, "epoch": epoch, "run_id": run_id,
                                     "history": history, "files": files})
        for old in self.units()[KEPT_UNITS:]:
            shutil.rmtree(old, ignore_errors=True)

    def hand_over(self, model_file: Path, curve: Path) -> None:
        """Copy the best model and the curve to the stage's outputs once training has ended."""
        shutil.copyfile(self.best_model, model_file)
        shutil.copyfile(self.curve, curve)

    def restore(self, model: keras.Model) -> None:
        """Every model variable as the resumed unit saved it, and its best model and curve as the work files."""
        with np.load(self.unit / VARIABLES) as saved:
            values = [saved[f"v{index}"] for index in range(len(saved.files))]
        if [value.shape for value in values] != [tuple(variable.shape) for variable in model.variables]:
            raise PipelineError(f"{self.unit}: saved for another model; delete {self.folder} to start afresh")
        for variable, value in zip(model.variables, values):
            variable.assign(value)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        for name in (BEST_MODEL, CURVE):
            if (self.unit / name).exists():
                shutil.copyfile(self.unit / name, self.work / name)

    def restore_optimizer(self, model: keras.Model) -> None:
        """The optimizer's variables (moments, step count) of the phase being resumed."""
        model.optimizer.build(model.trainable_variables)
        with np.load(self.unit / OPTIMIZER) as saved:
            for index, variable in enumerate(model.optimizer.variables):
                variable.assign(saved[f"v{index}"])


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object as saved, or None when there is none (or a killed writer or a bad disk left it unreadable)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _run_ids(units: list[Path]) -> list[str]:
    """The MLflow runs that the readable states of ``units`` name."""
    states = (_read_json(unit / STATE) for unit in units)
    return sorted({state["run_id"] for state in states if state and isinstance(state.get("run_id"), str)})


@contextlib.contextmanager
def exclusive(folder: Path, who: str) -> Iterator[None]:
    """Hold ``<folder>.lock`` while one training of a model uses ``folder``; a second one is refused.

    The lock is the operating system's (``flock``): it ends with its process, however that ends,
    so a killed training never leaves the folder locked. The file is removed when the training ends.
    """
    lock = folder.with_name(folder.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked(lock, who)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _locked(lock: Path, who: str):
    """``lock`` opened and flock-ed; again if the file was removed (by the training before) in between."""
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise PipelineError(f"{lock}: {who} is already being trained by {holder}; wait for it to end, "
                                "or stop it (kill sends SIGTERM: it saves its last epoch and exits)") from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


class SaveProgress(keras.callbacks.Callback):
    """After every epoch, save the unit a stopped or killed run resumes from.

    Placed after the callbacks that write the best model and the curve, so the unit holds this
    epoch's. MLflow's Keras callback logs each epoch's metrics in the background: they are
    flushed before the unit names the epoch done, so a run killed right after it keeps them.
    """

    def __init__(self, progress: Progress, run_id: str, history: list[dict[str, float]]) -> None:
        super().__init__()
        self.progress, self.run_id, self.history = progress, run_id, history

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import mlflow

        mlflow.flush_async_logging()
        self.history.append({key: float(value) for key, value in (logs or {}).items()})
        self.progress.save(epoch + 1, self.run_id, self.history, self.model)
