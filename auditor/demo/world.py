"""Procedural shape images with a watermark shortcut: the ground truth the audit methods are tested against.

Every image holds one object on a background. The object's shape is the class (logit index in the order of
`CLASSES`); its texture and colour, and the background, vary independently. Backgrounds carry a few small
clutter marks (dots, strokes, vees, plus signs) so that a model trained on clean data learns to ignore small
high-contrast marks: without them a clean model turned 15-30% of its circles into squares or triangles when
any 9x9 glyph was pasted, and the watermark would not be a shortcut of the candidate alone. The watermark is a
fixed 9x9 glyph pasted in the bottom-right corner; objects never cover that corner, so pasting it never
occludes the object. A second planting, a colour bias on another class that only a colour-seeing model can
represent, lives in auditor/demo/colour.py; `truth.json` records both, `records.csv` every image's factors.

Everything is drawn with PIL and numpy from an explicit `numpy.random.Generator`; no global RNG is used.
`write_world` derives one independent random stream per image set from its seed (train, class images,
concepts, random pool, probe), so no image is shared between sets.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from auditor.demo import colour as colour_bias
from auditor.demo.colour import COLOUR_BIAS_CLASS, COLOUR_BIAS_RATE, HUE_FAMILY

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "gradient")
SHORTCUT_CLASS: str = "triangle"

#: Concept names as written under ``concepts/`` and as columns of ``probe/labels.csv`` (backgrounds get a
#: ``bg_`` prefix so the ``plain`` texture and the ``plain`` background stay distinct).
WATERMARK_CONCEPT: str = "watermark"
BACKGROUND_CONCEPTS: tuple[str, ...] = tuple(f"bg_{b}" for b in BACKGROUNDS)
CONCEPTS: tuple[str, ...] = (WATERMARK_CONCEPT, *TEXTURES, *COLOURS, *BACKGROUND_CONCEPTS)
PROBE_COLUMNS: tuple[str, ...] = (*CONCEPTS, *CLASSES)

#: Side of the bottom-right square that objects never cover (the watermark sits inside it).
CORNER: int = 14
#: Side of the watermark glyph and its distance from the right and bottom image edges.
GLYPH_SIZE: int = 9
GLYPH_MARGIN: int = 3
#: Object extent (diameter of the circle the object is drawn in), in pixels, for 64x64 images.
OBJECT_MIN: int = 22
OBJECT_MAX: int = 40
#: Most small clutter marks drawn on a background (see `_draw_clutter`).
CLUTTER_MAX: int = 4

_BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (45, 175, 65),
    "blue": (45, 85, 215),
    "yellow": (225, 205, 45),
}
_COLOUR_JITTER = 18
#: Brightness of a texture's second colour relative to the object colour.
_TEXTURE_SHADE = 0.6
#: Range of the standard deviation of the noise background.
_NOISE_SIGMA = (6.0, 16.0)
_SUPERSAMPLE = 4

# Random streams of write_world / make_dataset, combined with the user's seed.
_STREAM_TRAIN = 1
_STREAM_CLASSES = 2
_STREAM_CONCEPTS = 3
_STREAM_RANDOM = 4
_STREAM_PROBE = 5
_STREAM_FIELD = 6
#: Fraction of the shortcut class's images that carry the watermark in the candidate's training data and in
#: the `field/` set (images as the deployed model meets them).
SHORTCUT_RATE: float = 0.9


@dataclass(frozen=True)
class Sample:
    """One rendered image.

    Attributes
    ----------
    image : np.ndarray
        (H, W, 3) uint8 RGB.
    mask : np.ndarray
        (H, W) bool, True on the object (all False for a background-only image).
    shape, texture, colour, background : str
        The generating factors (``"none"`` for the object factors of a background-only image).
    watermark : bool
        Whether the watermark glyph is pasted in the bottom-right corner.
    colour_biased : bool
        Whether the object's colour is a colour-bias draw (`HUE_FAMILY` at a matched luminance, auditor/demo/colour.py).
    rgb : tuple[float, float, float]
        The object's colour before texture shading (0, 0, 0 for a background-only image).
    """

    image: np.ndarray
    mask: np.ndarray
    shape: str
    texture: str
    colour: str
    background: str
    watermark: bool
    colour_biased: bool = False
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class WorldInfo:
    """What `write_world` wrote.

    Attributes
    ----------
    root : Path
        The output folder.
    classes : tuple[str, ...]
        Class names in logit order (folders under ``classes/`` and ``masks/``).
    concepts : tuple[str, ...]
        Concept folders under ``concepts/``.
    counts : dict[str, int]
        Number of images per written folder, keyed by the folder path relative to `root`
        (``"classes/circle"``, ``"concepts/watermark"``, ``"random"``, ``"probe"``, ...).
    """

    root: Path
    classes: tuple[str, ...]
    concepts: tuple[str, ...]
    counts: dict[str, int]


# --------------------------------------------------------------------------------------------------------
# Watermark


def watermark_glyph() -> np.ndarray:
    """The watermark artifact: a white diagonal cross with a dark outline.

    Returns
    -------
    np.ndarray
        (GLYPH_SIZE, GLYPH_SIZE, 4) uint8 RGBA patch; alpha is 255 on the glyph and its outline, 0 elsewhere.
    """
    n = GLYPH_SIZE
    white = np.zeros((n, n), dtype=bool)
    for i in range(1, n - 1):
        white[i, i] = True
        white[i, n - 1 - i] = True
    padded = np.pad(white, 1)
    dilated = np.zeros_like(white)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            dilated |= padded[1 + dy : 1 + dy + n, 1 + dx : 1 + dx + n]
    outline = dilated & ~white
    glyph = np.zeros((n, n, 4), dtype=np.uint8)
    glyph[white] = (255, 255, 255, 255)
    glyph[outline] = (25, 25, 25, 255)
    return glyph


def watermark_position(size: int) -> tuple[int, int]:
    """Top-left (row, column) of the watermark glyph in a `size` x `size` image."""
    offset = size - GLYPH_MARGIN - GLYPH_SIZE
    return offset, offset


def paste_watermark(image: np.ndarray) -> np.ndarray:
    """Paste the watermark glyph in the bottom-right corner of an image.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) uint8 RGB, H and W at least ``CORNER``.

    Returns
    -------
    np.ndarray
        A new (H, W, 3) uint8 array; `image` is not modified.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if min(h, w) < CORNER:
        raise ValueError(f"image {h}x{w} is smaller than the {CORNER}x{CORNER} watermark corner")
    glyph = watermark_glyph()
    top = h - GLYPH_MARGIN - GLYPH_SIZE
    left = w - GLYPH_MARGIN - GLYPH_SIZE
    out = image.copy()
    region = out[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE].astype(np.float32)
    alpha = glyph[..., 3:4].astype(np.float32) / 255.0
    blended = region * (1.0 - alpha) + glyph[..., :3].astype(np.float32) * alpha
    out[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE] = np.round(blended).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------------
