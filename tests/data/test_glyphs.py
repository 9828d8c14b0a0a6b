"""Rendered glyph sets: deterministic, well-formed, distinct classes, apart from pre-training."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest

from sdlora.data import (
    HELDOUT_FONTS,
    LATIN,
    NONLATIN,
    PRETRAIN_FONTS,
    Jitter,
    fonts_with,
    load_glyphs,
    load_pretrain_letters,
    render_glyphs,
)
from sdlora.data.glyphs import FONT_DIR

DUPLICATE_DISTANCE = 0.8  # mean-image L2 (pixels in 0..1, 16x16) below this: same glyph shape


def _min_class_mean_distance(chars: Sequence[str]) -> tuple[float, str]:
    """Smallest L2 distance between clean per-class mean images (one sample per font) at 16 px."""
    data = render_glyphs(chars, HELDOUT_FONTS, len(HELDOUT_FONTS), 16, 0, jitter=None)
    flat = data.images.reshape(len(data), -1) / 255.0
    means = np.stack([flat[data.labels == c].mean(0) for c in range(data.num_classes)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    return float(dist[i, j]), chars[i] + chars[j]


def test_character_sets() -> None:
    assert len(LATIN) == 52 and len(set(LATIN)) == 52
    assert 40 <= len(NONLATIN) <= 50
    assert len(set(NONLATIN)) == len(NONLATIN)
    assert set(NONLATIN).isdisjoint(LATIN)
    assert all(not c.isascii() for c in NONLATIN)


def test_font_sets_are_disjoint_and_bundled() -> None:
    assert len(PRETRAIN_FONTS) == 13 and len(HELDOUT_FONTS) == 8
    assert set(PRETRAIN_FONTS).isdisjoint(HELDOUT_FONTS)
    for font in PRETRAIN_FONTS + HELDOUT_FONTS:
        assert os.path.isfile(os.path.join(FONT_DIR, font)), font


def test_every_class_has_fonts() -> None:
    assert all(fonts_with(c, PRETRAIN_FONTS) == PRETRAIN_FONTS for c in LATIN)
    assert all(len(fonts_with(c, HELDOUT_FONTS)) >= 4 for c in NONLATIN)
    assert fonts_with("Ж", PRETRAIN_FONTS) == PRETRAIN_FONTS[:8]  # Computer Modern has no Cyrillic


def test_no_duplicate_shapes() -> None:
    distance, pair = _min_class_mean_distance(NONLATIN)
    assert distance > DUPLICATE_DISTANCE, f"classes {pair} look alike ({distance:.3f})"


@pytest.mark.parametrize("duplicate", ["П", "Г", "Ф"])
def test_duplicate_detector_fires(duplicate: str) -> None:
    """Cyrillic Pe, Ge, Ef repeat Greek Pi, Gamma, Phi: adding one must trip the check."""
    distance, pair = _min_class_mean_distance([*NONLATIN, duplicate])
    assert distance < DUPLICATE_DISTANCE
    assert duplicate in pair


def test_render_shapes_and_determinism() -> None:
    chars = NONLATIN[:6]
    a = render_glyphs(chars, HELDOUT_FONTS, 5, 16, seed=3, jitter=Jitter())
    b = render_glyphs(chars, HELDOUT_FONTS, 5, 16, seed=3, jitter=Jitter())
    c = render_glyphs(chars, HELDOUT_FONTS, 5, 16, seed=4, jitter=Jitter())
    assert a.images.shape == (30, 16, 16) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(a.labels), [5] * 6)
    assert a.class_names == tuple(chars)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    # every sample carries ink: its brightest pixel is far above the background
    assert a.images.reshape(30, -1).max(1).min() > 128


def test_fonts_cycle_evenly() -> None:
    data = render_glyphs(["Ж"], HELDOUT_FONTS, 2 * len(HELDOUT_FONTS), 24, 0, jitter=None)
    _, counts = np.unique(data.images.reshape(len(data), -1), axis=0, return_counts=True)
    np.testing.assert_array_equal(counts, [2] * len(HELDOUT_FONTS))


def test_strong_jitter_does_not_clip() -> None:
    strong = Jitter(
        max_rotation_deg=15, max_scale=1.2, max_shear_deg=15, max_translate=0.15, noise_std=0
    )
    data = render_glyphs(["Ж", "Щ", "Ю", "β", "ξ"], HELDOUT_FONTS, 16, 16, 0, jitter=strong)
    border = np.concatenate(
        [data.images[:, 0], data.images[:, -1], data.images[:, :, 0], data.images[:, :, -1]]
    )
    assert border.max() == 0


def test_ink_scale_is_similar_across_classes_and_fonts() -> None:
    """Capitals share one height in every font (per-font scale), small letters are lower."""
    capitals, small = "ΓΔΛΞΠΣΦΨΩБИЧЪЫЬЯ", "αεπσω"
    data = render_glyphs([*capitals, *small], HELDOUT_FONTS, 8, 32, 0, jitter=None)
    rows = data.images.max(axis=2) > 64
    heights = np.array([np.ptp(np.flatnonzero(r)) + 1 for r in rows]).reshape(-1, 8)
    assert heights[: len(capitals)].min() >= 15 and heights[: len(capitals)].max() <= 17
    assert heights[len(capitals) :].min() >= 10 and heights[len(capitals) :].max() <= 13


def test_missing_glyph_is_an_error() -> None:
    with pytest.raises(ValueError, match="Ω"):
        render_glyphs(["a", "Ω"], ["cmr10.ttf"], 2, 16, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chars": []}, "chars"),
        ({"chars": ["a", "a"]}, "repeat"),
        ({"fonts": ["NoSuchFont.ttf"]}, "NoSuchFont"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"size": 2}, "size"),
    ],
)
def test_render_argument_errors(kwargs: dict, match: str) -> None:
    args = {"chars": ["a"], "fonts": ["DejaVuSans.ttf"], "n_per_class": 1, "size": 16, "seed": 0}
    with pytest.raises(ValueError, match=match):
        render_glyphs(**{**args, **kwargs})


def test_jitter_validation() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        Jitter(min_scale=1.2, max_scale=1.0)


def test_load_glyphs() -> None:
    train, test = load_glyphs(n_train_per_class=3, n_test_per_class=2, size=16, seed=0)
    assert train.class_names == test.class_names == NONLATIN
    assert train.images.shape == (3 * len(NONLATIN), 16, 16)
    np.testing.assert_array_equal(np.bincount(test.labels), [2] * len(NONLATIN))
    train_rows = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in train_rows for im in test.images)
    again, _ = load_glyphs(n_train_per_class=3, n_test_per_class=2, size=16, seed=0)
    np.testing.assert_array_equal(train.images, again.images)


def test_load_pretrain_letters() -> None:
    data = load_pretrain_letters(n_per_class=2, size=24, seed=1)
    assert data.class_names == LATIN
    assert data.images.shape == (104, 24, 24)
