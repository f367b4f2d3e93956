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


def fundus_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the field of view, to crop black margins."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PipelineError("fmask.tif: the fundus mask is empty; set prepare.crop_to_fundus: false")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def load_sample(image_id: int, *, root: Path, box: tuple[int, int, int, int], size: int,
                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One image resized to size x size, and its four lesion maps binarised then resized.

    Maps are binarised at full resolution (where the confidence levels are exact), then
    area-averaged and kept where at least half of the area is lesion.
    """
    dataset = DiaretDB1(root)
    image = Image.fromarray(dataset.read_image(image_id))
    resized = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0))
    lesions = np.empty((size, size, len(LESION_TYPES)), dtype=bool)
    for index, lesion in enumerate(LESION_TYPES):
        binary = masks.binarize(dataset.read_groundtruth(lesion, image_id), threshold)
        area = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX, box=box)
        lesions[..., index] = np.asarray(area) >= 128
    return resized, lesions


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
                    crop_to_fundus: bool, train_ids: Sequence[int] | None, workers: int | None = None) -> dict:
    """Write train/ and test/ array sets plus ``manifest.json``; return the manifest.

    Images are decoded in parallel processes and streamed into memory-mapped ``.npy``
    files, so memory holds one image per worker, not the dataset.
    """
    dataset = DiaretDB1(root)
    split = split_ids(dataset, train_ids)
    fov = dataset.read_fundus_mask()
    box = fundus_box(fov) if crop_to_fundus else (0, 0, fov.shape[1], fov.shape[0])
    load = partial(load_sample, root=root, box=box, size=image_size, threshold=threshold)
    manifest: dict[str, Any] = {
        "source_size": [int(fov.shape[1]), int(fov.shape[0])], "crop_to_fundus": crop_to_fundus, "crop_box": list(box),
        "image_size": image_size, "threshold": threshold, "split": split,
        "tasks": {task: {"classes": masks.class_names(classes), "pixels": {}} for task, classes in tasks.items()},
    }
    workers = workers or os.cpu_count() or 1
    with atomic_path(out_dir, is_dir=True) as tmp, ProcessPoolExecutor(workers) as pool:
        for name, ids in split.items():
            arrays = _open_set(tmp / name, len(ids), image_size, tasks)
            samples = tqdm(pool.map(load, ids), total=len(ids), desc=f"prepare {name}", unit="image")
            for row, (image, lesions) in enumerate(samples):
                arrays["images"][row] = image
                named = dict(zip(LESION_TYPES, np.moveaxis(lesions, -1, 0)))
                for task, classes in tasks.items():
                    arrays[task][row] = masks.class_planes(named, classes)
            np.save(tmp / name / "ids.npy", np.asarray(ids, dtype=np.int32))
            for task, classes in tasks.items():
                counts = arrays[task].sum(axis=(0, 1, 2), dtype=np.int64)
                manifest["tasks"][task]["pixels"][name] = dict(zip(masks.class_names(classes), counts.tolist()))
            for array in arrays.values():
                array.flush()
            del arrays
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _open_set(folder: Path, count: int, size: int, tasks: Tasks) -> dict[str, np.memmap]:
    folder.mkdir(parents=True)
    arrays = {"images": np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (count, size, size, 3))}
    for task, classes in tasks.items():
        planes = len(masks.class_names(classes))
        arrays[task] = np.lib.format.open_memmap(folder / f"masks_{task}.npy", "w+", np.uint8,
                                                 (count, size, size, planes))
    return arrays


def load_set(folder: Path, task: str | None = None, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read an array set: ``images``, ``ids`` and the masks of ``task`` (or of every task)."""
    mode = "r" if mmap else None
    names = [f"masks_{task}.npy"] if task else sorted(p.name for p in folder.glob("masks_*.npy"))
    try:
        arrays = {"images": np.load(folder / "images.npy", mmap_mode=mode), "ids": np.load(folder / "ids.npy")}
        for name in names:
            arrays[name[len("masks_"):-len(".npy")]] = np.load(folder / name, mmap_mode=mode)
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run `dvc repro` to rebuild the earlier stages") from None
    return arrays


def augment_training_set(prepared_dir: Path, out_dir: Path, params: Mapping[str, Any]) -> int:
    """Write the augmented copy of prepared/train (originals first); return its row count.

    The masks of every task are transformed together with their image, so all tasks
    train on the same augmented pictures.
    """
    source = load_set(prepared_dir / "train")
    tasks = [name for name in source if name not in ("images", "ids")]
    planes = np.cumsum([source[task].shape[-1] for task in tasks])[:-1]
    images, stacked, rows = augment.augment(source["images"], np.concatenate([source[t] for t in tasks], axis=-1),
                                            **params)
    with atomic_path(out_dir, is_dir=True) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "ids.npy", source["ids"][rows])
        for task, task_masks in zip(tasks, np.split(stacked, planes, axis=-1)):
            np.save(tmp / f"masks_{task}.npy", task_masks)
    return len(images)
