"""Augment stage: seeded offline augmentation; each image and its masks get one shared affine warp.

This replaces Keras' ImageDataGenerator (shifts, shear, zoom, flips) so the augmented
training set is written once, is byte-for-byte reproducible and is tracked by DVC.

Geometry is a single 3x3 matrix in (row, col) pixel coordinates that maps each output
pixel to the input point it samples, composed about the image centre, so every
pixel is interpolated only once. Zoom follows Keras' ``zoom_range`` convention: the
factor scales that output-to-input map, so a factor below 1 samples a smaller region
and zooms in (one factor for both axes, so lesions keep their shape). Outside the
input the fill is 0, the black fundus background. Warps run in Pillow, which gives
the same pixels as ``scipy.ndimage.affine_transform`` at about twice the speed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from retinaseg.core.arrays import load_set
from retinaseg.core.atomic import atomic_path
from retinaseg.core.params import AugmentParams


def random_affine(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    rotation_deg: float,
    shift: float,
    zoom: tuple[float, float],
    shear_deg: float,
    horizontal_flip: bool,
    vertical_flip: bool,
) -> np.ndarray:
    """Draw one output-to-input 3x3 matrix in (row, col) coordinates.

    Every draw happens whatever the ranges, so switching one option off does not
    change the random values of the others.
    """
    angle = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    shear = math.radians(rng.uniform(-shear_deg, shear_deg))
    scale = rng.uniform(zoom[0], zoom[1])
    shift_row, shift_col = rng.uniform(-shift, shift, size=2) * (height, width)
    flip_row, flip_col = rng.random(2) < 0.5

    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, -sin], [sin, cos]])
    shear_cols = np.array([[1.0, 0.0], [math.tan(shear), 1.0]])
    mirror = np.diag([-1.0 if vertical_flip and flip_row else 1.0,
                      -1.0 if horizontal_flip and flip_col else 1.0])
    linear = mirror @ rotate @ shear_cols * scale

    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + (shift_row, shift_col)
    return matrix


def augment(images: np.ndarray, masks: np.ndarray, params: AugmentParams,
            soft: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Return the originals followed by ``params.copies`` augmented versions of every image.

    ``images`` is uint8 [N,H,W,3] and ``masks`` uint8 {0,1} [N,H,W,K]; optional ``soft``
    uint8 planes [N,H,W,J] (confidence maps) move with them, interpolated bilinearly. Row
    ``c * N + i`` of the outputs is copy ``c`` of image ``i`` (copy 0 unchanged), and
    ``source_index`` holds ``i`` for each row. Ranges: rotation and shear in degrees
    (+-), shift as a fraction of height and width (+-), zoom as Keras' ``zoom_range``,
    brightness as an offset in fractions of 255 (+-), contrast as a factor in
    ``[1 - contrast, 1 + contrast]`` about each channel's mean; brightness and
    contrast touch only the image. Returns images, masks, source_index and soft (or None).
    """
    _check_arrays(images, masks)
    count, height, width = images.shape[:3]
    copies = params.copies
    rng = np.random.default_rng(params.seed)
    images_out = np.empty((count * (copies + 1), *images.shape[1:]), np.uint8)
    masks_out = np.empty((count * (copies + 1), *masks.shape[1:]), np.uint8)
    images_out[:count], masks_out[:count] = images, masks
    soft_out = None
    if soft is not None:
        soft_out = np.empty((len(images_out), *soft.shape[1:]), np.uint8)
        soft_out[:count] = soft
    for row in range(count, len(images_out)):
        original = row % count
        matrix = random_affine(rng, height, width, rotation_deg=params.rotation_deg, shift=params.shift,
                               zoom=params.zoom, shear_deg=params.shear_deg,
                               horizontal_flip=params.horizontal_flip, vertical_flip=params.vertical_flip)
        offset = rng.uniform(-params.brightness, params.brightness) * 255
        factor = rng.uniform(1 - params.contrast, 1 + params.contrast)
        warped = _warp_image(images[original], matrix)
        images_out[row] = _photometric(warped, offset, factor)
        masks_out[row] = _warp_masks(masks[original], matrix)
        if soft is not None:
            soft_out[row] = np.clip(np.rint(_warp_image(soft[original], matrix)), 0, 255)
    source_index = np.tile(np.arange(count, dtype=np.int32), copies + 1)
    return images_out, masks_out, source_index, soft_out


