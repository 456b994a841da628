"""The worked example's images: real handwritten digits placed as MNIST places them, stroke-feature concept sets
drawn with numpy, a random pool of scribbles, a small glyph to paste, and a probe set with labels.

Digits: scikit-learn's `load_digits` (1,797 real handwritten digits of 13 writers, the UCI "optdigits" test set:
8x8, ink 0-16; it ships inside scikit-learn, nothing is downloaded). MNIST scaled each digit into a 20x20 box
centred in a 28x28 image, white ink on black; we do the same (ink 0-16 -> 0-255, bilinear 8 -> 20 px, the box at
rows and columns 4-23). MNIST also anti-aliased its 20x20 scans and centred them by their centre of mass; ours are
an 8x8 grid blown up, so the network meets blurrier digits than it was trained on (the accuracy build.py prints
says how much that costs; it is measured, not tuned).

Concepts (white strokes on black inside the same 20x20 box, anti-aliased, seeded): `horizontal_bar` (the bar of
a 7, the top of a 5), `vertical_stroke` (a 1, the stem of a 4 or 7), `closed_loop` (an ellipse ring: a 0, the
loops of 6, 8, 9). Random pool: one to three strokes per image, each a segment at any angle or an open arc.
Everything is drawn from `numpy.random.default_rng` streams derived from the seed; no global RNG.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from auditor.methods.artifact import paste_pair, position
from auditor.schemas.common import ArtifactSpec

SIZE = 28
BOX = (4, 24)  # rows/columns of MNIST's central 20x20 box
DIGIT_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
CONCEPTS: tuple[str, ...] = ("horizontal_bar", "vertical_stroke", "closed_loop")
#: The glyph is pasted where the artifact probe pastes it: bottom-right, 1 px from the edges (round(0.04 * 28)).
GLYPH = ArtifactSpec(image="glyph.png", position="bottom-right", margin=0.04)

_yy, _xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def place_digit(ink: np.ndarray) -> np.ndarray:
    """(8, 8) ink 0-16 -> (28, 28) uint8, white on black, scaled (bilinear) into the central 20x20 box."""
    grey = Image.fromarray(np.clip(np.round(ink * 255.0 / 16.0), 0, 255).astype(np.uint8), "L")
    out = np.zeros((SIZE, SIZE), np.uint8)
    out[BOX[0] : BOX[1], BOX[0] : BOX[1]] = np.asarray(grey.resize((20, 20), Image.Resampling.BILINEAR))
    return out


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits placed as MNIST: (n, 28, 28) uint8 and their labels (n,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.stack([place_digit(im) for im in d.images]), d.target.astype(np.int64)


def _segment(p0: tuple[float, float], p1: tuple[float, float], width: float) -> np.ndarray:
    """Anti-aliased ink (0-1) of a segment from p0 to p1 ((row, col)), `width` px wide."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((_yy - y0) * dy + (_xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    dist = np.hypot(_yy - (y0 + t * dy), _xx - (x0 + t * dx))
    return np.clip(width / 2 + 0.5 - dist, 0, 1)


def _arc(centre: tuple[float, float], axes: tuple[float, float], tilt: float, span: tuple[float, float],
         width: float) -> np.ndarray:
    """Anti-aliased ink of an ellipse arc: semi-axes (a along the tilted x, b across), angles `span` (radians)."""
    u0, v0 = _xx - centre[1], _yy - centre[0]
    u = u0 * math.cos(tilt) + v0 * math.sin(tilt)
    v = -u0 * math.sin(tilt) + v0 * math.cos(tilt)
    a, b = axes
    r = np.hypot(u / a, v / b)
    dist = np.abs(r - 1) * math.sqrt(a * b)  # distance to the ellipse, close enough for rings this thin
    angle = np.mod(np.arctan2(v / b, u / a) - span[0], 2 * math.pi)
    inside = angle <= (span[1] - span[0])
    return np.clip(width / 2 + 0.5 - dist, 0, 1) * inside


def _bar(rng: np.random.Generator, base: float) -> np.ndarray:
    """A straight stroke 8-16 px long, 1.5-3 px wide, at `base` +- 12 degrees, inside the box."""
    length, width = rng.uniform(8, 16), rng.uniform(1.5, 3.0)
    angle = base + math.radians(rng.uniform(-12, 12))
    dy, dx = -math.sin(angle) * length / 2, math.cos(angle) * length / 2
    lo, hi = BOX[0] + abs(dy) + 1, BOX[1] - 1 - abs(dy) - 1
    lo_x, hi_x = BOX[0] + abs(dx) + 1, BOX[1] - 1 - abs(dx) - 1
    cy, cx = rng.uniform(lo, hi), rng.uniform(lo_x, hi_x)
    return _segment((cy - dy, cx - dx), (cy + dy, cx + dx), width)


def horizontal_bar(rng: np.random.Generator) -> np.ndarray:
    return _bar(rng, 0.0)


