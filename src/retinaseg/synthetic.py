"""Seeded generator of DIARETDB1-like data in the official layout.

The real dataset may not be redistributed, so tests, CI and offline trials run the
whole pipeline on this stand-in: fundus-like RGB images, ground-truth maps that sum
the confidence of four simulated annotators, the circular field-of-view mask and
the split lists, all in the folders and formats of DIARETDB1 v1.1.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from retinaseg import layout
from retinaseg.atomic import atomic_path
from retinaseg.errors import PipelineError

#: Sizes below are in pixels of a full-size (1500x1152) image and scale with the height.
_FULL_HEIGHT = layout.IMAGE_SIZE[1]
_FOV_DIAMETER = 1150
_OPTIC_DISC_RADIUS = 75
_ANNOTATORS = 4
_MARK_PROBABILITY = 0.85
_MAX_MARGIN = 3.0
#: Fast PNG compression: the images are noisy, so stronger levels gain little but cost seconds.
_PNG_LEVEL = 1


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
class _Canvas:
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
    def create(cls, width: int, height: int) -> _Canvas:
        scale = height / _FULL_HEIGHT
        cx, cy = (width - 1) / 2, (height - 1) / 2
        radius = min(_FOV_DIAMETER / 2 * scale, width / 2 - 1)
        dx = (np.arange(width, dtype=np.float32) - cx) / radius
        dy = (np.arange(height, dtype=np.float32) - cy) / radius
        rho = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
        return cls(width, height, cx, cy, radius, scale, rho <= 1.0, rho)


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


def generate(
    root: Path, *, num_images: int = layout.NUM_IMAGES, size: tuple[int, int] = layout.IMAGE_SIZE, seed: int = 0
) -> None:
    """Write a complete synthetic DIARETDB1 under ``root`` (``root/resources/...``).

    Each image draws from its own generator seeded by ``(seed, image_id)``, so the
    same seed gives byte-identical files and images do not depend on ``num_images``.
    """
    if not 1 <= num_images <= 999:
        raise PipelineError(f"synthetic data: num_images must be 1..999 (three-digit ids), got {num_images}")
    width, height = size
    if min(width, height) < 32:
        raise PipelineError(f"synthetic data: size must be at least 32x32 pixels, got {width}x{height}")
    root = Path(root)
    canvas = _Canvas.create(width, height)
    _save(Image.fromarray(np.where(canvas.fov, 255, 0).astype(np.uint8)), root / layout.FUNDUS_MASK)
    for image_id in tqdm(range(1, num_images + 1), desc="synthetic images", unit="image"):
        image, maps = _sample(canvas, np.random.default_rng([seed, image_id]))
        _save(Image.fromarray(image), root / layout.image_path(image_id))
        for lesion, level_map in maps.items():
            _save(Image.fromarray(level_map), root / layout.groundtruth_path(lesion, image_id))
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


def _sample(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One fundus image (uint8 HxWx3) and its ground-truth maps (uint8 HxW per lesion type)."""
    side = rng.choice([-1.0, 1.0])  # optic disc right (one eye) or left (the other)
    disc = (
        canvas.cx + side * canvas.radius * rng.uniform(0.33, 0.42),
        canvas.cy + canvas.radius * rng.uniform(-0.08, 0.08),
    )
    disc_radius = max(_OPTIC_DISC_RADIUS * canvas.scale * rng.uniform(0.85, 1.15), 3.0)
    image = _background(canvas, rng, disc, disc_radius, side)
    _blend(image, _vessels(canvas, rng, disc, disc_radius, side), rng.uniform(0.75, 1.0) * np.array([135, 30, 22]))
    maps = {}
    for lesion in layout.LESION_TYPES:
        kind = _KINDS[lesion]
        blobs = _place(canvas, rng, kind, disc, disc_radius)
        maps[lesion] = _annotate(canvas, rng, blobs)
        for blob in blobs:
            _paint(image, rng, kind, blob)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 2.0
    image *= canvas.fov[:, :, None]
    return np.clip(image, 0, 255).astype(np.uint8), maps


def _background(
    canvas: _Canvas, rng: np.random.Generator, disc: tuple[float, float], disc_radius: float, side: float
) -> np.ndarray:
    """Orange-red fundus, darker towards the rim and at the macula, with low-frequency texture."""
    coarse = _upsample(rng.standard_normal((6, 8)).astype(np.float32), (32, 24))
    texture = 0.07 * coarse + 0.03 * rng.standard_normal((24, 32)).astype(np.float32)
    luminance = (1 - 0.5 * canvas.rho**2.2) * (1 + _upsample(texture, (canvas.width, canvas.height)))
    colour = np.array([rng.uniform(190, 225), rng.uniform(78, 105), rng.uniform(30, 52)], dtype=np.float32)
    image = luminance[:, :, None] * colour
    macula = (canvas.cx - side * canvas.radius * 0.04, canvas.cy + canvas.radius * rng.uniform(-0.05, 0.05))
    x, y, window = _window(canvas.fov.shape, macula, 3 * disc_radius)
    shade = 0.3 * np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / (1.6 * disc_radius) ** 2)
    image[window] *= (1 - shade)[:, :, None]
    x, y, window = _window(canvas.fov.shape, disc, 1.6 * disc_radius)
    distance = np.hypot(x - disc[0], y - disc[1]) / disc_radius
    _blend(image[window], np.exp(-(distance**6)), np.array([250, 215, 140]))
    _blend(image[window], 0.6 * np.exp(-((distance / 0.45) ** 4)), np.array([255, 245, 210]))
    return image


