"""Renditions (glyphs-r): each a pure function of the coverage and the generator, cycled evenly
per class, leaving the glyphs, fonts and jitter of the same call as they were."""

from __future__ import annotations

import numpy as np
import pytest

from sdlora.config import ConfigError, load_config
from sdlora.data import HELDOUT_FONTS, NONLATIN, Jitter, load_glyphs, render_glyphs
from sdlora.data.benchmarks import open_source
from sdlora.data.renditions import GLYPHS_R_RENDITIONS, RENDITIONS, check_renditions, draw


def _coverage(side: int = 64) -> np.ndarray:
    cov = np.zeros((side, side), dtype=np.float32)
    cov[16:48, 28:36] = 1.0  # a bar
    return cov


@pytest.mark.parametrize("name", sorted(RENDITIONS))
def test_each_rendition_is_a_deterministic_grey_image(name: str) -> None:
    cov = _coverage()
    a = draw(name, cov, np.random.default_rng(5))
    b = draw(name, cov, np.random.default_rng(5))
    assert a.shape == cov.shape and a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)
    if name != "plain":
        assert not np.array_equal(a, cov * 255.0), f"{name} draws the glyph as plain does"


def test_plain_alone_leaves_the_glyphs_as_they_were() -> None:
    """The renditions' generator is their own: fonts, jitter and noise draws do not move."""
    chars = NONLATIN[:4]
    before = render_glyphs(chars, HELDOUT_FONTS, 6, 16, seed=2, jitter=Jitter())
    after = render_glyphs(
        chars, HELDOUT_FONTS, 6, 16, seed=2, jitter=Jitter(), renditions=["plain"]
    )
    np.testing.assert_array_equal(before.images, after.images)


def test_renditions_cycle_evenly_per_class() -> None:
    chars = NONLATIN[:3]
    plain = render_glyphs(chars, HELDOUT_FONTS, 6, 16, seed=1, jitter=None)
    mixed = render_glyphs(chars, HELDOUT_FONTS, 6, 16, seed=1, jitter=None,
                          renditions=["plain", "inverse"])  # fmt: skip
    light = mixed.images.reshape(len(mixed), -1).mean(1) > 128  # inverse: a light ground
    np.testing.assert_array_equal(light.reshape(3, 6).sum(1), [3, 3, 3])
    # an inverse sample is the plain one upside down in grey (to the box filter's rounding)
    same = plain.images[light].astype(int) + mixed.images[light].astype(int) - 255
    assert np.abs(same).max() <= 1
    np.testing.assert_array_equal(plain.images[~light], mixed.images[~light])


def test_glyphs_r_is_glyphs_in_its_renditions() -> None:
    cfg = load_config("params.yaml", {"data.dataset": "glyphs-r", "data.train_per_class": 7,
                                      "data.test_per_class": 7})  # fmt: skip
    source = open_source(cfg.data)
    assert source.class_names == NONLATIN and source.dataset == "glyphs-r"
    train, _ = load_glyphs(7, 7, size=16, renditions=GLYPHS_R_RENDITIONS)
    assert len(source.train) == len(train.images)
    plain, _ = load_glyphs(7, 7, size=16)
    assert not np.array_equal(train.images, plain.images)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"data.dataset": "glyphs-r", "data.renditions": ["plain", "sketchy"]},
         r"unknown renditions \['sketchy'\]"),
        ({"data.dataset": "glyphs-r", "data.renditions": ["inverse", "inverse"]}, "repeat"),
        ({"data.dataset": "glyphs-r", "data.renditions": []}, "at least one"),
        ({"data.dataset": "glyphs", "data.renditions": ["inverse"]}, "applies to dataset"),
    ],
)  # fmt: skip
def test_bad_renditions_are_refused_at_load(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("params.yaml", changes)


def test_check_renditions_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: \\['plain'"):
        check_renditions(["x"])
