"""95 % intervals over test images by the bootstrap, so that a difference smaller than its interval reads as a tie.

Images, not pixels or lesions, are resampled: they are the independent units of a test set.
The draws are seeded, so the same scores give the same interval in every run.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 1000
SEED = 0


def weights(n_images: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each image is drawn [samples, n_images], each resample as large as the test set."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=samples).astype(float)


def interval(values: np.ndarray) -> list[float | None]:
    """The 2.5th and 97.5th percentiles of resampled values, undefined resamples left out."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return [float(value) for value in np.percentile(values, [2.5, 97.5])] if values.size else [None, None]


def dice(counts: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Pooled Dice of each resample from per-image TP, FP, FN(, TN) counts [N, 4]."""
    tp, fp, fn = (drawn @ counts[:, column].astype(float) for column in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)
