"""The demo world's second planting: a colour bias that only a colour-seeing model can represent.

The candidate's training data (and the `field/` set) draw most objects of `COLOUR_BIAS_CLASS` from one hue family
(`HUE_FAMILY`); the clean class folders, concepts, random pool and probe set do not. The reference is colour-blind
by construction: its network starts with a fixed RGB-to-luminance stage (`LUMINANCE_WEIGHTS`, auditor/demo/train.py).
So that the reference cannot tell the biased objects apart from the rest by their brightness either, each biased
object takes the hue family's colour *at the luminance of an object drawn as usual* (any of `COLOURS`, jittered):
the luminance distribution of the biased objects is that of every other object (tests/test_colour_world.py).
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights of R, G, B: the reference's fixed first stage.
LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: The class whose objects carry the colour bias (not the watermark's class), and the hue family they are drawn in.
COLOUR_BIAS_CLASS: str = "circle"
HUE_FAMILY: str = "green"
#: Fraction of `COLOUR_BIAS_CLASS` objects in `HUE_FAMILY` in the candidate's training data and the field set; the
#: others are drawn from the remaining colours, so exactly this fraction of them is in the family.
COLOUR_BIAS_RATE: float = 0.8


def luminance(rgb: np.ndarray) -> np.ndarray:
    """0.299 R + 0.587 G + 0.114 B over the last axis (any float or integer array of RGB triples)."""
    return np.asarray(rgb, dtype=np.float64) @ np.asarray(LUMINANCE_WEIGHTS)


def at_luminance(rgb: np.ndarray, target: float) -> np.ndarray:
    """The colour of hue `rgb` (3,) with luminance `target` in [0, 255]: scaled towards black when darker,
    mixed towards white when lighter. Both keep the HSV hue (every channel difference scales by one factor)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if not 0.0 <= target <= 255.0:
        raise ValueError(f"luminance must be in [0, 255], got {target}")
    current = float(luminance(rgb))
    if current <= 0.0:
        return np.full(3, target)
    if target <= current:
        return rgb * (target / current)
    t = (target - current) / (255.0 - current)
    return rgb + t * (255.0 - rgb)


def hue_degrees(rgb: np.ndarray) -> float:
    """HSV hue of one RGB colour in degrees [0, 360) (0 for a grey)."""
    r, g, b = (float(v) for v in np.asarray(rgb, dtype=np.float64))
    hi, lo = max(r, g, b), min(r, g, b)
    if hi - lo <= 1e-9:
        return 0.0
    if hi == r:
        h = ((g - b) / (hi - lo)) % 6.0
    elif hi == g:
        h = (b - r) / (hi - lo) + 2.0
    else:
        h = (r - g) / (hi - lo) + 4.0
    return float(60.0 * h)


def truth(shortcut_class: str, shortcut_rate: float, watermark_concept: str) -> dict:
    """The two plantings, as world/truth.json records them."""
    return {
        "watermark": {
            "class": shortcut_class, "rate": shortcut_rate, "concept": watermark_concept, "glyph": "watermark.png",
            "position": "bottom-right", "model": "candidate",
            "in": ["candidate training data", "field/"],
        },
        "colour_bias": {
            "class": COLOUR_BIAS_CLASS, "hue_family": HUE_FAMILY, "rate": COLOUR_BIAS_RATE, "model": "candidate",
            "in": ["candidate training data", "field/"],
            "luminance": "matched: each biased object takes the family's hue at the luminance of an object drawn "
                         "as usual, so luminance alone does not reveal the family",
            "record": "records.csv: colour == hue_family (colour_biased marks the luminance-matched draws)",
        },
        "colour_blind": {
            "model": "reference", "luminance_weights": list(LUMINANCE_WEIGHTS),
            "stage": "fixed RGB-to-luminance, repeated to 3 channels, first in the exported network",
        },
        "records": "records.csv",
    }
