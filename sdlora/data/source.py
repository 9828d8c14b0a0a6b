"""A dataset as the prepare stage sees it: class names plus train and test listings, not yet read.

Every reader (embedded digits and glyphs, CIFAR-100, image folders, DomainNet) returns a
:class:`Source`. A :class:`Listing` knows each item's original class id and source path and can
produce the item's encoded image bytes on demand, so a dataset the size of DomainNet is never held
in memory: the prepare stage reads items one row group at a time.

Files on disk are stored byte for byte as they are (JPEG stays JPEG); in-memory arrays (digits,
glyphs, CIFAR-100) are encoded losslessly as PNG. Reading a file fully decodes it once, so a
truncated or garbled image is reported with its path (:class:`CorruptImageError`) at prepare time,
never half-way through training.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdlora.data.tasks import ImageSet
from sdlora.errors import BadInput

# The suffixes torchvision's ImageFolder accepts (compared case-insensitively).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


class DataError(BadInput, ValueError):
    """Input the prepare stage cannot turn into task splits; the message says what to fix."""


class CorruptImageError(DataError):
    """An image file that cannot be read or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt image {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Listing:
    """One split of a source: per item its original class id and source path, bytes on demand.

    ``read(i)`` returns item i's encoded image bytes (JPEG, PNG, ...) or raises
    :class:`CorruptImageError`. It must be safe to call from several threads at once.
    """

    class_ids: np.ndarray
    paths: tuple[str, ...]
    read: Callable[[int], bytes]

    def __post_init__(self) -> None:
        """Class ids are int64, one per path."""
        if self.class_ids.dtype != np.int64 or self.class_ids.shape != (len(self.paths),):
            raise ValueError(
                f"class_ids must be int64 of shape ({len(self.paths)},), "
                f"got {self.class_ids.dtype} {self.class_ids.shape}"
            )

    def __len__(self) -> int:
        """Number of items."""
        return len(self.paths)


@dataclass(frozen=True)
class Source:
    """A benchmark before splitting: class names in canonical order (SPEC §1) and two listings."""

    dataset: str
    root: str | None
    layout: str
    class_names: tuple[str, ...]
    train: Listing
    test: Listing

    def __post_init__(self) -> None:
        """Class ids index class_names."""
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self.dataset}: class names must be unique")
        num = len(self.class_names)
        for name, listing in (("train", self.train), ("test", self.test)):
            ids = listing.class_ids
            if ids.size and (ids.min() < 0 or ids.max() >= num):
                raise ValueError(f"{self.dataset}: {name} class ids must lie in 0..{num - 1}")

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.class_names)


def check_image(data: bytes, path: str) -> None:
    """Decode the bytes fully; raise CorruptImageError naming ``path`` if that fails."""
    if not data:
        raise CorruptImageError(path, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated or garbled data raises here, not at training
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise CorruptImageError(path, f"{type(err).__name__}: {err}") from None


def file_listing(root: Path, rel_paths: Sequence[str], class_ids: Sequence[int]) -> Listing:
    """Items are files under ``root`` (paths relative to it, '/'-separated), read and checked."""
    root = Path(root)
    paths = tuple(rel_paths)

    def read(i: int) -> bytes:
        full = root / paths[i]
        try:
            data = full.read_bytes()
        except OSError as err:
            raise CorruptImageError(str(full), f"cannot read: {err.strerror or err}") from None
        check_image(data, str(full))
        return data

    return Listing(np.asarray(class_ids, dtype=np.int64).reshape(-1), paths, read)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (H, W) grey or (H, W, 3) RGB array (deterministic per zlib)."""
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def array_listing(images: np.ndarray, class_ids: np.ndarray, paths: Sequence[str]) -> Listing:
    """Items are rows of a uint8 image array, encoded as PNG when read."""
    if images.shape[0] != len(paths):
        raise ValueError(f"{images.shape[0]} images but {len(paths)} paths")
    return Listing(
        np.asarray(class_ids, dtype=np.int64), tuple(paths), lambda i: encode_png(images[i])
    )


def imageset_source(dataset: str, train: ImageSet, test: ImageSet, layout: str) -> Source:
    """An in-memory train/test pair; paths are synthetic ``{dataset}/{split}/{index}``."""
    if train.class_names != test.class_names:
        raise DataError(f"{dataset}: train and test class names differ")
    return Source(
        dataset=dataset,
        root=None,
        layout=layout,
        class_names=train.class_names,
        train=array_listing(
            train.images, train.labels, [f"{dataset}/train/{i}" for i in range(len(train))]
        ),
        test=array_listing(
            test.images, test.labels, [f"{dataset}/test/{i}" for i in range(len(test))]
        ),
    )
