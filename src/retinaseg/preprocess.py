"""Prepare and augment stages: full-size DIARETDB1 files -> small ``.npy`` class planes.

Array sets live in folders with ``images.npy`` (uint8 [N,S,S,3]), one
``masks_<task>.npy`` per task (uint8 {0,1} [N,S,S,C]) and ``ids.npy`` (the DIARETDB1
image id of every row).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from retinaseg import augment, masks
from retinaseg.atomic import atomic_path, write_json
from retinaseg.dataset import DiaretDB1
from retinaseg.errors import PipelineError
from retinaseg.layout import LESION_TYPES

Tasks = Mapping[str, Mapping[str, Sequence[str]]]
#: File prefix of each kind of training target (``train.target``).
TARGET_FILES = {"mask": "masks_", "confidence": "confidence_"}


def fundus_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the field of view, to crop black margins."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PipelineError("fmask.tif: the fundus mask is empty; set prepare.crop_to_fundus: false")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def load_sample(image_id: int, *, root: Path, box: tuple[int, int, int, int], size: int,
                thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image resized to size x size, its lesion maps binarised at each threshold, and their confidence.

    Maps are binarised at full resolution (where the confidence levels are exact), then
    area-averaged and kept where at least half of the area is lesion: bool
    [len(thresholds), size, size, 4]. The confidence is area-averaged: uint8 [size, size, 4].
    """
    dataset = DiaretDB1(root)
    image = Image.fromarray(dataset.read_image(image_id))
    resized = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0))
    lesions = np.empty((len(thresholds), size, size, len(LESION_TYPES)), dtype=bool)
    confidence = np.empty((size, size, len(LESION_TYPES)), dtype=np.uint8)
    for index, lesion in enumerate(LESION_TYPES):
        level_map = dataset.read_groundtruth(lesion, image_id)
        confidence[..., index] = Image.fromarray(level_map).resize((size, size), Image.Resampling.BOX, box=box)
        for level, threshold in enumerate(thresholds):
            lesions[level, ..., index] = _area_resize(masks.binarize(level_map, threshold), box, size)
    return resized, lesions, confidence


