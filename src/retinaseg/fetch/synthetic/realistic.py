"""The "realistic" synthetic style: subtle lesions, coarse annotator marks, photographic flaws.

Real DIARETDB1 maps do not outline lesions. Each of four annotators circles a lesion or
a group of lesions with a circle, ellipse or polygon several times wider than it, so a
marked region is mostly ordinary fundus and barely differs from its surroundings. This
style draws the lesions and, separately, four simulated annotators with their own habits;
``retinaseg.fetch.synthetic.calibration`` compares the resulting figures with the real ones.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retinaseg.core import layout
from retinaseg.fetch.synthetic.drawing import Canvas, Disc, blend, paint_disc, place_disc, resize_field, vessels, window


@dataclass(frozen=True)
class _Kind:
    """How one lesion type looks and clusters, and how far apart annotators still group it.

    Sizes are full-size pixels. An image has the type with chance ``presence``, then
    ``clusters`` clusters of ``per_cluster`` lesions within ``spread`` of the cluster centre
    (or on a ring of that radius with chance ``ring``, as circinate exudates do).
    A share ``flames`` of lesions is elongated along the nerve fibres (away from the disc).
    Each lesion tints the fundus towards ``colour`` by ``opacity``, softened by ``blur``;
    ``contrast`` is how far full opacity moves the fundus's green (the channel that shows red
    lesions and exudates best), which makes a lesion's visibility (see ``visibility``).
    ``grouping`` multiplies every annotator's grouping distance; each annotator also draws
    ``lone_marks`` marks per image on average around nothing drawn (a shadow, a reflex, a
    doubt). ``clinical`` names the lesions in the simulated truth; only haemorrhages have
    flames, named ``flame_haemorrhage``.
    """

    clinical: str
    presence: float
    clusters: tuple[int, int]
    per_cluster: tuple[int, int]
    spread: tuple[float, float]
    radius: tuple[float, float]
    colour: tuple[int, int, int]
    opacity: tuple[float, float]
    blur: float
    contrast: float
    grouping: float
    flames: float = 0.0
    ring: float = 0.0
    lone_marks: float = 0.0


_KINDS = {
    "hemorrhages": _Kind(
        clinical="dot_blot_haemorrhage",
        presence=1.0, clusters=(22, 120), per_cluster=(1, 5), spread=(20, 70), radius=(3, 13),
        colour=(120, 25, 20), opacity=(0.05, 0.7), blur=1.5, contrast=0.7, grouping=1.0, flames=0.25,
        lone_marks=0.6,
    ),
    "redsmalldots": _Kind(
        clinical="microaneurysm",
        presence=0.95, clusters=(20, 100), per_cluster=(1, 4), spread=(5, 150), radius=(1.5, 4),
        colour=(120, 25, 20), opacity=(0.4, 0.65), blur=0.8, contrast=0.7, grouping=3.0,
    ),
    "hardexudates": _Kind(
        clinical="hard_exudate",
        presence=0.75, clusters=(3, 12), per_cluster=(4, 25), spread=(40, 160), radius=(2, 8),
        colour=(250, 225, 120), opacity=(0.35, 0.7), blur=1.0, contrast=1.7, grouping=2.0, ring=0.3,
    ),
    "softexudates": _Kind(
        clinical="cotton_wool_spot",
        presence=0.6, clusters=(1, 4), per_cluster=(1, 2), spread=(20, 60), radius=(15, 40),
        colour=(235, 220, 180), opacity=(0.25, 0.45), blur=8.0, contrast=1.7, grouping=1.5,
    ),
}
#: What the simulated truth calls a haemorrhage drawn as a flame.
_FLAME = "flame_haemorrhage"


@dataclass(frozen=True)
class _Annotator:
    """One annotator's habits; distances are full-size pixels.

    Lesions closer than ``grouping`` (edge to edge) get one mark. Every annotator sees the
    same visibility of a group (that of its most visible lesion), blurred by a little noise
    of its own (sd ``doubt``): the chance to mark it is ``notice`` times a logistic that
    reaches half at visibility ``seen_at`` (width ``SLOPE``), so faint lesions are marked by
    few annotators and plain ones by all. A mark is drawn at full confidence (3) with a
    chance that rises the same way around ``sure_at``, else at 2 (or, one time in six, 1).
    The mark is a shape ``widening`` times as wide as a lone lesion (at least ``smallest``).
    """

    grouping: float
    notice: float
    seen_at: float
    sure_at: float
    doubt: float
    widening: tuple[float, float]
    smallest: float


_ANNOTATORS = (
    _Annotator(7, 0.97, seen_at=0.17, sure_at=0.16, doubt=0.04, widening=(1.8, 2.5), smallest=2),
    _Annotator(14, 0.9, seen_at=0.22, sure_at=0.2, doubt=0.04, widening=(2.0, 3.0), smallest=8),
    _Annotator(20, 0.9, seen_at=0.27, sure_at=0.26, doubt=0.04, widening=(2.5, 3.5), smallest=11),
    _Annotator(40, 0.75, seen_at=0.34, sure_at=0.3, doubt=0.04, widening=(2.4, 3.4), smallest=14),
)
#: Width of the annotators' logistic in visibility.
SLOPE = 0.02
#: Gaussian blur (sd, full-size pixels) of eye and camera that lowers a small lesion's visible contrast.
_SIGHT_BLUR = 2.0
#: Half extent (full-size pixels) of the lesion a lone mark pretends to circle.
_LONE_MARK_SIZE = (3.0, 8.0)
#: Mark shapes and how often annotators pick them.
_SHAPES = {"circle": 0.4, "ellipse": 0.35, "polygon": 0.25}


@dataclass(frozen=True)
class _Lesions:
    """Lesions of one type as parallel arrays (pixels of this canvas): centre, semi-axes, angle, flame or not, opacity."""

    x: np.ndarray
    y: np.ndarray
    major: np.ndarray
    minor: np.ndarray
    angle: np.ndarray
    flame: np.ndarray
    opacity: np.ndarray

    def half_extents(self) -> tuple[np.ndarray, np.ndarray]:
        """Half width and half height of each lesion's bounding box."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return np.hypot(self.major * cos, self.minor * sin), np.hypot(self.major * sin, self.minor * cos)

    def visibility(self, kind: _Kind, scale: float) -> np.ndarray:
        """How plainly each lesion shows: its contrast, lowered where it is narrow next to the blur of sight.

        ``scale`` converts canvas pixels to full-size ones, so a smaller copy sees the same lesions.
        """
        narrow = self.minor / scale / _SIGHT_BLUR
        return self.opacity * kind.contrast * (1 - np.exp(-(narrow**2) / 2))