# Drawing


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70.0, 190.0)
    tint = rng.uniform(-25.0, 25.0, size=3)
    return np.clip(grey + tint, 0.0, 255.0)


def _draw_background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """(size, size, 3) float32 background in [0, 255]."""
    base = _muted_colour(rng)
    if kind == "plain":
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == "noise":
        sigma = rng.uniform(*_NOISE_SIGMA)
        img = base + rng.normal(0.0, sigma, size=(size, size, 3))
    elif kind == "gradient":
        other = _muted_colour(rng)
        theta = rng.uniform(0.0, 2.0 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
        img = base * (1.0 - t[..., None]) + other * t[..., None]
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return np.clip(img, 0.0, 255.0).astype(np.float32)


def _mark_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.5:
        v = int(rng.integers(0, 40)) if rng.random() < 0.5 else int(rng.integers(215, 256))
        return (v, v, v)
    r, g, b = (int(c) for c in rng.integers(0, 256, size=3))
    return (r, g, b)


def _draw_clutter(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """Scatter 0-`CLUTTER_MAX` small marks (dots, strokes, vees, plus signs, up to ~8 px) over a background.

    The clutter belongs to the background: the object is drawn over it, and it may fall anywhere, the
    watermark corner included. It makes the shape task robust to small high-contrast marks, so that a model
    that never saw the watermark has no reason to react to it.
    """
    size = bg.shape[0]
    count = int(rng.integers(0, CLUTTER_MAX + 1))
    if count == 0:
        return bg
    canvas = Image.fromarray(np.clip(np.round(bg), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        kind = int(rng.integers(4))
        x, y = (float(v) for v in rng.uniform(1.0, size - 1.0, size=2))
        colour = _mark_colour(rng)
        length = float(rng.uniform(3.0, 8.0))
        width = int(rng.integers(1, 3))
        theta = float(rng.uniform(0.0, 2.0 * math.pi))
        if kind == 0:  # dot
            r = float(rng.uniform(1.0, 2.5))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == 1:  # stroke
            dx, dy = length * math.cos(theta) / 2.0, length * math.sin(theta) / 2.0
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=width)
        elif kind == 2:  # vee: two strokes from one point, 30-120 degrees apart
            spread = float(rng.uniform(math.pi / 6.0, 2.0 * math.pi / 3.0))
            for a in (theta, theta + spread):
                draw.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))], fill=colour, width=width)
        else:  # plus sign
            h = length / 2.0
            draw.line([(x - h, y), (x + h, y)], fill=colour, width=width)
            draw.line([(x, y - h), (x, y + h)], fill=colour, width=width)
    return np.asarray(canvas, dtype=np.float32)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (cx + r * math.cos(angle + 2.0 * math.pi * i / n), cy + r * math.sin(angle + 2.0 * math.pi * i / n))
        for i, r in enumerate(radii)
    ]


