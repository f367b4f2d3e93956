"""Training losses and the Dice metric, written with ``keras.ops`` so any Keras 3 backend works.

Every function casts its inputs to float32 first: under the mixed_bfloat16 policy the model
outputs bfloat16, whose 8-bit mantissa is too coarse for sums over millions of pixels and
for logs of probabilities near 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from keras import ops

from retinaseg.core.tasks import Task, lesion_planes

#: Losses that take one weight per mask plane.
WEIGHTED_LOSSES = ("weighted_bce", "weighted_cce")
#: Probabilities are clipped to [EPSILON, 1 - EPSILON] before taking logs.
EPSILON = 1e-7


def _float32(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice over the lesion planes, with sums pooled over the whole batch.

    Per plane c: (2*sum(t*p) + smooth) / (sum(t) + sum(p) + smooth), all samples and pixels
    summed together, then the mean over the lesion planes: the only plane when C == 1,
    planes 1..C-1 otherwise. Background is left out because it covers most of a fundus
    image, so its Dice is near 1 whatever the model does and would drown the lesion signal.
    ``smooth`` keeps empty masks defined: an empty truth predicted empty scores 1.
    """
    y_true, y_pred = _float32(y_true, y_pred)
    planes = y_pred.shape[-1]
    y_true = ops.reshape(y_true, (-1, planes))
    y_pred = ops.reshape(y_pred, (-1, planes))
    overlap = ops.sum(y_true * y_pred, axis=0)
    total = ops.sum(y_true, axis=0) + ops.sum(y_pred, axis=0)
    dice = (2.0 * overlap + smooth) / (total + smooth)
    return ops.mean(dice[lesion_planes(planes)[0]:])


# Keras names a function metric after its ``name`` attribute, so logs read "dice" and
# "val_dice"; ``__name__`` stays intact so a saved model can still find the function.
dice_coefficient.name = "dice"


def _bce(y_true, y_pred, weights: np.ndarray):
    """Binary cross-entropy of every pixel and plane, positive term of plane c times weights[c]."""
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    positive = y_true * weights * ops.log(y_pred)
    negative = (1.0 - y_true) * ops.log(1.0 - y_pred)
    return -ops.mean(positive + negative)


def _cce(y_true, y_pred, weights: np.ndarray):
    """Categorical cross-entropy per pixel (planes summed, plane c times weights[c]), then the mean."""
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return -ops.mean(ops.sum(y_true * weights * ops.log(y_pred), axis=-1))


def build_loss(name: str, task: Task, class_weights: Sequence[float] | None = None) -> Callable:
    """The loss ``name`` (one of ``params.LOSSES``, valid for ``task``) as a Keras loss whose ``__name__`` is ``name``.

    ``class_weights`` (one per plane) are used by the weighted losses only. "dice" is
    1 - dice_coefficient; the tutorial minimised -dice, which has the same gradient.
    """
    weights = np.ones(task.num_planes, dtype="float32")
    if name in WEIGHTED_LOSSES:
        if class_weights is None or len(class_weights) != task.num_planes:
            raise ValueError(f"loss {name!r} needs {task.num_planes} class weight(s), one per plane of "
                             f"task {task.name!r}, got {class_weights!r}")
        weights = np.asarray(class_weights, dtype="float32")

    terms = {"dice": lambda t, p: 1.0 - dice_coefficient(t, p),
             "dice_bce": lambda t, p: 1.0 - dice_coefficient(t, p) + _bce(t, p, weights),
             "bce": lambda t, p: _bce(t, p, weights), "weighted_bce": lambda t, p: _bce(t, p, weights),
             "cce": lambda t, p: _cce(t, p, weights), "weighted_cce": lambda t, p: _cce(t, p, weights)}
    if name not in terms:
        raise ValueError(f"unknown loss {name!r}; one of {', '.join(terms)}")

    def loss(y_true, y_pred):
        return terms[name](*_float32(y_true, y_pred))

    loss.__name__ = name
    return loss


def class_weights_from_masks(masks: np.ndarray, max_weight: float = 50.0) -> list[float]:
    """One weight per plane of ``masks`` [N,H,W,C] for weighted_bce / weighted_cce.

    Lesions cover well under 1% of a fundus image, so an unweighted loss is nearly minimal
    for a model that never predicts a lesion; weighting each class by its rarity offsets that.
    Binary: the positive weight is negatives / positives (the usual pos_weight of a weighted
    BCE). Multiclass: inverse pixel frequency, normalised so background is 1.
    Weights are clipped to ``max_weight`` so a class with a handful of pixels cannot blow up
    the gradients. A class with no pixels gets ``max_weight``, the limit of its ratio: an
    infinite weight would turn 0 * inf into NaN in the loss, and any finite value is harmless
    because that class's positive term is zero on these masks.
    """
    planes = masks.shape[-1]
    counts = masks.reshape(-1, planes).sum(axis=0, dtype=np.float64)
    reference = masks.size // planes - counts[0] if planes == 1 else counts[0]
    weights = np.full(planes, float(max_weight))
    np.divide(reference, counts, out=weights, where=counts > 0)
    return np.minimum(weights, max_weight).tolist()