def sample(
    canvas: Canvas, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict[str, Any]]]:
    """One fundus image (uint8 HxWx3), its ground-truth maps (uint8 HxW per lesion type) and the lesions drawn.

    The lesions are the truth the maps only hint at (see ``_truth``), so evaluation can
    also score against what is really in the image.
    """
    disc = place_disc(canvas, rng)
    reflectance = _fundus(canvas, rng, disc)
    maps, truth = {}, []
    # One random stream per lesion type: retuning one type leaves the others' draws as they were.
    for lesion, stream in zip(layout.LESION_TYPES, rng.spawn(len(layout.LESION_TYPES))):
        kind = _KINDS[lesion]
        lesions = _place(canvas, stream, kind, disc)
        _paint(reflectance, canvas, stream, kind, lesions)
        visibility = lesions.visibility(kind, canvas.scale)
        maps[lesion], annotators = _annotate(canvas, stream, kind, lesions, visibility)
        truth += _truth(lesion, kind, lesions, annotators, visibility)
    return _photograph(canvas, rng, reflectance), maps, truth


def _truth(
    lesion: str, kind: _Kind, lesions: _Lesions, annotators: np.ndarray, visibility: np.ndarray
) -> list[dict[str, Any]]:
    """JSON-ready lesions: type, clinical kind, shape (canvas pixels, as drawn), visibility, annotators who marked it.

    ``x`` is the column and ``y`` the row in the coordinates of the ``ImageDraw.polygon`` that
    painted the lesion, where pixel (row r, column c) spans [c, c+1) x [r, r+1): the centre lies
    in pixel (floor(y), floor(x)). ``angle`` turns the major axis from the x axis towards y.
    """
    return [
        {"type": lesion, "kind": _FLAME if flame else kind.clinical,
         "x": round(x, 2), "y": round(y, 2), "major": round(major, 2), "minor": round(minor, 2),
         "angle": round(angle, 2), "visibility": round(seen, 3), "annotators": count}
        for x, y, major, minor, angle, flame, seen, count in zip(
            lesions.x.tolist(), lesions.y.tolist(), lesions.major.tolist(), lesions.minor.tolist(),
            lesions.angle.tolist(), lesions.flame.tolist(), visibility.tolist(), annotators.tolist())
    ]


