"""Geometry and drawing helpers shared by the synthetic styles: field of view, optic disc, vessels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retinaseg.core import layout

#: Sizes in pixels are given for a full-size (1500x1152) image and scale with the height.
FULL_HEIGHT = layout.IMAGE_SIZE[1]
_FOV_DIAMETER = 1150
_OPTIC_DISC_RADIUS = 75


@dataclass(frozen=True)
class Canvas:
    """Geometry shared by all images of one dataset: size and field of view."""

    width: int
    height: int
    cx: float
    cy: float
    radius: float
    scale: float
    fov: np.ndarray
    rho: np.ndarray

    @classmethod
    def create(cls, width: int, height: int) -> Canvas:
        scale = height / FULL_HEIGHT
        cx, cy = (width - 1) / 2, (height - 1) / 2
        radius = min(_FOV_DIAMETER / 2 * scale, width / 2 - 1)
        dx = (np.arange(width, dtype=np.float32) - cx) / radius
        dy = (np.arange(height, dtype=np.float32) - cy) / radius
        rho = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
        return cls(width, height, cx, cy, radius, scale, rho <= 1.0, rho)


@dataclass(frozen=True)
class Disc:
    """The optic disc; ``side`` is +1 when it lies right of the centre (one eye), -1 for the other."""

    x: float
    y: float
    radius: float
    side: float


def place_disc(canvas: Canvas, rng: np.random.Generator) -> Disc:
    """The optic disc a third of the way to the rim, on a random side."""
    side = rng.choice([-1.0, 1.0])
    x = canvas.cx + side * canvas.radius * rng.uniform(0.33, 0.42)
    y = canvas.cy + canvas.radius * rng.uniform(-0.08, 0.08)
    radius = max(_OPTIC_DISC_RADIUS * canvas.scale * rng.uniform(0.85, 1.15), 3.0)
    return Disc(x, y, radius, side)


def paint_disc(image: np.ndarray, disc: Disc, rim: tuple[int, int, int], cup: tuple[int, int, int]) -> None:
    """In place: a bright disc with a soft edge and a paler central cup."""
    x, y, box = window(image.shape, (disc.x, disc.y), 1.6 * disc.radius)
    distance = np.hypot(x - disc.x, y - disc.y) / disc.radius
    blend(image[box], np.exp(-(distance**6)), np.array(rim))
    blend(image[box], 0.6 * np.exp(-((distance / 0.45) ** 4)), np.array(cup))


def vessels(canvas: Canvas, rng: np.random.Generator, disc: Disc) -> np.ndarray:
    """Opacity (0..1) of a branching vessel tree leaving the optic disc; arcades bend around the macula."""
    layer = Image.new("L", (canvas.width, canvas.height))
    draw = ImageDraw.Draw(layer)
    temporal = -disc.side
    roots = [
        ((temporal * 0.3, -1.0), (temporal, 0.2)),
        ((temporal * 0.3, 1.0), (temporal, -0.2)),
        ((-temporal * 0.5, -1.0), (-temporal, -0.4)),
        ((-temporal * 0.5, 1.0), (-temporal, 0.4)),
    ]
    roots += [((rng.uniform(-1, 1), rng.uniform(-1, 1)), None) for _ in range(rng.integers(1, 4))]
    width = max(11 * canvas.scale, 1.0)
    for start, bend in roots:
        heading = math.atan2(start[1], start[0]) + rng.normal(0, 0.15)
        target = None if bend is None else math.atan2(bend[1], bend[0])
        origin = (disc.x + 0.3 * disc.radius * math.cos(heading), disc.y + 0.3 * disc.radius * math.sin(heading))
        root_width = width if target is not None else 0.6 * width
        _branch(draw, canvas, rng, origin, heading, target, root_width, 1.4 * canvas.radius, depth=0)
    blur = ImageFilter.GaussianBlur(max(0.8 * canvas.scale, 0.5))
    return np.asarray(layer.filter(blur), dtype=np.float32) * (0.8 / 255)


def _branch(
    draw: ImageDraw.ImageDraw,
    canvas: Canvas,
    rng: np.random.Generator,
    point: tuple[float, float],
    heading: float,
    target: float | None,
    width: float,
    length: float,
    depth: int,
) -> None:
    """Draw one vessel as a tapering random walk that spawns thinner side branches."""
    step = max(14 * canvas.scale, 1.5)
    x, y = point
    path = [(x, y)]
    for n in range(int(length / step)):
        if target is not None:
            heading += 0.04 * math.remainder(target - heading, math.tau)
        heading += rng.normal(0, 0.12)
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        if math.hypot(x - canvas.cx, y - canvas.cy) > canvas.radius:
            break
        path.append((x, y))
        if depth < 3 and n > 2 and rng.random() < 0.07:
            turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
            _branch(draw, canvas, rng, (x, y), heading + turn, None, 0.65 * width, 0.45 * length, depth + 1)
    tapered = np.linspace(width, 0.55 * width, num=max(len(path) // 6, 1) + 1)
    for chunk, chunk_width in zip(range(0, len(path) - 1, 6), tapered):
        draw.line(path[chunk : chunk + 7], fill=255, width=max(round(chunk_width), 1), joint="curve")


def window(
    shape: tuple[int, ...], centre: tuple[float, float], half: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Pixel coordinates (x as a row, y as a column) and slices of the box around ``centre``."""
    x0, x1 = max(int(centre[0] - half), 0), min(int(centre[0] + half) + 2, shape[1])
    y0, y1 = max(int(centre[1] - half), 0), min(int(centre[1] + half) + 2, shape[0])
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return xs, ys, (slice(y0, y1), slice(x0, x1))


def blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: image = (1 - alpha) * image + alpha * colour."""
    image += alpha[:, :, None] * (colour.astype(np.float32) - image)


def resize_field(field: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Smoothly resize a small float field to ``size`` (width, height)."""
    return np.asarray(Image.fromarray(field).resize(size, Image.Resampling.BICUBIC))
