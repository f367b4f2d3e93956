"""Turn DIARETDB1 confidence maps into the binary class planes a task trains on."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from retinaseg.core.tasks import Task


def binarize(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Lesion where the summed annotator confidence reaches ``threshold`` of full scale.

    The tutorial uses 0.1: levels 2 and up, so a lone mark at the lowest confidence (21/255 =
    0.082) does not count. The dataset's own toolkit uses 0.75 (strong agreement).
    """
    return confidence.astype(np.float32) / 255.0 >= threshold


def class_planes(lesions: Mapping[str, np.ndarray], task: Task) -> np.ndarray:
    """Merge binary lesion maps into uint8 planes [H, W, C] of one task.

    A one-class task keeps one plane (sigmoid output). A task with several classes gets a
    background plane first and mutually exclusive planes (softmax output); a pixel claimed
    by two classes goes to the one listed first in ``params.yaml``.
    """
    merged = [np.logical_or.reduce([lesions[name] for name in members]) for members in task.classes.values()]
    if not task.is_multiclass:
        return merged[0][..., None].astype(np.uint8)
    taken = np.zeros_like(merged[0])
    exclusive = []
    for plane in merged:
        exclusive.append(plane & ~taken)
        taken |= plane
    return np.stack([~taken, *exclusive], axis=-1).astype(np.uint8)


def confidence_planes(confidence: Mapping[str, np.ndarray], task: Task) -> np.ndarray:
    """Soft targets: uint8 planes [H, W, C] of summed annotator confidence (255 = all agree fully).

    A class takes the highest confidence of its lesion types. With several classes the
    background plane is what the classes leave, and classes listed first keep their
    confidence where the sum would pass full scale, as ``class_planes`` gives them the pixel.
    """
    merged = [np.maximum.reduce([confidence[name].astype(np.int32) for name in members])
              for members in task.classes.values()]
    if not task.is_multiclass:
        return merged[0][..., None].astype(np.uint8)
    left = np.full_like(merged[0], 255)
    planes = []
    for plane in merged:
        taken = np.minimum(plane, left)
        planes.append(taken)
        left -= taken
    return np.stack([left, *planes], axis=-1).astype(np.uint8)