def _fundus(canvas: Canvas, rng: np.random.Generator, disc: Disc) -> np.ndarray:
    """Fundus colour under even light: pigment, choroidal texture, macula, optic disc and vessels."""
    colour = np.array([rng.uniform(170, 230), rng.uniform(60, 105), rng.uniform(18, 50)], dtype=np.float32)
    choroid = _noise(canvas, rng, cells=48) * rng.uniform(0.03, 0.08)
    grain = _noise(canvas, rng, cells=160) * rng.uniform(0.01, 0.025)
    # The choroid shows mostly in red; green and blue see the retina in front of it.
    image = colour * (1 + choroid[:, :, None] * np.array([1.0, 0.5, 0.3], np.float32) + grain[:, :, None])
    macula_x = disc.x - disc.side * 2 * disc.radius * rng.uniform(2.3, 2.7)
    macula = (macula_x, disc.y + disc.radius * rng.uniform(0.0, 0.4))
    x, y, box = window(image.shape, macula, 3 * disc.radius)
    shade = rng.uniform(0.15, 0.3) * np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / (1.4 * disc.radius) ** 2)
    image[box] *= (1 - shade)[:, :, None]
    paint_disc(image, disc, rim=(250, 225, 150), cup=(255, 245, 215))
    blend(image, vessels(canvas, rng, disc) * rng.uniform(0.55, 0.8), colour * np.array([0.6, 0.45, 0.5]))
    return image


