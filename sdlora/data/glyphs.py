"""Glyph images rendered offline from matplotlib's bundled TrueType fonts, with affine jitter."""

from __future__ import annotations

import functools
import math
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib import ft2font
from PIL import Image, ImageFilter

from sdlora.data.renditions import check_renditions, draw
from sdlora.data.tasks import ImageSet

FONT_DIR: str = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")

LATIN: tuple[str, ...] = tuple(string.ascii_lowercase + string.ascii_uppercase)

PRETRAIN_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)

HELDOUT_FONTS: tuple[str, ...] = (
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)

# Greek and Cyrillic letters that are neither Latin look-alikes nor look-alikes of each other:
# Greek capitals shared with Latin (A B E Z H I K M N O P T X Y) and small ι κ ν ο υ are out, and
# so are η μ ρ χ (n, u, p, x with a descender once centred by ink box), ψ (Ψ at 16 px), Cyrillic
# Г П Ф (the same outlines as Greek Γ Π Φ in these fonts) and the Latin-shaped А В Е К М Н О Р С Т
# У Х.
NONLATIN: tuple[str, ...] = tuple(
    "ΓΔΘΛΞΠΣΦΨΩ"  # Greek capitals (10)
    "αβγδεζθλξπστφω"  # Greek small letters (14)
    "БДЖЗИЙЦЧШЩЪЫЬЭЮЯ"  # Cyrillic capitals (16)
)

SUPERSAMPLE = 4  # glyphs are drawn on a canvas this many times the output size, then box-filtered
CAP_FRACTION = 0.5  # height of the font's "H" as a fraction of the canvas: one scale per font
MAX_FRACTION = 0.8  # longer glyph sides (e.g. Ж, Ш) are shrunk to this fraction of the canvas
MARGIN = SUPERSAMPLE  # keep a dark 1-pixel output frame: jitter shrinks or clamps, never clips