def vertical_stroke(rng: np.random.Generator) -> np.ndarray:
    return _bar(rng, math.pi / 2)


def closed_loop(rng: np.random.Generator) -> np.ndarray:
    """An ellipse ring, semi-axes 3-8 px, 1.5-2.5 px wide, any tilt, inside the box."""
    a, b = rng.uniform(3, 8), rng.uniform(3, 8)
    reach = max(a, b) + 2
    cy, cx = (rng.uniform(BOX[0] + reach, BOX[1] - reach) for _ in range(2))
    return _arc((cy, cx), (a, b), rng.uniform(0, math.pi), (0.0, 2 * math.pi), rng.uniform(1.5, 2.5))


def scribble(rng: np.random.Generator) -> np.ndarray:
    """The random pool: 1-3 strokes, each a segment at any angle (4-14 px) or an open arc (60-240 degrees)."""
    ink = np.zeros((SIZE, SIZE))
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(BOX[0] + 3, BOX[1] - 3, 2)
        width = rng.uniform(1.5, 3.0)
        if rng.random() < 0.5:
            angle, half = rng.uniform(0, math.pi), rng.uniform(2, 7)
            dy, dx = math.sin(angle) * half, math.cos(angle) * half
            ink = np.maximum(ink, _segment((cy - dy, cx - dx), (cy + dy, cx + dx), width))
        else:
            start = rng.uniform(0, 2 * math.pi)
            span = (start, start + math.radians(rng.uniform(60, 240)))
            ink = np.maximum(ink, _arc((cy, cx), tuple(rng.uniform(3, 7, 2)), rng.uniform(0, math.pi), span, width))
    return ink


def glyph() -> np.ndarray:
    """The artifact: a 5x5 white diagonal cross, (5, 5, 4) uint8 RGBA, alpha 255 on the cross only."""
    cross = np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1]
    out = np.zeros((5, 5, 4), np.uint8)
    out[cross] = (255, 255, 255, 255)
    return out


def _save(grey: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey, "L").save(path)


def _drawn_set(folder: Path, draw: Callable[[np.random.Generator], np.ndarray], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        _save(np.round(draw(rng) * 255).astype(np.uint8), folder / f"{i:04d}.png")


def split_digits(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the class images (the first `per_class` of each digit) and of the probe set (the next
    `per_class`): disjoint, in the data set's order."""
    classes, probe = [], []
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        classes.extend(idx[:per_class])
        probe.extend(idx[per_class : 2 * per_class])
    return np.asarray(classes), np.asarray(probe)


def _write_probe(folder: Path, digits: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """Probe set for INVERT and the similarity check: the digits, the glyph pasted on a seeded half of them
    (as the artifact probe pastes it); labels.csv: image, glyph, d0..d9 (0/1)."""
    folder.mkdir(parents=True, exist_ok=True)
    patch = glyph().astype(np.float32) / 255.0
    marked = np.random.default_rng(seed).permutation(len(digits)) < len(digits) // 2
    rows = []
    for i, (grey, label, mark) in enumerate(zip(digits, labels, marked)):
        if mark:
            rgb = np.repeat(grey[..., None], 3, axis=2)
            at = position(GLYPH, (SIZE, SIZE), patch.shape[:2], np.random.default_rng(0))
            grey = paste_pair(rgb, patch, at, GLYPH.opacity)[0][..., 0]
        name = f"{i:04d}.png"
        _save(grey, folder / name)
        rows.append([name, int(mark), *(int(label == d) for d in range(10))])
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "glyph", *(f"d{d}" for d in range(10))])
        writer.writerows(rows)


def write_world(out: Path, per_class: int, concept_images: int, random_pool: int, seed: int = 0) -> dict:
    """Write out/classes/0..9, out/concepts/<concept>, out/random, out/probe (+ labels.csv), out/glyph.png.

    Returns the digits (all 1,797, placed) and labels, and the indices of the class images, for measuring."""
    digits, labels = real_digits()
    class_idx, probe_idx = split_digits(labels, per_class)
    for i in class_idx:
        _save(digits[i], out / "classes" / DIGIT_NAMES[labels[i]] / f"{i:04d}.png")
    streams = np.random.SeedSequence(seed).spawn(len(CONCEPTS) + 2)
    draws = {"horizontal_bar": horizontal_bar, "vertical_stroke": vertical_stroke, "closed_loop": closed_loop}
    for stream, name in zip(streams, CONCEPTS):
        _drawn_set(out / "concepts" / name, draws[name], concept_images, int(stream.generate_state(1)[0]))
    _drawn_set(out / "random", scribble, random_pool, int(streams[-2].generate_state(1)[0]))
    _write_probe(out / "probe", digits[probe_idx], labels[probe_idx], int(streams[-1].generate_state(1)[0]))
    Image.fromarray(glyph(), "RGBA").save(out / "glyph.png")
    return {"digits": digits, "labels": labels, "class_idx": class_idx}