def augment_training_set(prepared_dir: Path, out_dir: Path, params: AugmentParams) -> int:
    """Stage augment: write the augmented copy of prepared/train (originals first); return its row count.

    The binary masks and the soft confidence planes of every task are transformed with
    their image (one warp each), so all tasks and targets train on the same pictures.
    """
    prepared = load_set(prepared_dir / "train")
    soft = load_set(prepared_dir / "train", target="confidence")
    tasks = [name for name in prepared if name not in ("images", "ids")]
    planes = np.cumsum([prepared[task].shape[-1] for task in tasks])[:-1]
    images, stacked, rows, soft_stacked = augment(
        prepared["images"], np.concatenate([prepared[t] for t in tasks], axis=-1), params,
        soft=np.concatenate([soft[t] for t in tasks], axis=-1))
    with atomic_path(out_dir, is_dir=True) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "ids.npy", prepared["ids"][rows])
        for task, task_masks, task_soft in zip(tasks, np.split(stacked, planes, axis=-1),
                                               np.split(soft_stacked, planes, axis=-1)):
            np.save(tmp / f"masks_{task}.npy", task_masks)
            np.save(tmp / f"confidence_{task}.npy", task_soft)
    return len(images)


def _warp_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bilinear per channel in float32: Pillow's 8-bit bilinear truncates (about -0.5 level)."""
    size, coefficients = (image.shape[1], image.shape[0]), _pillow_coefficients(matrix)
    channels = [
        Image.fromarray(image[..., channel].astype(np.float32)).transform(
            size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=0)
        for channel in range(image.shape[-1])
    ]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


def _warp_masks(masks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Nearest-neighbour copies whole bytes, so 8 planes packed per byte move as one."""
    size, coefficients = (masks.shape[1], masks.shape[0]), _pillow_coefficients(matrix)
    packed = np.packbits(masks, axis=-1, bitorder="little")
    planes = [
        Image.fromarray(packed[..., plane]).transform(
            size, Image.Transform.AFFINE, coefficients, Image.Resampling.NEAREST, fillcolor=0)
        for plane in range(packed.shape[-1])
    ]
    warped = np.stack([np.asarray(plane) for plane in planes], axis=-1)
    return np.unpackbits(warped, axis=-1, count=masks.shape[-1], bitorder="little")


def _pillow_coefficients(matrix: np.ndarray) -> tuple[float, ...]:
    """Pillow wants (x, y) = (col, row) with pixel centres at +0.5, not (row, col) at 0."""
    to_pillow = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    return tuple((to_pillow @ matrix @ np.linalg.inv(to_pillow))[:2].ravel())


def _photometric(image: np.ndarray, offset: float, factor: float) -> np.ndarray:
    """Adjust the float warp and round once, so unchanged pixels come back exactly."""
    mean = image.mean(axis=(0, 1))
    adjusted = (image - mean) * factor + mean + offset
    return np.clip(np.rint(adjusted), 0, 255).astype(np.uint8)


def _check_arrays(images: np.ndarray, masks: np.ndarray) -> None:
    """Arrays as the prepare stage writes them; anything else is a programming error, named early."""
    if not (images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3):
        raise ValueError(f"images must be a uint8 array [N,H,W,3], got {images.dtype} {list(images.shape)}")
    if not (masks.dtype == np.uint8 and masks.ndim == 4 and masks.shape[:3] == images.shape[:3]):
        raise ValueError(f"masks must be uint8 [N,H,W,K] with the N,H,W of images {images.shape[:3]}, "
                         f"got {masks.dtype} {list(masks.shape)}")
    if masks.size and masks.max() > 1:
        raise ValueError(f"masks must be 0 or 1 everywhere, got a value of {masks.max()}")