def _vessels(
    canvas: _Canvas, rng: np.random.Generator, disc: tuple[float, float], disc_radius: float, side: float
) -> np.ndarray:
    """Opacity (0..1) of a branching vessel tree leaving the optic disc; arcades bend around the macula."""
    layer = Image.new("L", (canvas.width, canvas.height))
    draw = ImageDraw.Draw(layer)
    temporal = -side
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
        origin = (disc[0] + 0.3 * disc_radius * math.cos(heading), disc[1] + 0.3 * disc_radius * math.sin(heading))
        root_width = width if target is not None else 0.6 * width
        _branch(draw, canvas, rng, origin, heading, target, root_width, 1.4 * canvas.radius, depth=0)
    blur = ImageFilter.GaussianBlur(max(0.8 * canvas.scale, 0.5))
    return np.asarray(layer.filter(blur), dtype=np.float32) * (0.8 / 255)


def _branch(
    draw: ImageDraw.ImageDraw,
    canvas: _Canvas,
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


def _place(
    canvas: _Canvas, rng: np.random.Generator, kind: _Kind, disc: tuple[float, float], disc_radius: float
) -> list[_Blob]:
    """Random lesions of one type inside the field of view and off the optic disc."""
    if rng.random() >= kind.presence:
        return []
    blobs = []
    for _ in range(rng.integers(1, kind.most + 1)):
        first = _blob(canvas, rng, kind, disc, disc_radius, near=None)
        if first is None:
            continue
        blobs.append(first)
        for _ in range(rng.integers(3, 11) if kind.clustered else 0):
            blob = _blob(canvas, rng, kind, disc, disc_radius, near=(first.x, first.y))
            if blob is not None:
                blobs.append(blob)
    return blobs


def _blob(
    canvas: _Canvas,
    rng: np.random.Generator,
    kind: _Kind,
    disc: tuple[float, float],
    disc_radius: float,
    near: tuple[float, float] | None,
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
        if inside and math.hypot(x - disc[0], y - disc[1]) > disc_radius + reach:
            return _Blob(x, y, radius, amps, phases)
    return None


def _annotate(canvas: _Canvas, rng: np.random.Generator, blobs: list[_Blob]) -> np.ndarray:
    """Sum of four annotators' confidence maps: each marks a lesion with p=0.85 at level 1..3."""
    levels = np.zeros((_ANNOTATORS, canvas.height, canvas.width), dtype=np.uint8)
    for blob in blobs:
        marked = rng.random(_ANNOTATORS) < _MARK_PROBABILITY
        level = rng.integers(1, 4, size=_ANNOTATORS).astype(np.uint8)
        margin = rng.uniform(0, _MAX_MARGIN, size=_ANNOTATORS) * canvas.scale
        x, y, window = _window(canvas.fov.shape, (blob.x, blob.y), blob.reach + _MAX_MARGIN * canvas.scale + 1)
        excess = blob.excess(x, y)
        for annotator in np.flatnonzero(marked):
            region = levels[annotator][window]
            np.maximum(region, np.where(excess <= margin[annotator], level[annotator], np.uint8(0)), out=region)
    return (levels.sum(0, dtype=np.uint16) * layout.CONFIDENCE_STEP).astype(np.uint8)


def _paint(image: np.ndarray, rng: np.random.Generator, kind: _Kind, blob: _Blob) -> None:
    """Blend a lesion into the image: sharp antialiased edge, or a fuzzy one for soft exudates."""
    x, y, window = _window(image.shape, (blob.x, blob.y), blob.reach + 2)
    excess = blob.excess(x, y)
    if kind.fuzzy:
        alpha = np.clip(0.5 - excess / (0.5 * blob.radius), 0, 1) ** 1.5
    else:
        alpha = np.clip(0.5 - excess, 0, 1)
    colour = np.array(kind.colour) * rng.uniform(0.9, 1.05)
    _blend(image[window], kind.opacity * alpha, np.clip(colour, 0, 255))


def _window(
    shape: tuple[int, ...], centre: tuple[float, float], half: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Pixel coordinates (x as a row, y as a column) and slices of the box around ``centre``."""
    x0, x1 = max(int(centre[0] - half), 0), min(int(centre[0] + half) + 2, shape[1])
    y0, y1 = max(int(centre[1] - half), 0), min(int(centre[1] + half) + 2, shape[0])
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return xs, ys, (slice(y0, y1), slice(x0, x1))


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: image = (1 - alpha) * image + alpha * colour."""
    image += alpha[:, :, None] * (colour.astype(np.float32) - image)


def _upsample(field: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Smoothly resize a small float field to ``size`` (width, height)."""
    return np.asarray(Image.fromarray(field).resize(size, Image.Resampling.BICUBIC))
