"""Renditions of a glyph: ways of drawing it that the pre-trained backbone never saw.

The backbone learns Latin letters drawn one way: bright ink on a dark, empty ground. SD-LoRA's
setting is a backbone whose features do not fit the downstream data as they are (ImageNet-R:
ImageNet classes as art, cartoons, sketches), so ``glyphs-r`` draws each downstream sample in one
of these renditions. Each takes the glyph's ink coverage on the supersampled canvas (floats in
[0, 1], the glyph already placed) and returns grey levels in [0, 255] on the same canvas; all
randomness comes from the generator passed in, so a sample is a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sdlora.config import RENDITION_NAMES, check_renditions


def _plain(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright ink on a dark ground: how the backbone saw every letter."""
    return cov * 255.0


def _outline(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hollow strokes: the ring around each stroke, its inside dark."""
    image = Image.fromarray(np.rint(cov * 255.0).astype(np.uint8))
    grown = np.asarray(image.filter(ImageFilter.MaxFilter(5)), dtype=np.float32)
    shrunk = np.asarray(image.filter(ImageFilter.MinFilter(3)), dtype=np.float32)
    return np.clip(grown - shrunk, 0.0, 255.0)


def _inverse(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark ink on a light ground."""
    return (1.0 - cov) * 255.0


def _smooth_noise(rng: np.random.Generator, side: int) -> np.ndarray:
    """A cloudy texture in [0, 1]: a coarse random grid (3-8 cells a side) upsampled smoothly."""
    cells = int(rng.integers(3, 9))
    grid = np.rint(rng.random((cells, cells)) * 255.0).astype(np.uint8)
    cloud = Image.fromarray(grid).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(cloud, dtype=np.float32) / 255.0


def _texture(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink over a cloudy ground: bright ink on a darker cloud or dark ink on a lighter one."""
    cloud = _smooth_noise(rng, cov.shape[0])
    if rng.random() < 0.5:
        ground, ink = 0.1 + 0.3 * cloud, 1.0
    else:
        ground, ink = 0.4 + 0.6 * cloud, 0.0
    return (ground * (1.0 - cov) + ink * cov) * 255.0


def _wave(side: int, rng: np.random.Generator, period: tuple[float, float]) -> np.ndarray:
    """A (side, side) sine across the canvas at a random angle and a period (canvas pixels)
    drawn from ``period``, values in [-1, 1]."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    length = rng.uniform(*period)
    return np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2.0 * np.pi / length)


def _stripes(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright ink over a ground of grey stripes at a random angle and period."""
    wave = _wave(cov.shape[0], rng, (6.0, 12.0))  # 1.5-3 output pixels at 4x supersampling
    ground = 0.25 + 0.35 * (wave > 0)
    return (ground * (1.0 - cov) + cov) * 255.0


def _clutter(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The glyph with 2-4 random line strokes drawn across the canvas."""
    side = cov.shape[0]
    lines = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(lines)
    for _ in range(int(rng.integers(2, 5))):
        ends = rng.uniform(0.0, side, 4)
        draw.line(list(ends), fill=int(rng.uniform(120, 255)), width=int(rng.integers(2, 5)))
    return np.maximum(cov * 255.0, np.asarray(lines, dtype=np.float32))


def _stencil(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes broken by parallel gaps, as a stencil cuts them."""
    return cov * (_wave(cov.shape[0], rng, (8.0, 14.0)) > -0.6) * 255.0


Rendition = Callable[[np.ndarray, np.random.Generator], np.ndarray]

RENDITIONS: dict[str, Rendition] = {
    "plain": _plain,
    "outline": _outline,
    "inverse": _inverse,
    "texture": _texture,
    "stripes": _stripes,
    "clutter": _clutter,
    "stencil": _stencil,
}

if tuple(RENDITIONS) != RENDITION_NAMES:  # the names params.yaml may give (sdlora.config)
    raise ImportError(f"sdlora.config.RENDITION_NAMES {RENDITION_NAMES} != {tuple(RENDITIONS)}")
__all__ = ["GLYPHS_R_RENDITIONS", "RENDITIONS", "check_renditions", "draw"]

# glyphs-r's renditions (data.renditions: null): half the samples as the backbone saw letters,
# half in stencil cuts, chosen by the criterion of README "The embedded default" (measured by
# benchmarks/regime_criterion.py, every candidate listed there)
GLYPHS_R_RENDITIONS: tuple[str, ...] = ("plain", "stencil")


def draw(name: str, coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rendition ``name`` of a glyph's ink coverage: (C, C) floats in [0, 1] -> (C, C) in
    [0, 255]."""
    return RENDITIONS[name](coverage, rng)
