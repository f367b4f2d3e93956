"""The "easy" synthetic style: crisp, high-contrast lesions whose marks follow their outlines.

Models learn it quickly, which makes it a fast smoke test; it overstates how well they
do on real images (see the "realistic" style for that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retinaseg.core import layout
from retinaseg.fetch.synthetic.drawing import Canvas, Disc, blend, paint_disc, place_disc, resize_field, vessels, window

_ANNOTATORS = 4
_MARK_PROBABILITY = 0.85
_MAX_MARGIN = 3.0


@dataclass(frozen=True)
class _Kind:
    """How one lesion type looks and how often it occurs.

    ``presence`` is the chance an image has this type at all, then 1..``most`` lesions
    (for hard exudates: clusters of 4..11 spots) are placed.
    """

    colour: tuple[float, float, float]
    radius: tuple[float, float]
    fuzzy: bool
    opacity: float
    presence: float
    most: int
    clustered: bool = False


_KINDS = {
    "hemorrhages": _Kind((95, 12, 10), (12, 45), False, 0.92, presence=0.85, most=8),
    "redsmalldots": _Kind((105, 18, 12), (4, 9), False, 0.9, presence=0.8, most=12),
    "hardexudates": _Kind((252, 228, 95), (5, 18), False, 0.95, presence=0.75, most=4, clustered=True),
    "softexudates": _Kind((238, 226, 196), (18, 45), True, 0.8, presence=0.45, most=4),
}


@dataclass(frozen=True)
class _Blob:
    """An irregular lesion: radius modulated by a few random harmonics of the angle."""

    x: float
    y: float
    radius: float
    amps: np.ndarray
    phases: np.ndarray

    @property
    def reach(self) -> float:
        return self.radius * (1 + float(self.amps.sum()))

    def excess(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Distance outside the blob outline along the ray from its centre (<= 0 inside)."""
        dx, dy = xs - self.x, ys - self.y
        angle = np.arctan2(dy, dx)
        orders = np.arange(2, 2 + len(self.amps))[:, None, None]
        wobble = (self.amps[:, None, None] * np.cos(orders * angle + self.phases[:, None, None])).sum(0)
        return np.hypot(dx, dy) - self.radius * (1 + wobble)


def sample(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], None]:
    """One fundus image (uint8 HxWx3), its ground-truth maps (uint8 HxW per lesion type) and no lesion list.

    The marks follow the blobs' outlines, so the maps are the truth; no simulated truth is kept.
    """
    disc = place_disc(canvas, rng)
    image = _background(canvas, rng, disc)
    blend(image, vessels(canvas, rng, disc), rng.uniform(0.75, 1.0) * np.array([135, 30, 22]))
    maps = {}
    for lesion in layout.LESION_TYPES:
        kind = _KINDS[lesion]
        blobs = _place(canvas, rng, kind, disc)
        maps[lesion] = _annotate(canvas, rng, blobs)
        for blob in blobs:
            _paint(image, rng, kind, blob)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 2.0
    image *= canvas.fov[:, :, None]
    return np.clip(image, 0, 255).astype(np.uint8), maps, None


def _background(canvas: Canvas, rng: np.random.Generator, disc: Disc) -> np.ndarray:
    """Orange-red fundus, darker towards the rim and at the macula, with low-frequency texture."""
    coarse = resize_field(rng.standard_normal((6, 8)).astype(np.float32), (32, 24))
    texture = 0.07 * coarse + 0.03 * rng.standard_normal((24, 32)).astype(np.float32)
    luminance = (1 - 0.5 * canvas.rho**2.2) * (1 + resize_field(texture, (canvas.width, canvas.height)))
    colour = np.array([rng.uniform(190, 225), rng.uniform(78, 105), rng.uniform(30, 52)], dtype=np.float32)
    image = luminance[:, :, None] * colour
    macula = (canvas.cx - disc.side * canvas.radius * 0.04, canvas.cy + canvas.radius * rng.uniform(-0.05, 0.05))
    x, y, box = window(canvas.fov.shape, macula, 3 * disc.radius)
    shade = 0.3 * np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / (1.6 * disc.radius) ** 2)
    image[box] *= (1 - shade)[:, :, None]
    paint_disc(image, disc, rim=(250, 215, 140), cup=(255, 245, 210))
    return image