def _area_resize(binary: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A full-resolution boolean map cropped to ``box``, kept where at least half of each new pixel is set."""
    area = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX, box=box)
    return np.asarray(area) >= 128


def split_ids(dataset: DiaretDB1, train_ids: Sequence[int] | None) -> dict[str, list[int]]:
    """Train/test ids: the given training ids (the rest is test), or the official lists."""
    available = dataset.image_ids()
    if train_ids is None:
        split = dataset.official_split()
    else:
        chosen = set(train_ids)
        split = {"train": [i for i in available if i in chosen], "test": [i for i in available if i not in chosen]}
    for name, ids in split.items():
        if not ids:
            raise PipelineError(f"prepare.train_ids leaves the {name} split empty "
                                f"(the dataset has ids {available[0]}..{available[-1]}); choose other ids")
    return split


def prepare_dataset(root: Path, out_dir: Path, *, tasks: Tasks, threshold: float, image_size: int,
                    crop_to_fundus: bool, train_ids: Sequence[int] | None,
                    core_threshold: float = masks.CORE_THRESHOLD, workers: int | None = None) -> dict:
    """Write train/ and test/ array sets plus ``manifest.json``; return the manifest.

    Besides the training target (``masks_<task>.npy``, lesion at ``threshold``), each set
    holds the lesion core (``core_<task>.npy``, at ``core_threshold``) that evaluation
    scores against, the soft target (``confidence_<task>.npy``, uint8 summed confidence)
    and the resized field of view (``fov.npy``, bool [S,S]).

    Images are decoded in parallel processes and streamed into memory-mapped ``.npy``
    files, so memory holds one image per worker, not the dataset.
    """
    dataset = DiaretDB1(root)
    split = split_ids(dataset, train_ids)
    fov = dataset.read_fundus_mask()
    box = fundus_box(fov) if crop_to_fundus else (0, 0, fov.shape[1], fov.shape[0])
    load = partial(load_sample, root=root, box=box, size=image_size, thresholds=(threshold, core_threshold))
    manifest: dict[str, Any] = {
        "source_size": [int(fov.shape[1]), int(fov.shape[0])], "crop_to_fundus": crop_to_fundus, "crop_box": list(box),
        "image_size": image_size, "threshold": threshold, "core_threshold": core_threshold, "split": split,
        "tasks": {task: {"classes": masks.class_names(classes), "pixels": {}, "core_pixels": {}}
                  for task, classes in tasks.items()},
    }
    fov_resized = _area_resize(fov, box, image_size)
    workers = workers or os.cpu_count() or 1
    with atomic_path(out_dir, is_dir=True) as tmp, ProcessPoolExecutor(workers) as pool:
        for name, ids in split.items():
            arrays = _open_set(tmp / name, len(ids), image_size, tasks)
            samples = tqdm(pool.map(load, ids), total=len(ids), desc=f"prepare {name}", unit="image")
            for row, (image, lesions, confidence) in enumerate(samples):
                arrays["images"][row] = image
                target, core = (dict(zip(LESION_TYPES, np.moveaxis(level, -1, 0))) for level in lesions)
                soft = dict(zip(LESION_TYPES, np.moveaxis(confidence, -1, 0)))
                for task, classes in tasks.items():
                    arrays[task][row] = masks.class_planes(target, classes)
                    arrays[f"core_{task}"][row] = masks.class_planes(core, classes)
                    arrays[f"confidence_{task}"][row] = masks.confidence_planes(soft, classes)
            np.save(tmp / name / "ids.npy", np.asarray(ids, dtype=np.int32))
            np.save(tmp / name / "fov.npy", fov_resized)
            for task, classes in tasks.items():
                for key, array in (("pixels", arrays[task]), ("core_pixels", arrays[f"core_{task}"])):
                    counts = array.sum(axis=(0, 1, 2), dtype=np.int64)
                    manifest["tasks"][task][key][name] = dict(zip(masks.class_names(classes), counts.tolist()))
            for array in arrays.values():
                array.flush()
            del arrays
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _open_set(folder: Path, count: int, size: int, tasks: Tasks) -> dict[str, np.memmap]:
    folder.mkdir(parents=True)
    arrays = {"images": np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (count, size, size, 3))}
    for task, classes in tasks.items():
        shape = (count, size, size, len(masks.class_names(classes)))
        arrays[task] = np.lib.format.open_memmap(folder / f"masks_{task}.npy", "w+", np.uint8, shape)
        for kind in ("core", "confidence"):
            arrays[f"{kind}_{task}"] = np.lib.format.open_memmap(folder / f"{kind}_{task}.npy", "w+", np.uint8, shape)
    return arrays


def load_set(folder: Path, task: str | None = None, mmap: bool = False, core: bool = False,
             target: str = "mask") -> dict[str, np.ndarray]:
    """Read an array set: ``images``, ``ids`` and the targets of ``task`` (or of every task).

    ``target`` "mask" reads the binary planes ``masks_<task>.npy``, "confidence" the soft
    ones ``confidence_<task>.npy``; either way they are returned under the task's name.
    With ``core`` (prepared sets only), also ``fov`` and the core masks as ``core_<task>``.
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
                key = "core_" + name[len(prefix):-len(".npy")]
                arrays[key] = np.load(folder / f"{key}.npy", mmap_mode=mode)
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run `dvc repro` to rebuild the earlier stages") from None
    return arrays


def augment_training_set(prepared_dir: Path, out_dir: Path, params: Mapping[str, Any]) -> int:
    """Write the augmented copy of prepared/train (originals first); return its row count.

    The binary masks and the soft confidence planes of every task are transformed with
    their image (one warp each), so all tasks and targets train on the same pictures.
    """
    source = load_set(prepared_dir / "train")
    soft = load_set(prepared_dir / "train", target="confidence")
    tasks = [name for name in source if name not in ("images", "ids")]
    planes = np.cumsum([source[task].shape[-1] for task in tasks])[:-1]
    images, stacked, rows, soft_stacked = augment.augment(
        source["images"], np.concatenate([source[t] for t in tasks], axis=-1), **params,
        soft=np.concatenate([soft[t] for t in tasks], axis=-1))
    with atomic_path(out_dir, is_dir=True) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "ids.npy", source["ids"][rows])
        for task, task_masks, task_soft in zip(tasks, np.split(stacked, planes, axis=-1),
                                               np.split(soft_stacked, planes, axis=-1)):
            np.save(tmp / f"masks_{task}.npy", task_masks)
            np.save(tmp / f"confidence_{task}.npy", task_soft)
    return len(images)
