"""Where the fundus is in a photograph, and the one crop-and-resize every model input goes through.

Training images (prepare), new images (predict) and served models all meet the network
through ``crop_resize``, so they cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from retinaseg.core.errors import PipelineError

Box = tuple[int, int, int, int]
#: A pixel is fundus when its brightest channel exceeds this (of 255): above the noise of a
#: near-black camera margin, below the retina's red channel; on the synthetic set it gives
#: exactly the box of fmask.tif.
FUNDUS_LEVEL = 20


def fundus_box(mask: np.ndarray) -> Box:
    """Bounding box (left, top, right, bottom) of the field of view, to crop black margins."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PipelineError("fmask.tif: the fundus mask is empty; set prepare.crop_to_fundus: false")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def full_box(image: np.ndarray) -> Box:
    return 0, 0, image.shape[1], image.shape[0]


def image_fundus_mask(image: np.ndarray) -> np.ndarray:
    """The field of view of an RGB image that comes without a mask: its pixels above ``FUNDUS_LEVEL``."""
    return image.max(axis=-1) > FUNDUS_LEVEL


def image_fundus_box(image: np.ndarray) -> Box:
    """Bounding box of the fundus found in the image itself; an all-black image keeps its full frame."""
    mask = image_fundus_mask(image)
    return fundus_box(mask) if mask.any() else full_box(image)


def crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The ``box`` of a uint8 RGB image resized to ``size`` x ``size`` (Lanczos), as the model sees it."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, box=box,
                                                    reducing_gap=3.0))
