"""The array sets the prepare and augment stages write and train and evaluate read.

A set is a folder with ``images.npy`` (uint8 [N,S,S,3]), ``ids.npy`` (the DIARETDB1 id of
every row) and per task the training targets ``masks_<task>.npy`` (uint8 {0,1} [N,S,S,C])
and ``confidence_<task>.npy`` (uint8 summed annotator confidence, 255 = all agree fully).
Prepared sets also hold the lesion core ``core_<task>.npy`` and the field of view ``fov.npy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaseg.core.errors import PipelineError

#: File prefix of each kind of training target (``train.target``).
TARGET_FILES = {"mask": "masks_", "confidence": "confidence_"}
#: Value of full confidence in each kind of stored target.
TARGET_SCALE = {"mask": 1.0, "confidence": 255.0}


def load_set(folder: Path, task: str | None = None, mmap: bool = False, core: bool = False,
             target: str = "mask") -> dict[str, np.ndarray]:
    """Read an array set: ``images``, ``ids`` and the targets of ``task`` (or of every task).

    ``target`` "mask" reads the binary planes ``masks_<task>.npy``, "confidence" the soft
    ones ``confidence_<task>.npy``; either way they are returned under the task's name.
    With ``core`` (prepared sets only), also ``fov``, the core masks as ``core_<task>`` and, as
    ``marked_<task>``, where any annotator marked anything (confidence above 0).
    """
    mode = "r" if mmap else None
    prefix = TARGET_FILES[target]
    names = [f"{prefix}{task}.npy"] if task else sorted(p.name for p in folder.glob(f"{prefix}*.npy"))
    try:
        arrays = {"images": np.load(folder / "images.npy", mmap_mode=mode), "ids": np.load(folder / "ids.npy")}
        for name in names:
            arrays[name[len(prefix):-len(".npy")]] = np.load(folder / name, mmap_mode=mode)
        if core:
            arrays["fov"] = np.load(folder / "fov.npy")
            for name in names:
                task_name = name[len(prefix):-len(".npy")]
                arrays[f"core_{task_name}"] = np.load(folder / f"core_{task_name}.npy", mmap_mode=mode)
                arrays[f"marked_{task_name}"] = np.load(folder / f"confidence_{task_name}.npy", mmap_mode=mode) > 0
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run `dvc repro` to rebuild the earlier stages") from None
    return arrays