@dataclass(frozen=True)
class Jitter:
    """Per-sample random affine, stroke thickening and pixel noise, so samples differ."""

    max_rotation_deg: float = 6.0
    min_scale: float = 0.9
    max_scale: float = 1.1
    max_aspect: float = 1.06
    max_shear_deg: float = 6.0
    max_translate: float = 0.05
    thicken_prob: float = 0.3
    noise_std: float = 6.0

    def __post_init__(self) -> None:
        """Keep the parameters inside ranges where the glyph stays on the canvas and legible."""
        if not 0 <= self.max_rotation_deg <= 30:
            raise ValueError(f"max_rotation_deg must lie in [0, 30], got {self.max_rotation_deg}")
        if not 0.5 <= self.min_scale <= self.max_scale <= 1.2:
            raise ValueError(
                f"need 0.5 <= min_scale <= max_scale <= 1.2, got {self.min_scale}, {self.max_scale}"
            )
        if not 1.0 <= self.max_aspect <= 1.3:
            raise ValueError(f"max_aspect must lie in [1, 1.3], got {self.max_aspect}")
        if not 0 <= self.max_shear_deg <= 30:
            raise ValueError(f"max_shear_deg must lie in [0, 30], got {self.max_shear_deg}")
        if not 0 <= self.max_translate <= 0.15:
            raise ValueError(f"max_translate must lie in [0, 0.15], got {self.max_translate}")
        if not 0 <= self.thicken_prob <= 1:
            raise ValueError(f"thicken_prob must lie in [0, 1], got {self.thicken_prob}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


def font_path(font: str) -> str:
    """Absolute path of one of matplotlib's bundled .ttf files, by file name."""
    path = os.path.join(FONT_DIR, font)
    if not os.path.isfile(path):
        raise ValueError(f"font {font!r} is not among matplotlib's bundled fonts in {FONT_DIR}")
    return path


@functools.cache
def _face(font: str) -> ft2font.FT2Font:
    """Open a bundled font once per process."""
    return ft2font.FT2Font(font_path(font))


def _rasterise(font: str, char: str, pixels_per_em: float) -> np.ndarray:
    """Anti-aliased coverage bitmap of one character, cropped to its ink (may be empty)."""
    face = _face(font)
    face.clear()
    face.set_size(pixels_per_em, 72)
    face.set_text(char, 0.0, flags=ft2font.LoadFlags.NO_HINTING)
    face.draw_glyphs_to_bitmap(antialiased=True)
    bitmap = np.asarray(face.get_image(), dtype=np.uint8)
    rows, cols = np.nonzero(bitmap)
    if rows.size == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return bitmap[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].copy()


@functools.cache
def _cap_height(font: str) -> int:
    """Ink height of "H" at 100 px/em, the per-font reference that equalises scale."""
    return _rasterise(font, "H", 100.0).shape[0]


@functools.cache
def has_glyph(font: str, char: str) -> bool:
    """Whether the font maps the character to a glyph that leaves ink."""
    face = _face(font)
    if ord(char) not in face.get_charmap() or face.get_char_index(ord(char)) == 0:
        return False
    return _rasterise(font, char, 40.0).size > 0


def fonts_with(char: str, fonts: Sequence[str]) -> tuple[str, ...]:
    """The fonts of the list that have the character (missing glyphs are skipped)."""
    return tuple(f for f in fonts if has_glyph(f, char))


@functools.cache
def _base_glyph(char: str, font: str, canvas: int, thick: bool) -> Image.Image:
    """Rasterised, scale-normalised glyph with a dark border; cached per (char, font, size)."""
    target_cap = CAP_FRACTION * canvas
    bitmap = _rasterise(font, char, 100.0 * target_cap / _cap_height(font))
    glyph = Image.fromarray(np.pad(bitmap, 2))
    longest = max(bitmap.shape)
    if longest > MAX_FRACTION * canvas:
        shrink = MAX_FRACTION * canvas / longest
        new_size = (max(1, round(glyph.width * shrink)), max(1, round(glyph.height * shrink)))
        glyph = glyph.resize(new_size, Image.Resampling.LANCZOS)
    if thick:
        glyph = glyph.filter(ImageFilter.MaxFilter(3))
    return glyph


def _affine_params(rng: np.random.Generator, jitter: Jitter | None, n: int) -> np.ndarray:
    """Draw n forward 2x2 matrices and translations (fractions of the canvas) as rows of 6."""
    params = np.zeros((n, 6))
    params[:, 0] = params[:, 3] = 1.0
    if jitter is None:
        return params
    rot = np.deg2rad(rng.uniform(-jitter.max_rotation_deg, jitter.max_rotation_deg, n))
    shear = np.tan(np.deg2rad(rng.uniform(-jitter.max_shear_deg, jitter.max_shear_deg, n)))
    scale = rng.uniform(jitter.min_scale, jitter.max_scale, n)
    aspect = np.exp(rng.uniform(-1.0, 1.0, n) * math.log(jitter.max_aspect))
    shift = rng.uniform(-jitter.max_translate, jitter.max_translate, (n, 2))
    sx, sy = scale * aspect, scale / aspect
    cos, sin = np.cos(rot), np.sin(rot)
    # A = R(rot) @ [[1, shear], [0, 1]] @ diag(sx, sy)
    params[:, 0] = cos * sx
    params[:, 1] = (cos * shear - sin) * sy
    params[:, 2] = sin * sx
    params[:, 3] = (sin * shear + cos) * sy
    params[:, 4:] = shift
    return params


def _place(glyph: Image.Image, canvas: int, param: np.ndarray) -> Image.Image:
    """Centre the glyph's ink box on the canvas, apply the affine in param, never clipping."""
    forward = param[:4].reshape(2, 2)
    centre_in = np.array([glyph.width / 2.0, glyph.height / 2.0])
    corners = np.array([[-1.0, -1.0], [1.0, -1.0]]) * centre_in
    half = np.abs(corners @ forward.T).max(axis=0)  # half extents of the transformed box
    room = canvas / 2.0 - MARGIN
    if half.max() > room:
        forward = forward * (room / half.max())
        half = half * (room / half.max())
    shift = np.clip(param[4:] * canvas, -(room - half), room - half)
    inverse = np.linalg.inv(forward)
    centre_out = canvas / 2.0 + shift
    offset = centre_in - inverse @ centre_out
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return glyph.transform(
        (canvas, canvas), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0
    )


def _check_request(chars: Sequence[str], fonts: Sequence[str], n: int, size: int) -> None:
    """Reject empty, duplicate or malformed character and font lists and bad sizes."""
    if len(chars) == 0 or any(not isinstance(c, str) or len(c) != 1 for c in chars):
        raise ValueError("chars must be a non-empty sequence of single characters")
    if len(set(chars)) != len(chars):
        raise ValueError("chars must not repeat a character")
    if len(fonts) == 0:
        raise ValueError("fonts must name at least one font")
    for font in fonts:
        font_path(font)
    if n < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n}")
    if size < 4:
        raise ValueError(f"size must be >= 4 pixels, got {size}")