def _place(canvas: Canvas, rng: np.random.Generator, kind: _Kind, disc: Disc) -> list[_Blob]:
    """Random lesions of one type inside the field of view and off the optic disc."""
    if rng.random() >= kind.presence:
        return []
    blobs = []
    for _ in range(rng.integers(1, kind.most + 1)):
        first = _blob(canvas, rng, kind, disc, near=None)
        if first is None:
            continue
        blobs.append(first)
        for _ in range(rng.integers(3, 11) if kind.clustered else 0):
            blob = _blob(canvas, rng, kind, disc, near=(first.x, first.y))
            if blob is not None:
                blobs.append(blob)
    return blobs


def _blob(
    canvas: Canvas, rng: np.random.Generator, kind: _Kind, disc: Disc, near: tuple[float, float] | None
) -> _Blob | None:
    """A blob whose annotation margin stays inside the field of view, or None if none fits."""
    radius = max(rng.uniform(*kind.radius) * canvas.scale, 1.0)
    amps = rng.uniform(0, [0.3, 0.15, 0.08, 0.06])
    phases = rng.uniform(0, math.tau, size=4)
    reach = radius * (1 + amps.sum()) + _MAX_MARGIN * canvas.scale + 1.5
    for _ in range(20):
        if near is None:
            angle, spread = rng.uniform(0, math.tau), canvas.radius * math.sqrt(rng.random())
            x, y = canvas.cx + spread * math.cos(angle), canvas.cy + spread * math.sin(angle)
        else:
            x, y = near[0] + rng.normal(0, 45 * canvas.scale), near[1] + rng.normal(0, 45 * canvas.scale)
        inside = math.hypot(x - canvas.cx, y - canvas.cy) + reach <= canvas.radius - 1
        if inside and math.hypot(x - disc.x, y - disc.y) > disc.radius + reach:
            return _Blob(x, y, radius, amps, phases)
    return None


def _annotate(canvas: Canvas, rng: np.random.Generator, blobs: list[_Blob]) -> np.ndarray:
    """Sum of four annotators' confidence maps: each marks a lesion with p=0.85 at level 1..3."""
    levels = np.zeros((_ANNOTATORS, canvas.height, canvas.width), dtype=np.uint8)
    for blob in blobs:
        marked = rng.random(_ANNOTATORS) < _MARK_PROBABILITY
        level = rng.integers(1, 4, size=_ANNOTATORS).astype(np.uint8)
        margin = rng.uniform(0, _MAX_MARGIN, size=_ANNOTATORS) * canvas.scale
        x, y, box = window(canvas.fov.shape, (blob.x, blob.y), blob.reach + _MAX_MARGIN * canvas.scale + 1)
        excess = blob.excess(x, y)
        for annotator in np.flatnonzero(marked):
            region = levels[annotator][box]
            np.maximum(region, np.where(excess <= margin[annotator], level[annotator], np.uint8(0)), out=region)
    return (levels.sum(0, dtype=np.uint16) * layout.CONFIDENCE_STEP).astype(np.uint8)


def _paint(image: np.ndarray, rng: np.random.Generator, kind: _Kind, blob: _Blob) -> None:
    """Blend a lesion into the image: sharp antialiased edge, or a fuzzy one for soft exudates."""
    x, y, box = window(image.shape, (blob.x, blob.y), blob.reach + 2)
    excess = blob.excess(x, y)
    if kind.fuzzy:
        alpha = np.clip(0.5 - excess / (0.5 * blob.radius), 0, 1) ** 1.5
    else:
        alpha = np.clip(0.5 - excess, 0, 1)
    colour = np.array(kind.colour) * rng.uniform(0.9, 1.05)
    blend(image[box], kind.opacity * alpha, np.clip(colour, 0, 255))
