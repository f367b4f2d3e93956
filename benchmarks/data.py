"""Data sections: augmentation throughput, prepare time and memory; the arrays training reads.

Run as ``python -m benchmarks.data '<json request>'`` it is the child process that
prepares a dataset and reports its own and its workers' peak RSS. No TensorFlow here,
so the child's memory is the prepare stage's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.config import AUGMENT, TASKS, Config, prepare_params
from benchmarks.measure import rate, repeat, stats, target
from retinaseg.augment.warps import augment, augment_training_set, random_affine
from retinaseg.core.arrays import load_set
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.prepare.sets import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_SETS = (Path("data/prepared"), Path("data/augmented"))
MIB = 1024 * 1024


def _sets(cfg: Config, tmp: Path) -> tuple[Path, Path, str]:
    """(prepared, augmented) folders: the pipeline's in the working directory, else small synthetic ones."""
    if not cfg.tiny and all(folder.is_dir() for folder in PIPELINE_SETS):
        return *PIPELINE_SETS, "data/prepared and data/augmented of the working directory"
    prepared, augmented = tmp / "prepared", tmp / "augmented"
    if not augmented.is_dir():
        generate(tmp / "raw", num_images=cfg.synthetic_images, size=cfg.synthetic_size, seed=0)
        prepare_dataset(tmp / "raw", prepared, tasks=TASKS,
                        params=prepare_params(cfg.image_size, tuple(range(1, cfg.synthetic_images))))
        augment_training_set(prepared, augmented, AUGMENT.model_copy(update={"copies": cfg.synthetic_copies}))
    width, height = cfg.synthetic_size
    return (prepared, augmented,
            f"synthetic: {cfg.synthetic_images} images of {width}x{height}, {cfg.synthetic_copies} copies each")


def training_set(cfg: Config, tmp: Path) -> tuple[dict[str, np.ndarray], str]:
    """The augmented arrays of the binary task, as the training stage loads them, and their origin."""
    _, augmented, source = _sets(cfg, tmp)
    return load_set(augmented, "binary"), source


def keras_style(images: np.ndarray, masks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The cost of Keras' ImageDataGenerator.apply_transform over images and their masks.

    As Keras does: float32 arrays, one ``scipy.ndimage.affine_transform`` per channel at
    order 1 with 'nearest' fill (its defaults), the same transform for image and mask
    planes, flips by ``np.flip`` afterwards. The matrix is ours (its drawing costs
    microseconds); Keras draws zoom per axis, which costs the same.
    """
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    geometry = {key: getattr(AUGMENT, key) for key in ("rotation_deg", "shift", "zoom", "shear_deg")}
    out_images, out_masks = np.empty(images.shape, np.float32), np.empty(masks.shape, np.float32)
    for row in range(len(images)):
        matrix = random_affine(rng, height, width, horizontal_flip=False, vertical_flip=False, **geometry)
        flips = tuple(axis for axis, key in ((0, "vertical_flip"), (1, "horizontal_flip"))
                      if getattr(AUGMENT, key) and rng.random() < 0.5)
        for source, out in ((images[row], out_images), (masks[row], out_masks)):
            warped = np.stack([ndimage.affine_transform(source[..., channel].astype(np.float32), matrix[:2, :2],
                                                        matrix[:2, 2], order=1, mode="nearest")
                               for channel in range(source.shape[-1])], axis=-1)
            out[row] = np.flip(warped, flips) if flips else warped
    return out_images, out_masks


def augmentation(cfg: Config, run) -> dict:
    """Keras-style per-channel scipy warps against ``retinaseg.augment.warps`` on the same images."""
    prepared, _, source = _sets(cfg, run.tmp)
    train = load_set(prepared / "train")
    tasks = sorted(name for name in train if name not in ("images", "ids"))
    count = min(cfg.augment_images, len(train["images"]))
    images = train["images"][:count]
    # Every task's planes together, as the augment stage warps them.
    masks = np.concatenate([train[task][:count] for task in tasks], axis=-1)
    ours = repeat(lambda: augment(images, masks, AUGMENT), cfg.warmup, cfg.reps)
    theirs = repeat(lambda: keras_style(images, masks, seed=0), cfg.warmup, cfg.reps)
    return {"data": source, "images": count, "image_shape": list(images.shape[1:]), "mask_planes": masks.shape[-1],
            "note": "ours also applies brightness and contrast; both warp every mask plane with the image",
            "keras_style": {"seconds": stats(theirs), "images_per_second": rate(count, theirs)},
            "ours": {"seconds": stats(ours), "images_per_second": rate(count, ours)},
            "speedup": statistics.median(theirs) / statistics.median(ours)}


def prepare(cfg: Config, run) -> dict:
    """The prepare stage on a full-size synthetic DIARETDB1, each run in a fresh child process."""
    raw = run.tmp / "prepare_raw"
    started = time.perf_counter()
    generate(raw, num_images=cfg.prepare_images, size=cfg.prepare_size, seed=0)
    generate_seconds = time.perf_counter() - started
    request = {"raw": str(raw), "image_size": cfg.image_size, "train_ids": list(cfg.prepare_train_ids)}
    runs = [_prepare_in_child({**request, "out": str(run.tmp / f"prepared_{rep}")}) for rep in range(cfg.slow_reps)]
    workers = os.cpu_count() or 1
    main_mib = max(child["main_maxrss_kib"] for child in runs) / 1024
    worker_mib = max(child["worker_maxrss_kib"] for child in runs) / 1024
    bound_mib = main_mib + workers * worker_mib
    seconds = [child["seconds"] for child in runs]
    return {"images": cfg.prepare_images, "size": list(cfg.prepare_size), "workers": workers,
            "generate_seconds_untimed": generate_seconds,
            "seconds": stats(seconds), "process_seconds": stats([child["process_seconds"] for child in runs]),
            "peak_rss_mib": {"main": main_mib, "largest_worker": worker_mib, "bound": bound_mib,
                             "note": "peak RSS (VmHWM) of the prepare process, ru_maxrss of its largest pool worker "
                                     "(RUSAGE_CHILDREN); bound = main + workers x largest worker, an upper "
                                     "bound of their total (forked workers share pages with main)"},
            "targets": [target("prepare seconds", statistics.median(seconds), 20, at_most=True),
                        target("prepare peak RSS MiB (bound)", bound_mib, 2048, at_most=True)]}


def _prepare_in_child(request: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.data", json.dumps(request)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"prepare child failed: {done.stderr.strip().splitlines()[-1:]}")
    return {**json.loads(done.stdout.splitlines()[-1]), "process_seconds": time.perf_counter() - started}


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, since ru_maxrss keeps the parent's peak across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line")


def _child(request: dict) -> None:
    """Time prepare_dataset as the stage calls it; print the figures as one JSON line."""
    started = time.perf_counter()
    prepare_dataset(Path(request["raw"]), Path(request["out"]), tasks=TASKS,
                    params=prepare_params(request["image_size"], tuple(request["train_ids"])))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds,
                      "main_maxrss_kib": _peak_rss_kib(),
                      "worker_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