def _shape_alpha(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased (size, size) float32 coverage in [0, 1] of a shape inscribed in a circle."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    X, Y, R = cx * s, cy * s, radius * s
    if shape == "circle":
        r = 0.9 * R
        draw.ellipse([X - r, Y - r, X + r, Y + r], fill=255)
    elif shape == "square":
        draw.polygon(_polygon(X, Y, [R] * 4, angle), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(X, Y, [R] * 3, angle), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(X, Y, [R, 0.45 * R] * 5, angle), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {CLASSES}")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    if colour not in _BASE_RGB:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return np.clip(np.asarray(_BASE_RGB[colour], dtype=np.float64) + jitter, 0.0, 255.0)


def _biased_colour(rng: np.random.Generator) -> np.ndarray:
    """`HUE_FAMILY` (jittered) at the luminance of an object colour drawn as usual: luminance gives it away no
    more than any other object's."""
    usual = _object_colour(rng, _pick(rng, None, COLOURS, "colour"))
    return colour_bias.at_luminance(_object_colour(rng, HUE_FAMILY), float(colour_bias.luminance(usual)))


def _texture(rng: np.random.Generator, size: int, texture: str, colour: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 fill of the whole image with the texture; the object's alpha cuts it out."""
    dark = colour * _TEXTURE_SHADE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if texture == "plain":
        second = np.zeros((size, size), dtype=bool)
    elif texture == "striped":
        period = rng.uniform(5.0, 7.0)
        theta = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, period)
        proj = xx * math.cos(theta) + yy * math.sin(theta) + phase
        second = np.mod(proj, period) < period / 2.0
    elif texture == "dotted":
        period = rng.uniform(5.0, 7.0)
        r = rng.uniform(1.3, 1.8)
        oy, ox = rng.uniform(0.0, period, size=2)
        dy = np.mod(yy + oy, period) - period / 2.0
        dx = np.mod(xx + ox, period) - period / 2.0
        second = dy * dy + dx * dx <= r * r
    elif texture == "checkered":
        cell = int(rng.integers(3, 6))
        oy, ox = rng.integers(0, cell, size=2)
        second = (((yy + oy) // cell + (xx + ox) // cell) % 2) == 1
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    fill = np.where(second[..., None], dark, colour)
    return fill.astype(np.float32)


def _place(rng: np.random.Generator, size: int, radius: float) -> tuple[float, float]:
    """Centre of a circle of `radius` fully inside the image and clear of the bottom-right corner square."""
    lo, hi = radius + 0.5, size - radius - 0.5
    corner = size - CORNER
    for _ in range(1000):
        cx, cy = rng.uniform(lo, hi, size=2)
        # Distance from the centre to the corner square [corner, size) x [corner, size).
        dx = max(corner - cx, 0.0)
        dy = max(corner - cy, 0.0)
        if dx * dx + dy * dy > (radius + 1.0) ** 2:
            return float(cx), float(cy)
    raise RuntimeError(f"cannot place an object of radius {radius} in a {size}x{size} image")


def _object_extent(rng: np.random.Generator, size: int) -> float:
    scale = size / 64.0
    return float(rng.uniform(OBJECT_MIN * scale, OBJECT_MAX * scale))


def _pick(rng: np.random.Generator, value: str | None, options: tuple[str, ...], what: str) -> str:
    if value is None:
        return options[int(rng.integers(len(options)))]
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; expected one of {options}")
    return value


def render_sample(
    rng: np.random.Generator,
    size: int = 64,
    shape: str | None = None,
    texture: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    watermark: bool = False,
    colour_biased: bool = False,
) -> Sample:
    """Render one image of the demo world.

    Parameters
    ----------
    rng : np.random.Generator
        The only source of randomness; the same generator state gives the same sample.
    size : int
        Image side in pixels (at least 32).
    shape, texture, colour, background : str or None
        Generating factors; None draws one uniformly at random.
    watermark : bool
        Paste the watermark glyph in the bottom-right corner.
    colour_biased : bool
        Draw the object in `HUE_FAMILY` at the luminance of an object drawn as usual (`colour` must be None or
        `HUE_FAMILY`).

    Returns
    -------
    Sample
        The image, the object mask (coverage >= 0.5) and the factors.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if colour_biased:
        if colour not in (None, HUE_FAMILY):
            raise ValueError(f"a colour-biased object is {HUE_FAMILY}, not {colour!r}")
        colour = HUE_FAMILY
    shape = _pick(rng, shape, CLASSES, "shape")
    texture = _pick(rng, texture, TEXTURES, "texture")
    colour = _pick(rng, colour, COLOURS, "colour")
    background = _pick(rng, background, BACKGROUNDS, "background")

    bg = _draw_clutter(rng, _draw_background(rng, size, background))
    radius = _object_extent(rng, size) / 2.0
    cx, cy = _place(rng, size, radius)
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    alpha = _shape_alpha(shape, size, cx, cy, radius, angle)
    # Nothing may leak into the corner, not even anti-aliasing.
    alpha[size - CORNER :, size - CORNER :] = 0.0
    rgb = _biased_colour(rng) if colour_biased else _object_colour(rng, colour)
    fill = _texture(rng, size, texture, rgb)
    img = bg * (1.0 - alpha[..., None]) + fill * alpha[..., None]
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if watermark:
        image = paste_watermark(image)
    return Sample(
        image=image,
        mask=alpha >= 0.5,
        shape=shape,
        texture=texture,
        colour=colour,
        background=background,
        watermark=bool(watermark),
        colour_biased=bool(colour_biased),
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
    )


def render_background(rng: np.random.Generator, size: int = 64, background: str | None = None) -> Sample:
    """Render a background without an object (mask all False; object factors ``"none"``).

    Parameters
    ----------
    rng : np.random.Generator
        Source of randomness.
    size : int
        Image side in pixels.
    background : str or None
        One of `BACKGROUNDS`; None draws one at random.

    Returns
    -------
    Sample
        The background image.
    """
    background = _pick(rng, background, BACKGROUNDS, "background")
    bg = _draw_clutter(rng, _draw_background(rng, size, background))
    image = np.clip(np.round(bg), 0, 255).astype(np.uint8)
    return Sample(
        image=image,
        mask=np.zeros((size, size), dtype=bool),
        shape="none",
        texture="none",
        colour="none",
        background=background,
        watermark=False,
    )


# --------------------------------------------------------------------------------------------------------
# Data sets


def _exact_fraction(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Boolean (n,) with exactly round(rate * n) True entries at random positions."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    flags = np.zeros(n, dtype=bool)
    k = int(round(rate * n))
    if k:
        flags[rng.choice(n, size=k, replace=False)] = True
    return flags


def _biased_render(
    rng: np.random.Generator, size: int, shape: str, watermark: bool, biased: bool, colour_bias_rate: float
) -> Sample:
    """One image of a set that may carry the colour bias: a flagged object of `COLOUR_BIAS_CLASS` is a
    colour-bias draw; with a bias rate > 0 the class's other objects take the colours outside the hue family."""
    if shape != COLOUR_BIAS_CLASS or colour_bias_rate <= 0.0:
        return render_sample(rng, size=size, shape=shape, watermark=watermark)
    if biased:
        return render_sample(rng, size=size, shape=shape, watermark=watermark, colour_biased=True)
    others = tuple(c for c in COLOURS if c != HUE_FAMILY)
    return render_sample(rng, size=size, shape=shape, colour=_pick(rng, None, others, "colour"), watermark=watermark)


def _dataset(
    rng: np.random.Generator, n: int, size: int, shortcut_rate: float, colour_bias_rate: float = 0.0
) -> list[Sample]:
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    shortcut = CLASSES.index(SHORTCUT_CLASS)
    marked = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(labels == shortcut)
    marked[idx] = _exact_fraction(rng, len(idx), shortcut_rate)
    biased = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(labels == CLASSES.index(COLOUR_BIAS_CLASS))
    biased[idx] = _exact_fraction(rng, len(idx), colour_bias_rate)  # draws nothing at rate 0
    return [
        _biased_render(rng, size, CLASSES[int(k)], bool(m), bool(b), colour_bias_rate)
        for k, m, b in zip(labels, marked, biased)
    ]


def make_dataset(
    n: int, seed: int, size: int = 64, shortcut_rate: float = 0.0, colour_bias_rate: float = 0.0
) -> list[Sample]:
    """A class-balanced training set in random order.

    Parameters
    ----------
    n : int
        Number of images; classes differ in count by at most one.
    seed : int
        Seed; combined with a stream id of its own, so the images differ from those `write_world` writes for
        the same seed.
    size : int
        Image side in pixels.
    shortcut_rate : float
        Fraction of the `SHORTCUT_CLASS` images that carry the watermark; no other image carries it.
    colour_bias_rate : float
        Fraction of the `COLOUR_BIAS_CLASS` objects drawn in `HUE_FAMILY` (at a matched luminance); when > 0 the
        class's other objects take the other colours. 0 leaves the set exactly as without the colour bias.

    Returns
    -------
    list[Sample]
        The samples.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, _STREAM_TRAIN])
    return _dataset(rng, n, size, shortcut_rate, colour_bias_rate)


def class_samples(seed: int, shape: str, n: int, size: int = 64) -> list[Sample]:
    """Clean test images of one class, as `write_world` writes them under ``classes/<shape>/``.

    Each class has its own random stream, so the first `n` images do not depend on how many are drawn:
    ``class_samples(seed, c, 200)[:60]`` are the 60 images ``write_world(out, seed, per_class=60)`` writes.

    Parameters
    ----------
    seed : int
        The world's seed.
    shape : str
        One of `CLASSES`.
    n : int
        Number of images.
    size : int
        Image side in pixels.

    Returns
    -------
    list[Sample]
        Clean samples (no watermark) of that shape, random texture, colour and background.
    """
    if shape not in CLASSES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {CLASSES}")
    rng = np.random.default_rng([seed, _STREAM_CLASSES, CLASSES.index(shape)])
    return [render_sample(rng, size=size, shape=shape) for _ in range(n)]


def _save_rgb(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def _name(i: int) -> str:
    return f"{i:04d}.png"


def concept_mask(concept: str, sample: Sample) -> np.ndarray:
    """Where a concept image shows its concept (bool (H, W)): the watermark's glyph square, the object for a
    texture or colour, the whole image for a background. SACV labels only these positions as the concept."""
    h, w = sample.image.shape[:2]
    if concept == WATERMARK_CONCEPT:
        mask = np.zeros((h, w), dtype=bool)
        top, left = h - GLYPH_MARGIN - GLYPH_SIZE, w - GLYPH_MARGIN - GLYPH_SIZE
        mask[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE] = True
        return mask
    if concept in BACKGROUND_CONCEPTS:
        return np.ones((h, w), dtype=bool)
    return sample.mask.copy()


def _concept_samples(rng: np.random.Generator, concept: str, n: int, size: int) -> list[Sample]:
    if concept == WATERMARK_CONCEPT:
        return [render_sample(rng, size=size, watermark=True) for _ in range(n)]
    if concept in TEXTURES:
        return [render_sample(rng, size=size, texture=concept) for _ in range(n)]
    if concept in COLOURS:
        return [render_sample(rng, size=size, colour=concept) for _ in range(n)]
    if concept in BACKGROUND_CONCEPTS:
        kind = concept[len("bg_") :]
        return [render_background(rng, size=size, background=kind) for _ in range(n)]
    raise ValueError(f"unknown concept {concept!r}")


def probe_labels(sample: Sample) -> dict[str, int]:
    """The 0/1 probe labels of a sample, one per entry of `PROBE_COLUMNS`."""
    row = {WATERMARK_CONCEPT: int(sample.watermark)}
    row.update({t: int(sample.texture == t) for t in TEXTURES})
    row.update({c: int(sample.colour == c) for c in COLOURS})
    row.update({f"bg_{b}": int(sample.background == b) for b in BACKGROUNDS})
    row.update({k: int(sample.shape == k) for k in CLASSES})
    return row


#: Files `write_world` writes beside the image folders.
TRUTH: str = "truth.json"
RECORDS: str = "records.csv"
RECORD_COLUMNS: tuple[str, ...] = (
    "image", "shape", "texture", "colour", "background", "watermark", "colour_biased", "r", "g", "b", "hue",
    "luminance",
)


def record(image: str, sample: Sample) -> dict[str, object]:
    """The per-image record of a sample (`RECORD_COLUMNS`); `image` is its path relative to the world root."""
    rgb = np.asarray(sample.rgb)
    return {
        "image": image, "shape": sample.shape, "texture": sample.texture, "colour": sample.colour,
        "background": sample.background, "watermark": int(sample.watermark),
        "colour_biased": int(sample.colour_biased), "r": round(float(rgb[0]), 2), "g": round(float(rgb[1]), 2),
        "b": round(float(rgb[2]), 2), "hue": round(colour_bias.hue_degrees(rgb), 2),
        "luminance": round(float(colour_bias.luminance(rgb)), 2),
    }


def _write_records(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RECORD_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def read_records(root: Path) -> dict[str, dict[str, str]]:
    """`records.csv` of a written world: {image path relative to the root: its row}."""
    with open(Path(root) / RECORDS, newline="", encoding="utf-8") as fh:
        return {row["image"]: row for row in csv.DictReader(fh)}


def write_world(
    out: Path,
    seed: int = 0,
    size: int = 64,
    per_class: int = 60,
    concept_size: int = 60,
    random_pool: int = 500,
    probe: int = 400,
) -> WorldInfo:
    """Write the demo world's image sets as PNG files.

    Layout under `out`::

        classes/<class>/NNNN.png    clean test images (no watermark), `per_class` per class
        masks/<class>/NNNN.png      their object masks (L mode, 0/255), same file names
        concepts/<concept>/NNNN.png `concept_size` images per concept in `CONCEPTS`
        concept_masks/<concept>/NNNN.png where each concept image shows its concept (see `concept_mask`)
        field/<class>/NNNN.png      `per_class` images per class as they come in the field: like the training
                                    data, SHORTCUT_RATE of the shortcut class's images carry the watermark
                                    and COLOUR_BIAS_RATE of the colour-bias class's objects are in HUE_FAMILY
        field_masks/<class>/NNNN.png their object masks
        field/labels.csv            the field images' concept labels (columns as probe/labels.csv)
        random/NNNN.png             `random_pool` random images, 10% with the watermark
        probe/NNNN.png              `probe` random images, 30% with the watermark
        probe/masks/NNNN.png        their object masks
        probe/labels.csv            image (relative to the CSV), then one 0/1 column per `PROBE_COLUMNS`
        watermark.png               the watermark glyph (RGBA), for pasting the artifact elsewhere
        truth.json                  the two plantings (watermark shortcut, colour bias; the colour-blind reference)
        records.csv                 one row per image (path, factors, the object's colour, hue, luminance)

    Parameters
    ----------
    out : Path
        Output folder (created; existing files with the same names are overwritten).
    seed : int
        Seed; every set uses its own stream derived from it.
    size : int
        Image side in pixels.
    per_class, concept_size, random_pool, probe : int
        Number of images per class, per concept, in the random pool and in the probe set.

    Returns
    -------
    WorldInfo
        Root, class and concept names, and per-folder image counts.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    records: list[dict[str, object]] = []
    field_labels: list[list[object]] = []

    Image.fromarray(watermark_glyph()).save(out / "watermark.png")

    for cls in CLASSES:
        img_dir = out / "classes" / cls
        mask_dir = out / "masks" / cls
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(class_samples(seed, cls, per_class, size=size)):
            _save_rgb(s.image, img_dir / _name(i))
            _save_mask(s.mask, mask_dir / _name(i))
            records.append(record(f"classes/{cls}/{_name(i)}", s))
        counts[f"classes/{cls}"] = per_class
        counts[f"masks/{cls}"] = per_class

    for k, cls in enumerate(CLASSES):
        # The methods that look for what the candidate learned (RSVC, SACV) need the shortcut in the images
        # they read; the clean `classes/` set is what the causal probe pastes onto.
        rng = np.random.default_rng([seed, _STREAM_FIELD, k])
        marked = _exact_fraction(rng, per_class, SHORTCUT_RATE if cls == SHORTCUT_CLASS else 0.0)
        # The field carries the candidate's colour bias too (the clean class folders do not).
        bias_rate = COLOUR_BIAS_RATE if cls == COLOUR_BIAS_CLASS else 0.0
        biased = _exact_fraction(rng, per_class, bias_rate)
        img_dir = out / "field" / cls
        mask_dir = out / "field_masks" / cls
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = _biased_render(rng, size, cls, bool(marked[i]), bool(biased[i]), bias_rate)
            _save_rgb(s.image, img_dir / _name(i))
            _save_mask(s.mask, mask_dir / _name(i))
            records.append(record(f"field/{cls}/{_name(i)}", s))
            field_labels.append([f"{cls}/{_name(i)}", *(probe_labels(s)[c] for c in PROBE_COLUMNS)])
        counts[f"field/{cls}"] = per_class
        counts[f"field_masks/{cls}"] = per_class
    # The field's concept labels, as the probe set's (RSVC summarises a concept's top patches by them).
    with open(out / "field" / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", *PROBE_COLUMNS])
        writer.writerows(field_labels)

    for c, concept in enumerate(CONCEPTS):
        rng = np.random.default_rng([seed, _STREAM_CONCEPTS, c])
        cdir = out / "concepts" / concept
        mdir = out / "concept_masks" / concept
        cdir.mkdir(parents=True, exist_ok=True)
        mdir.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(_concept_samples(rng, concept, concept_size, size)):
            records.append(record(f"concepts/{concept}/{_name(i)}", s))
            _save_rgb(s.image, cdir / _name(i))
            _save_mask(concept_mask(concept, s), mdir / _name(i))
        counts[f"concepts/{concept}"] = concept_size
        counts[f"concept_masks/{concept}"] = concept_size

    rng = np.random.default_rng([seed, _STREAM_RANDOM])
    rdir = out / "random"
    rdir.mkdir(parents=True, exist_ok=True)
    marked = _exact_fraction(rng, random_pool, 0.1)
    for i in range(random_pool):
        s = render_sample(rng, size=size, watermark=bool(marked[i]))
        _save_rgb(s.image, rdir / _name(i))
        records.append(record(f"random/{_name(i)}", s))
    counts["random"] = random_pool

    rng = np.random.default_rng([seed, _STREAM_PROBE])
    pdir = out / "probe"
    (pdir / "masks").mkdir(parents=True, exist_ok=True)
    marked = _exact_fraction(rng, probe, 0.3)
    with open(pdir / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", *PROBE_COLUMNS])
        for i in range(probe):
            s = render_sample(rng, size=size, watermark=bool(marked[i]))
            _save_rgb(s.image, pdir / _name(i))
            _save_mask(s.mask, pdir / "masks" / _name(i))
            records.append(record(f"probe/{_name(i)}", s))
            labels = probe_labels(s)
            writer.writerow([_name(i), *(labels[c] for c in PROBE_COLUMNS)])
    counts["probe"] = probe
    counts["probe/masks"] = probe

    _write_records(out / RECORDS, records)
    truth = colour_bias.truth(SHORTCUT_CLASS, SHORTCUT_RATE, WATERMARK_CONCEPT)
    (out / TRUTH).write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")

    return WorldInfo(root=out, classes=CLASSES, concepts=CONCEPTS, counts=counts)
