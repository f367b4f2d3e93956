"""Landmarks found in the image itself: the optic disc, where bright-lesion false alarms gather.

The disc is the brightest large region of a fundus photograph. Exudates can be as bright,
but they are small, so brightness averaged over a disc-sized window, after removing the
slow illumination gradient of the camera, peaks on the disc.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: Optic-disc radius as a fraction of the field-of-view diameter; DIARETDB1's discs measure
#: about 0.07 of it, so the mask is a little generous.
DISC_RADIUS_OF_FOV = 0.09


def fov_diameter(fov: np.ndarray) -> float:
    """Diameter of the circle with the field of view's area, in pixels."""
    return 2.0 * math.sqrt(np.count_nonzero(fov) / math.pi)


def _masked_blur(values: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean over the field of view only, so the black margin does not darken the rim."""
    weight = ndimage.gaussian_filter(fov.astype(np.float32), sigma)
    return ndimage.gaussian_filter(values * fov, sigma) / np.maximum(weight, 1e-6)


def locate_optic_disc(image: np.ndarray, fov: np.ndarray) -> tuple[float, float, float]:
    """(row, column, radius) of the optic disc of an RGB image [H,W,3] with field of view [H,W]."""
    diameter = fov_diameter(fov)
    radius = DISC_RADIUS_OF_FOV * diameter
    brightness = image.astype(np.float32).mean(axis=-1)
    local = _masked_blur(brightness, fov, max(radius / 2, 1.0))
    illumination = _masked_blur(brightness, fov, max(diameter / 6, 1.0))
    inner = ndimage.binary_erosion(fov, iterations=max(int(radius / 2), 1)) if fov.any() else fov
    score = np.where(inner if inner.any() else fov, local - illumination, -np.inf)
    row, column = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(row), float(column), float(radius)


def disc_mask(shape: tuple[int, int], disc: tuple[float, float, float]) -> np.ndarray:
    """Boolean [H,W] disc of ``(row, column, radius)``."""
    row, column, radius = disc
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - row) ** 2 + (columns - column) ** 2 <= radius**2


def optic_disc_mask(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Boolean [H,W] mask of the optic disc located in ``image``."""
    return disc_mask(fov.shape, locate_optic_disc(image, fov))
