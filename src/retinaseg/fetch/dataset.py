"""Loader for the official DIARETDB1 v1.1 layout that fails early with a clear message.

Every bad file (missing, truncated, wrong mode, wrong size) becomes a one-line
PipelineError naming the file, instead of a shape error deep inside training.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from retinaseg.core import layout
from retinaseg.core.errors import PipelineError, one_line

_IMAGE_ID = re.compile(r"image(\d{3})")
_IMAGE_FILE = re.compile(r"image(\d{3})\.png")
_RESTORE = "restore it from the official archive or rerun the fetch stage"
_REGENERATE = "rerun the fetch stage to generate it again (a real DIARETDB1 has no such file)"
#: What every lesion of the simulated truth has (see ``synthetic_realistic``); the rest are numbers.
_LESION_NAMES = ("type", "kind")
_LESION_NUMBERS = ("x", "y", "major", "minor", "angle", "annotators")


def find_dataset_root(path: Path) -> Path:
    """The folder holding ``resources/images/ddb1_fundusimages``: ``path`` or one direct child.

    A direct child is accepted because the official zip unpacks to ``diaretdb1_v_1_1/``.
    """
    path = Path(path)
    if (path / layout.IMAGES_DIR).is_dir():
        return path
    if not path.is_dir():
        raise PipelineError(
            f"{path}: not an existing folder; "
            f"point data.source at the {layout.ARCHIVE_NAME} zip or the folder it unpacks to"
        )
    roots = sorted(child for child in path.iterdir() if (child / layout.IMAGES_DIR).is_dir())
    if len(roots) == 1:
        return roots[0]
    if roots:
        names = ", ".join(root.name for root in roots)
        raise PipelineError(f"{path}: several DIARETDB1 copies ({names}); keep only one")
    raise PipelineError(
        f"{path}: no DIARETDB1 dataset found, {layout.IMAGES_DIR} is missing in it and in its subfolders; "
        f"point data.source at the {layout.ARCHIVE_NAME} zip or the folder it unpacks to"
    )


class DiaretDB1:
    """Reads images, ground-truth maps, the fundus mask and the official split.

    ``root`` may be the dataset root or the folder the zip was unpacked into. Every
    image and map must have the size of ``fmask.tif``. The mask may be 8-bit gray
    ('L', nonzero = inside) or 1-bit ('1'), which converts to bool exactly; palette
    masks are refused because their colours need not be gray.
    """

    def __init__(self, root: Path) -> None:
        self.root = find_dataset_root(root)

    def image_ids(self) -> list[int]:
        folder = self.root / layout.IMAGES_DIR
        ids = sorted(int(m[1]) for path in folder.iterdir() if (m := _IMAGE_FILE.fullmatch(path.name)))
        if not ids:
            raise PipelineError(f"{folder}: no imageNNN.png files; {_RESTORE}")
        return ids

    def read_image(self, image_id: int) -> np.ndarray:
        """The fundus image as uint8 HxWx3."""
        return self._read(layout.image_path(image_id), ("RGB",))

    def read_groundtruth(self, lesion: str, image_id: int) -> np.ndarray:
        """Summed annotator confidence as uint8 HxW (multiples of 21, 0 = no lesion)."""
        if lesion not in layout.LESION_TYPES:
            raise PipelineError(f"unknown lesion type {lesion!r}; use one of {', '.join(layout.LESION_TYPES)}")
        return self._read(layout.groundtruth_path(lesion, image_id), ("L",))

    def read_fundus_mask(self) -> np.ndarray:
        """The circular field of view as bool HxW."""
        return _load(self.root / layout.FUNDUS_MASK, ("L", "1")) > 0

    def read_simulated_truth(self) -> dict[str, list[dict[str, Any]]] | None:
        """The lesions a synthetic generator drew, by image id (a string); None if there is no such file.

        A real dataset has none. The file is checked now against the images and the mask size,
        so a damaged one stops prepare rather than the scoring that reads it stages later.
        """
        path = self.root / layout.SIMULATED_TRUTH
        if not path.exists():
            return None
        try:
            truth = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
            raise PipelineError(f"{path}: unreadable simulated truth ({one_line(err)}); "
                                f"{_REGENERATE}") from err
        problem = _truth_problem(truth, [self._shape[1], self._shape[0]], self.image_ids())
        if problem:
            raise PipelineError(f"{path}: {problem}; {_REGENERATE}")
        return truth["images"]

    def official_split(self) -> dict[str, list[int]]:
        """Image ids of the official train and test lists, each checked against the image files."""
        available = set(self.image_ids())
        split = {}
        for name, relative in (("train", layout.TRAIN_LIST), ("test", layout.TEST_LIST)):
            path = self.root / relative
            if not path.is_file():
                raise PipelineError(f"missing split list {path}; {_RESTORE}")
            ids = sorted({int(i) for i in _IMAGE_ID.findall(path.read_text(encoding="utf-8", errors="replace"))})
            if not ids:
                raise PipelineError(f"{path}: lists no imageNNN; {_RESTORE}")
            missing = sorted(set(ids) - available)
            if missing:
                names = ", ".join(layout.image_name(i) for i in missing)
                raise PipelineError(
                    f"{path}: lists images that are missing in {layout.IMAGES_DIR}: {names}; {_RESTORE}"
                )
            split[name] = ids
        return split

    @cached_property
    def _shape(self) -> tuple[int, ...]:
        return self.read_fundus_mask().shape

    def _read(self, relative: PurePosixPath, modes: tuple[str, ...]) -> np.ndarray:
        path = self.root / relative
        array = _load(path, modes)
        if array.shape[:2] != self._shape:
            height, width = array.shape[:2]
            expected = f"{self._shape[1]}x{self._shape[0]}"
            raise PipelineError(
                f"{path}: size {width}x{height}, expected {expected} like {layout.FUNDUS_MASK}; {_RESTORE}"
            )
        return array


def _truth_problem(truth: Any, size: list[int], ids: list[int]) -> str | None:
    """What is wrong with a parsed simulated truth (``synthetic.generate`` writes it), or None."""
    if not isinstance(truth, dict) or not isinstance(truth.get("images"), dict):
        return "expected a JSON object with source_size and images"
    if truth.get("source_size") != size:
        return f"source_size {truth.get('source_size')} differs from the {size[0]}x{size[1]} of {layout.FUNDUS_MASK}"
    missing = [layout.image_name(i) for i in ids if str(i) not in truth["images"]]
    if missing:
        return f"no lesion list for {', '.join(missing)}"
    for image_id, lesions in truth["images"].items():
        if not isinstance(lesions, list) or not all(_is_lesion(lesion) for lesion in lesions):
            fields = ", ".join(_LESION_NAMES + _LESION_NUMBERS)
            return f"image {image_id}: expected a list of lesions, each an object with {fields}"
    return None


def _is_lesion(lesion: Any) -> bool:
    return (isinstance(lesion, dict) and all(isinstance(lesion.get(key), str) for key in _LESION_NAMES)
            and all(type(lesion.get(key)) in (int, float) for key in _LESION_NUMBERS))


def _load(path: Path, modes: tuple[str, ...]) -> np.ndarray:
    """Decode the whole file now, so truncation shows up here and not in a later stage."""
    if not path.is_file():
        raise PipelineError(f"missing file {path}; {_RESTORE}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in modes:
                raise PipelineError(f"{path}: image mode {image.mode!r}, expected {' or '.join(modes)}; {_RESTORE}")
            return np.array(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise PipelineError(f"{path}: unreadable, corrupt or truncated image ({one_line(err)}); {_RESTORE}") from err