def render_glyphs(
    chars: Sequence[str],
    fonts: Sequence[str],
    n_per_class: int,
    size: int,
    seed: int,
    jitter: Jitter | None = None,
    renditions: Sequence[str] | None = None,
) -> ImageSet:
    """Render n_per_class jittered samples per character, fonts cycled evenly, deterministic.

    ``renditions`` (names of :data:`sdlora.data.renditions.RENDITIONS`) draws each sample in one
    of them, cycled evenly per class from a generator of its own, so the glyphs, fonts and jitter
    are those of the same call without it; None draws bright ink on a dark ground.
    """
    _check_request(chars, fonts, n_per_class, size)
    if renditions is not None:
        check_renditions(list(renditions))
    rendition_rng = np.random.default_rng((seed, 1))
    available = [fonts_with(c, fonts) for c in chars]
    empty = [c for c, fs in zip(chars, available, strict=True) if not fs]
    if empty:
        raise ValueError(f"no font among {list(fonts)} has a glyph for {empty}")
    rng = np.random.default_rng(seed)
    canvas = SUPERSAMPLE * size
    images = np.empty((len(chars) * n_per_class, size, size), dtype=np.uint8)
    for cls, (char, char_fonts) in enumerate(zip(chars, available, strict=True)):
        start = int(rng.integers(len(char_fonts)))
        font_idx = rng.permutation((start + np.arange(n_per_class)) % len(char_fonts))
        thick = rng.random(n_per_class) < (jitter.thicken_prob if jitter else 0.0)
        params = _affine_params(rng, jitter, n_per_class)
        noise_std = jitter.noise_std if jitter else 0.0
        noise = rng.normal(0.0, noise_std, (n_per_class, size, size)) if noise_std else None
        kinds = None
        if renditions is not None:
            kinds = rendition_rng.permutation(np.arange(n_per_class) % len(renditions))
        for i in range(n_per_class):
            glyph = _base_glyph(char, char_fonts[font_idx[i]], canvas, bool(thick[i]))
            placed = _place(glyph, canvas, params[i])
            if kinds is not None:
                coverage = np.asarray(placed, dtype=np.float32) / 255.0
                drawn = draw(renditions[kinds[i]], coverage, rendition_rng)
                placed = Image.fromarray(np.clip(np.rint(drawn), 0, 255).astype(np.uint8))
            placed = placed.resize((size, size), Image.Resampling.BOX)
            pixels = np.asarray(placed, dtype=np.float32)
            if noise is not None:
                pixels = pixels + noise[i]
            images[cls * n_per_class + i] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(chars), dtype=np.int64), n_per_class)
    return ImageSet(images, labels, tuple(chars))


def load_pretrain_letters(n_per_class: int, size: int, seed: int) -> ImageSet:
    """The 52 Latin letters in the pre-training fonts: the source domain for the backbone."""
    return render_glyphs(LATIN, PRETRAIN_FONTS, n_per_class, size, seed, Jitter())


def load_glyphs(
    n_train_per_class: int = 60,
    n_test_per_class: int = 20,
    size: int = 16,
    seed: int = 0,
    renditions: Sequence[str] | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Greek/Cyrillic benchmark in held-out fonts; train and test use independent seeds.

    ``renditions`` draws the samples in those renditions (``glyphs-r``); None: as the backbone
    saw its letters (``glyphs``)."""
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    train = render_glyphs(
        NONLATIN, HELDOUT_FONTS, n_train_per_class, size, train_seed, Jitter(), renditions
    )
    test = render_glyphs(
        NONLATIN, HELDOUT_FONTS, n_test_per_class, size, test_seed, Jitter(), renditions
    )
    return train, test
