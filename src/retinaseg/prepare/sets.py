"""Prepare stage: full-size DIARETDB1 files -> small ``.npy`` class planes (array sets, see ``arrays``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from retinaseg.core.atomic import atomic_path, open_memmap, write_json
from retinaseg.core.errors import PipelineError
from retinaseg.core.layout import LESION_TYPES
from retinaseg.core.params import PrepareParams
from retinaseg.core.tasks import Task
from retinaseg.core.workers import worker_pool
from retinaseg.fetch.dataset import DiaretDB1
from retinaseg.prepare import masks
from retinaseg.prepare.fundus import Box, crop_resize, fundus_box


def load_sample(image_id: int, *, root: Path, box: Box, size: int,
                thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image resized to size x size, its lesion maps binarised at each threshold, and their confidence.

    Maps are binarised at full resolution (where the confidence levels are exact), then
    area-averaged and kept where at least half of the area is lesion: bool
    [len(thresholds), size, size, 4]. The confidence is area-averaged: uint8 [size, size, 4].
    """
    dataset = DiaretDB1(root)
    resized = crop_resize(dataset.read_image(image_id), box, size)
    lesions = np.empty((len(thresholds), size, size, len(LESION_TYPES)), dtype=bool)
    confidence = np.empty((size, size, len(LESION_TYPES)), dtype=np.uint8)
    for index, lesion in enumerate(LESION_TYPES):
        level_map = dataset.read_groundtruth(lesion, image_id)
        confidence[..., index] = Image.fromarray(level_map).resize((size, size), Image.Resampling.BOX, box=box)
        for level, threshold in enumerate(thresholds):
            lesions[level, ..., index] = _area_resize(masks.binarize(level_map, threshold), box, size)
    return resized, lesions, confidence


def _area_resize(binary: np.ndarray, box: Box, size: int) -> np.ndarray:
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


def prepare_dataset(root: Path, out_dir: Path, *, tasks: Sequence[Task], params: PrepareParams,
                    workers: int | None = None) -> dict:
    """Write train/ and test/ array sets plus ``manifest.json``; return the manifest.

    Besides the training target (``masks_<task>.npy``, lesion at ``params.threshold``), each set
    holds the lesion core (``core_<task>.npy``, at ``params.core_threshold``) that evaluation
    scores against, the soft target (``confidence_<task>.npy``, uint8 summed confidence)
    and the resized field of view (``fov.npy``, bool [S,S]). A synthetic dataset that knows
    its lesions (``layout.SIMULATED_TRUTH``) also gets them in ``truth.json`` (see ``_split_truth``);
    the manifest's ``simulated_truth`` says whether it did.

    Images are decoded in parallel processes and streamed into memory-mapped ``.npy``
    files, so memory holds one image per worker, not the dataset; the workers end with
    this process, however it ends (``core.workers``).
    """
    dataset = DiaretDB1(root)
    split = split_ids(dataset, params.train_id_list)
    fov = dataset.read_fundus_mask()
    box = fundus_box(fov) if params.crop_to_fundus else (0, 0, fov.shape[1], fov.shape[0])
    size = params.image_size
    load = partial(load_sample, root=root, box=box, size=size, thresholds=(params.threshold, params.core_threshold))
    truth = dataset.read_simulated_truth()
    manifest: dict[str, Any] = {
        "source_size": [int(fov.shape[1]), int(fov.shape[0])], "crop_to_fundus": params.crop_to_fundus,
        "crop_box": list(box), "image_size": size, "threshold": params.threshold,
        "core_threshold": params.core_threshold, "split": split, "simulated_truth": truth is not None,
        "tasks": {task.name: {"classes": task.plane_names,
                              "lesion_types": {name: list(types) for name, types in task.classes.items()},
                              "pixels": {}, "core_pixels": {}} for task in tasks},
    }
    fov_resized = _area_resize(fov, box, size)
    workers = workers or os.cpu_count() or 1
    with atomic_path(out_dir, is_dir=True) as tmp, worker_pool(workers) as pool:
        for name, ids in split.items():
            arrays = _open_set(tmp / name, len(ids), size, tasks)
            samples = tqdm(pool.map(load, ids), total=len(ids), desc=f"prepare {name}", unit="image")
            for row, sample in enumerate(samples):
                _store(arrays, row, sample, tasks)
            np.save(tmp / name / "ids.npy", np.asarray(ids, dtype=np.int32))
            np.save(tmp / name / "fov.npy", fov_resized)
            if truth is not None:
                write_json(tmp / name / "truth.json", _split_truth(truth, ids, manifest))
            for task in tasks:
                for key, array in (("pixels", arrays[task.name]), ("core_pixels", arrays[f"core_{task.name}"])):
                    counts = array.sum(axis=(0, 1, 2), dtype=np.int64)
                    manifest["tasks"][task.name][key][name] = dict(zip(task.plane_names, counts.tolist()))
            for array in arrays.values():
                array.flush()
            del arrays
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _split_truth(truth: dict[str, list[dict[str, Any]]], ids: Sequence[int], manifest: dict[str, Any]) -> dict:
    """The simulated lesions of one split, still in full-size pixels, with what maps them onto the arrays.

    A full-size point (x, y) lies at ((x - x0) * S / (x1 - x0), (y - y0) * S / (y1 - y0)) in
    a prepared image of ``image_size`` S cropped to ``crop_box`` (x0, y0, x1, y1).
    """
    return {"source_size": manifest["source_size"], "crop_box": manifest["crop_box"],
            "image_size": manifest["image_size"], "images": {str(i): truth[str(i)] for i in ids}}


def _store(arrays: dict[str, np.memmap], row: int, sample: tuple[np.ndarray, ...], tasks: Sequence[Task]) -> None:
    """Write one ``load_sample`` result into row ``row`` of every array of the set."""
    image, lesions, confidence = sample
    arrays["images"][row] = image
    target, core = (dict(zip(LESION_TYPES, np.moveaxis(level, -1, 0))) for level in lesions)
    soft = dict(zip(LESION_TYPES, np.moveaxis(confidence, -1, 0)))
    for task in tasks:
        arrays[task.name][row] = masks.class_planes(target, task)
        arrays[f"core_{task.name}"][row] = masks.class_planes(core, task)
        arrays[f"confidence_{task.name}"][row] = masks.confidence_planes(soft, task)


def _open_set(folder: Path, count: int, size: int, tasks: Sequence[Task]) -> dict[str, np.memmap]:
    folder.mkdir(parents=True)
    arrays = {"images": open_memmap(folder / "images.npy", np.uint8, (count, size, size, 3))}
    for task in tasks:
        shape = (count, size, size, task.num_planes)
        arrays[task.name] = open_memmap(folder / f"masks_{task.name}.npy", np.uint8, shape)
        for kind in ("core", "confidence"):
            arrays[f"{kind}_{task.name}"] = open_memmap(folder / f"{kind}_{task.name}.npy", np.uint8, shape)
    return arrays
