"""Seeded generator of DIARETDB1-like data in the official layout.

The real dataset may not be redistributed, so tests, CI and offline trials run the
whole pipeline on this stand-in: fundus-like RGB images, ground-truth maps that sum
the confidence of four simulated annotators, the circular field-of-view mask and
the split lists, all in the folders and formats of DIARETDB1 v1.1.

Two styles: "realistic" (default) matches the label statistics and the low contrast of
the real marked regions; "easy" draws crisp lesions with tight marks, a quick smoke test.
The realistic style also writes the lesions it drew (``layout.SIMULATED_TRUTH``), the
truth its coarse annotator marks only hint at.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from retinaseg.core import layout
from retinaseg.core.atomic import atomic_path, write_json
from retinaseg.core.workers import worker_pool
from retinaseg.fetch.synthetic import easy, realistic
from retinaseg.fetch.synthetic.drawing import Canvas

#: Image samplers by style name; each maps (canvas, rng) to (RGB image, maps by lesion type, lesions drawn),
#: the lesions a list of JSON-ready dicts, or None for a style without a truth of its own.
STYLES = {"realistic": realistic.sample, "easy": easy.sample}
#: Fast PNG compression: the images are noisy, so stronger levels gain little but cost seconds.
_PNG_LEVEL = 1


def generate(
    root: Path,
    *,
    num_images: int = layout.NUM_IMAGES,
    size: tuple[int, int] = layout.IMAGE_SIZE,
    seed: int = 0,
    style: str = "realistic",
    workers: int | None = None,
) -> None:
    """Write a complete synthetic DIARETDB1 under ``root`` (``root/resources/...``).

    Each image draws from its own generator seeded by ``(seed, image_id)``, so the
    same seed gives byte-identical files, images do not depend on ``num_images``, and
    ``workers`` processes (default: one per core) draw them in parallel; they end with this
    process, however it ends (``core.workers``). The
    limits of the arguments are those of the ``data`` params block. A style that knows its
    lesions writes them to ``root / layout.SIMULATED_TRUTH``, outside ``resources/`` so the
    official layout stays as it is: ``{"style", "source_size": [w, h], "images": {"<id>": [lesion, ...]}}``.
    """
    width, height = size
    root = Path(root)
    canvas = Canvas.create(width, height)
    _save(Image.fromarray(np.where(canvas.fov, 255, 0).astype(np.uint8)), root / layout.FUNDUS_MASK)
    truth = {}
    draw = functools.partial(_draw, root=root, size=size, seed=seed, style=style)
    ids = range(1, num_images + 1)
    with worker_pool(min(workers or os.cpu_count() or 1, num_images)) as pool:
        drawn = tqdm(pool.map(draw, ids), total=num_images, desc=f"synthetic images ({style})", unit="image")
        for image_id, lesions in zip(ids, drawn):
            if lesions is not None:
                truth[str(image_id)] = lesions
    if truth:
        write_json(root / layout.SIMULATED_TRUTH, {"style": style, "source_size": [width, height], "images": truth})
    num_train = math.ceil(num_images * 28 / layout.NUM_IMAGES)
    _write_list(root / layout.TRAIN_LIST, range(1, num_train + 1))
    _write_list(root / layout.TEST_LIST, range(num_train + 1, num_images + 1))


def build_archive(root: Path, zip_path: Path) -> None:
    """Zip a generated dataset under the official top folder, with fixed timestamps for stable bytes."""
    root = Path(root)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            name = f"{layout.ARCHIVE_ROOT}/{path.relative_to(root).as_posix()}"
            if path.is_dir():
                info = zipfile.ZipInfo(name + "/", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o40755 << 16
                archive.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o100644 << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


def _draw(image_id: int, *, root: Path, size: tuple[int, int], seed: int, style: str) -> list[dict] | None:
    """Draw and save one image and its maps (in a worker process); return the lesions drawn, if the style knows them."""
    image, maps, lesions = STYLES[style](_canvas(*size), np.random.default_rng([seed, image_id]))
    _save(Image.fromarray(image), root / layout.image_path(image_id))
    for lesion, level_map in maps.items():
        _save(Image.fromarray(level_map), root / layout.groundtruth_path(lesion, image_id))
    return lesions


@functools.cache
def _canvas(width: int, height: int) -> Canvas:
    """One canvas per worker process (its arrays are too big to send with every image)."""
    return Canvas.create(width, height)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path, compress_level=_PNG_LEVEL)
    else:
        image.save(path)


def _write_list(path: Path, ids: range) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = layout.IMAGES_DIR.relative_to(layout.RESOURCES)
    path.write_text("".join(f"{folder}/{layout.image_name(i)}\n" for i in ids))