def _noise(canvas: Canvas, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth unit noise with about ``cells`` blobs across the image height, at the canvas size."""
    rows = max(min(cells, canvas.height // 2), 2)
    cols = max(round(rows * canvas.width / canvas.height), 2)
    return resize_field(rng.standard_normal((rows, cols)).astype(np.float32), (canvas.width, canvas.height))


def _place(canvas: Canvas, rng: np.random.Generator, kind: _Kind, disc: Disc) -> _Lesions:
    """Clustered lesions of one type, away from the optic disc and the rim of the field of view."""
    # Log-uniform cluster counts: most images are mild, a few severe, as in the real set.
    clusters = int(_log_uniform(rng, kind.clusters[0], kind.clusters[1] + 1))
    counts = rng.integers(*kind.per_cluster, endpoint=True, size=clusters)
    if rng.random() >= kind.presence:
        counts = counts[:0]
    centres = _spots_in_fundus(canvas, rng, disc, len(counts))
    counts = counts[: len(centres)]
    spreads = _log_uniform(rng, *kind.spread, size=len(counts)) * canvas.scale
    members = np.repeat(np.arange(len(counts)), counts)
    angle = rng.uniform(0, math.tau, size=len(members))
    on_ring = (rng.random(len(counts)) < kind.ring)[members]
    distance = np.where(on_ring, rng.normal(1, 0.1, len(members)), np.abs(rng.normal(0, 0.6, len(members))))
    x = centres[members, 0] + distance * spreads[members] * np.cos(angle)
    y = centres[members, 1] + distance * spreads[members] * np.sin(angle)
    radius = _log_uniform(rng, *kind.radius, size=len(members)) * canvas.scale
    flame = rng.random(len(members)) < kind.flames
    elongation = np.where(flame, rng.uniform(2.5, 5, len(members)), 1.0)
    elongation *= rng.uniform(1, 1.4, len(members))
    # Flames follow the nerve fibres, which run roughly away from the disc.
    along_fibres = np.arctan2(y - disc.y, x - disc.x) + rng.normal(0, 0.25, len(members))
    # Lesions of one cluster are about as strong as each other: one stage of one bleed.
    strength = _log_uniform(rng, *kind.opacity, size=len(counts))[members] * np.exp(rng.normal(0, 0.25, len(members)))
    opacity = np.clip(strength, *kind.opacity)
    lesions = _Lesions(x, y, radius * np.sqrt(elongation), radius / np.sqrt(elongation), along_fibres, flame, opacity)
    return _keep(lesions, _inside(canvas, disc, x, y, radius * np.sqrt(elongation)))


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int | None = None) -> np.ndarray:
    """Values spread evenly on a log scale, so small ones are as common as large ones relative to their size."""
    return np.exp(rng.uniform(math.log(low), math.log(high), size=size))


def _spots_in_fundus(canvas: Canvas, rng: np.random.Generator, disc: Disc, count: int) -> np.ndarray:
    """``count`` points spread over the posterior pole (denser towards the centre), off the disc."""
    angle = rng.uniform(0, math.tau, size=3 * count)
    distance = canvas.radius * 0.85 * rng.random(3 * count) ** 0.6
    points = np.stack([canvas.cx + distance * np.cos(angle), canvas.cy + distance * np.sin(angle)], axis=1)
    clear = np.hypot(points[:, 0] - disc.x, points[:, 1] - disc.y) > 1.5 * disc.radius
    return points[clear][:count]


def _inside(canvas: Canvas, disc: Disc, x: np.ndarray, y: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Which lesions lie wholly inside the field of view and off the optic disc."""
    in_fov = np.hypot(x - canvas.cx, y - canvas.cy) + reach < 0.95 * canvas.radius
    return in_fov & (np.hypot(x - disc.x, y - disc.y) > disc.radius + reach)


def _keep(lesions: _Lesions, chosen: np.ndarray) -> _Lesions:
    """Only the ``chosen`` lesions."""
    return _Lesions(*(getattr(lesions, field.name)[chosen] for field in fields(_Lesions)))


def _paint(image: np.ndarray, canvas: Canvas, rng: np.random.Generator, kind: _Kind, lesions: _Lesions) -> None:
    """In place: tint the fundus towards the lesion colour, each lesion with its own irregular shape and strength."""
    opacity = lesions.opacity
    if not len(opacity):
        return
    layer = Image.new("L", (canvas.width, canvas.height))
    draw = ImageDraw.Draw(layer)
    for i in np.argsort(opacity):
        shape = (lesions.x[i], lesions.y[i], lesions.major[i], lesions.minor[i], lesions.angle[i])
        draw.polygon(_outline(rng, *shape, corners=20, wobble=0.15), fill=round(255 * opacity[i]))
    layer = layer.filter(ImageFilter.GaussianBlur(kind.blur * canvas.scale))
    x0, y0, x1, y1 = layer.getbbox() or (0, 0, 0, 0)
    alpha = np.asarray(layer.crop((x0, y0, x1, y1)), dtype=np.float32) / 255
    colour = np.array(kind.colour, np.float32) * rng.uniform(0.9, 1.05)
    blend(image[y0:y1, x0:x1], alpha, colour)


def _outline(
    rng: np.random.Generator, x: float, y: float, major: float, minor: float, angle: float, corners: int, wobble: float
) -> list[tuple[float, float]]:
    """Polygon corners around a rotated ellipse, each radius jittered by up to ``wobble``."""
    theta = np.linspace(0, math.tau, corners, endpoint=False) + rng.uniform(0, math.tau)
    stretch = 1 + rng.uniform(-wobble, wobble, corners)
    u, v = major * stretch * np.cos(theta), minor * stretch * np.sin(theta)
    cos, sin = math.cos(angle), math.sin(angle)
    return list(zip((x + u * cos - v * sin).tolist(), (y + u * sin + v * cos).tolist()))


def _annotate(
    canvas: Canvas, rng: np.random.Generator, kind: _Kind, lesions: _Lesions, visibility: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the four annotators' confidence maps, in steps of 21 as DIARETDB1 stores them.

    Also how many annotators marked each lesion (0..4), which the map alone cannot tell.
    """
    total = np.zeros((canvas.height, canvas.width), dtype=np.uint16)
    annotators = np.zeros(len(lesions.x), dtype=np.int64)
    for annotator in _ANNOTATORS:
        layer, marked = _marks(canvas, rng, kind, lesions, visibility, annotator)
        total += np.asarray(layer)
        annotators += marked
    return (total * layout.CONFIDENCE_STEP * canvas.fov).astype(np.uint8), annotators


@dataclass(frozen=True)
class _Group:
    """Lesions an annotator marks at once: centre, half span of their centres, largest lesion half extents.

    ``members`` are the lesions' indices, so the truth can tell which lesions a mark covers;
    ``visibility`` is that of the most visible of them.
    """

    x: float
    y: float
    span_x: float
    span_y: float
    half_width: float
    half_height: float
    members: np.ndarray
    visibility: float


def _marks(
    canvas: Canvas, rng: np.random.Generator, kind: _Kind, lesions: _Lesions, visibility: np.ndarray,
    annotator: _Annotator,
) -> tuple[Image.Image, np.ndarray]:
    """One annotator's confidence map (0..3): a coarse shape around each lesion group it sees, and its lone marks.

    Also which lesions are in a marked group (bool per lesion).
    """
    layer = Image.new("L", (canvas.width, canvas.height))
    groups = _groups(lesions, visibility, annotator.grouping * kind.grouping * canvas.scale)
    seen = np.array([group.visibility for group in groups]) + rng.normal(0, annotator.doubt, len(groups))
    noticed = rng.random(len(groups)) < annotator.notice * _logistic(seen, annotator.seen_at)
    levels = np.where(rng.random(len(groups)) < _logistic(seen, annotator.sure_at), 3,
                      np.where(rng.random(len(groups)) < 5 / 6, 2, 1))
    marks = [(int(level), group) for level, group, mark in zip(levels, groups, noticed) if mark]
    marks += [(int(rng.choice([1, 2, 3], p=[0.05, 0.45, 0.5])), group)
              for group in _lone_groups(canvas, rng, int(rng.poisson(kind.lone_marks)))]
    draw = ImageDraw.Draw(layer)
    # Higher confidence drawn last, so overlapping marks of one annotator keep the higher level.
    for level, group in sorted(marks, key=lambda mark: mark[0]):
        draw.polygon(_mark_outline(canvas, rng, group, annotator), fill=level)
    marked = np.zeros(len(lesions.x), dtype=bool)
    for group, mark in zip(groups, noticed):
        marked[group.members] = mark
    return layer, marked


def _logistic(visibility: np.ndarray, half: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(visibility - half) / SLOPE))


def _lone_groups(canvas: Canvas, rng: np.random.Generator, count: int) -> list[_Group]:
    """Marks around nothing drawn: a small lesion's mark anywhere in the posterior pole."""
    angle = rng.uniform(0, math.tau, size=count)
    distance = canvas.radius * 0.85 * np.sqrt(rng.random(count))
    half = _log_uniform(rng, *_LONE_MARK_SIZE, size=count) * canvas.scale
    return [_Group(canvas.cx + d * math.cos(a), canvas.cy + d * math.sin(a), 0.0, 0.0, h, h,
                   np.zeros(0, dtype=np.int64), 0.0)
            for a, d, h in zip(angle.tolist(), distance.tolist(), half.tolist())]


def _groups(lesions: _Lesions, visibility: np.ndarray, distance: float) -> list[_Group]:
    """Lesions marked together: each lesion in turn gathers the unmarked ones within ``distance``.

    Gathering around one lesion, unlike chaining neighbours, keeps a group about as wide
    as an annotator would circle at once.
    """
    half_width, half_height = lesions.half_extents()
    unmarked = np.ones(len(lesions.x), dtype=bool)
    groups = []
    for seed in range(len(lesions.x)):
        if unmarked[seed]:
            centres_apart = np.hypot(lesions.x - lesions.x[seed], lesions.y - lesions.y[seed])
            gaps = centres_apart - lesions.major - lesions.major[seed]
            members = np.flatnonzero(unmarked & (gaps < distance))
            unmarked[members] = False
            x0, x1 = lesions.x[members].min(), lesions.x[members].max()
            y0, y1 = lesions.y[members].min(), lesions.y[members].max()
            groups.append(_Group((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2,
                                 half_width[members].max(), half_height[members].max(), members,
                                 float(visibility[members].max())))
    return groups


def _mark_outline(
    canvas: Canvas, rng: np.random.Generator, group: _Group, annotator: _Annotator
) -> list[tuple[float, float]]:
    """A circle, ellipse or polygon around a group, slightly off its centre.

    It spans the group's lesion centres plus a margin that makes a lone lesion's mark
    ``widening`` times as wide as the lesion.
    """
    widening = rng.uniform(*annotator.widening)
    smallest = annotator.smallest * canvas.scale
    rx = max(group.span_x + widening * group.half_width, smallest)
    ry = max(group.span_y + widening * group.half_height, smallest)
    shape = rng.choice(list(_SHAPES), p=list(_SHAPES.values()))
    if shape == "circle":
        rx = ry = max(rx, ry)
    x = group.x + rng.normal(0, 0.1 * rx)
    y = group.y + rng.normal(0, 0.1 * ry)
    corners, wobble = (int(rng.integers(5, 10)), 0.15) if shape == "polygon" else (32, 0.0)
    return _outline(rng, x, y, rx, ry, rng.normal(0, 0.2), corners, wobble)


def _photograph(canvas: Canvas, rng: np.random.Generator, reflectance: np.ndarray) -> np.ndarray:
    """What the camera records: uneven light and vignetting, blur, sensor noise, JPEG artefacts."""
    direction = rng.uniform(0, math.tau)
    xs = (np.arange(canvas.width, dtype=np.float32) - canvas.cx) / canvas.radius
    ys = (np.arange(canvas.height, dtype=np.float32) - canvas.cy) / canvas.radius
    gradient = rng.uniform(0, 0.25) * (math.cos(direction) * xs[None, :] + math.sin(direction) * ys[:, None])
    vignetting = rng.uniform(0.3, 0.6) * canvas.rho ** rng.uniform(2, 4)
    light = (1 + gradient + _noise(canvas, rng, cells=4) * rng.uniform(0.05, 0.15)) * (1 - vignetting)
    exposed = np.clip(reflectance * light[:, :, None], 0, 255).astype(np.uint8)
    blurred = Image.fromarray(exposed).filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.8) * canvas.scale))
    noisy = np.asarray(blurred) + rng.standard_normal(exposed.shape, dtype=np.float32) * rng.uniform(1, 3.5)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(60, 93)))
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")) * canvas.fov[:, :, None]
