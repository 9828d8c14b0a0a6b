"""Listings read files byte for byte, encode arrays losslessly and name every corrupt file."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlora.data.source import (
    CorruptImageError,
    array_listing,
    check_image,
    encode_png,
    file_listing,
)


@pytest.mark.parametrize("shape", [(8, 8), (5, 7, 3)])
def test_png_is_lossless(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    np.testing.assert_array_equal(decoded, image)
    assert encode_png(image) == encode_png(image.copy())  # deterministic


def test_png_rejects_other_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


def test_file_listing_keeps_bytes(
    tmp_path: Path, folder_factory: Callable[..., list[Path]]
) -> None:
    files = folder_factory(tmp_path, classes=["n01443537"], train_per_class=2, test_per_class=0)
    rel = [f.relative_to(tmp_path).as_posix() for f in files]
    listing = file_listing(tmp_path, rel, [0, 0])
    assert listing.read(1) == files[1].read_bytes()
    assert len(listing) == 2 and listing.class_ids.dtype == np.int64


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[: len(b) // 2], "(?i)truncated"),
        (lambda b: b"", "empty file"),
        (lambda b: b"not an image at all", "UnidentifiedImageError"),
    ],
)
def test_corrupt_file_is_named(
    tmp_path: Path,
    folder_factory: Callable[..., list[Path]],
    damage: Callable[[bytes], bytes],
    reason: str,
) -> None:
    files = folder_factory(tmp_path, classes=["n01443537"], train_per_class=1, test_per_class=0)
    files[0].write_bytes(damage(files[0].read_bytes()))
    listing = file_listing(tmp_path, [files[0].relative_to(tmp_path).as_posix()], [0])
    with pytest.raises(CorruptImageError, match=reason) as err:
        listing.read(0)
    assert err.value.path == str(files[0])
    assert str(files[0]) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    listing = file_listing(tmp_path, ["n01443537/art_0.jpg"], [0])
    with pytest.raises(CorruptImageError, match=r"art_0\.jpg: cannot read"):
        listing.read(0)


def test_check_image_accepts_png() -> None:
    check_image(encode_png(np.zeros((3, 3), np.uint8)), "x.png")


def test_array_listing_encodes_rows() -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    listing = array_listing(images, np.array([1, 0]), ["a", "b"])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(listing.read(1)))), images[1])
    with pytest.raises(ValueError, match="2 images but 1 paths"):
        array_listing(images, np.array([1, 0]), ["a"])
