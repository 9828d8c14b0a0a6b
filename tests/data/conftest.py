"""Tiny on-disk fixtures in every real format, built on the fly in tmp_path (nothing downloaded).

- ``make_cifar``: ``cifar-100-python/{train,test,meta}`` pickled as the official files are
  (Python-2 protocol, bytes keys, ``b'data'`` uint8 (N, 3072) in R, G, B planes), through
  ``dump_py2``: bytes as Python 2's str, so the files name no global but numpy's.
- ``make_folder``: small random JPEGs under ImageNet-R-like WordNet-id folders, in the split
  (``train/``, ``test/``) or the archive (one folder per class) layout.
- ``make_domainnet``: ``{domain}/{class}/{file}.jpg`` plus ``{domain}_{train,test}.txt`` lists.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

# Real ImageNet-R WordNet ids (goldfish, great white shark, hammerhead, stingray, hen, ...)
WNIDS: tuple[str, ...] = (
    "n01443537",
    "n01484850",
    "n01494475",
    "n01498041",
    "n01514859",
    "n01518878",
    "n01531178",
    "n01534433",
    "n01614925",
    "n01616318",
)
RENDITIONS = ("art", "cartoon", "graffiti", "painting", "sketch", "toy")
DOMAINNET_CLASSES = ("aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel", "ant")


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    """A small random-noise JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: bytes as str opcodes, not Python 3's ``_codecs.encode``."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def dump_py2(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` pickled as the official CIFAR files are (Python 2, protocol 2)."""
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def make_cifar(
    root: Path, num_classes: int = 100, train_per_class: int = 2, test_per_class: int = 1
) -> dict[str, np.ndarray]:
    """Write the official pickles under root/cifar-100-python; return the arrays written."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(num_classes), per)  # interleaved, as the real files are mixed
        n = labels.size
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        payload = {
            b"filenames": [f"img_{split}_{i:05d}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": data,
        }
        dump_py2(payload, base / split)
        written[f"{split}_data"], written[f"{split}_labels"] = data, labels
    meta = {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(num_classes)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    dump_py2(meta, base / "meta")
    return written


def make_folder(
    root: Path,
    classes: Sequence[str] = WNIDS[:6],
    train_per_class: int = 4,
    test_per_class: int = 1,
    layout: str = "split",
) -> list[Path]:
    """JPEGs named like ImageNet-R's (``art_3.jpg``); ``archive`` puts all under root/<wnid>/."""
    files = []
    seed = 0
    for cls in classes:
        for i in range(train_per_class + test_per_class):
            if layout == "archive":
                path = root / cls / f"{RENDITIONS[i % len(RENDITIONS)]}_{i}.jpg"
            else:
                split = "train" if i < train_per_class else "test"
                path = root / split / cls / f"{RENDITIONS[i % len(RENDITIONS)]}_{i}.jpg"
            write_jpeg(path, seed)
            files.append(path)
            seed += 1
    return files


def make_domainnet(
    root: Path,
    domains: Sequence[str] = ("clipart", "sketch"),
    classes: Sequence[str] = DOMAINNET_CLASSES,
    train_per_class: int = 2,
    test_per_class: int = 1,
) -> None:
    """Images at root/{domain}/{class}/{domain}_{c:03d}_{i:06d}.jpg and the two lists per domain."""
    seed = 1000
    for domain in domains:
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for c, cls in enumerate(classes):
            for i in range(train_per_class + test_per_class):
                rel = f"{domain}/{cls}/{domain}_{c + 1:03d}_{i:06d}.jpg"
                write_jpeg(root / rel, seed)
                seed += 1
                lines["train" if i < train_per_class else "test"].append(f"{rel} {c}")
        for split, entries in lines.items():
            (root / f"{domain}_{split}.txt").write_text("\n".join(entries) + "\n")


@pytest.fixture
def cifar_factory() -> Callable[..., dict[str, np.ndarray]]:
    """``make_cifar(root, num_classes=100, train_per_class=2, test_per_class=1)``."""
    return make_cifar


@pytest.fixture
def py2_dump() -> Callable[[Any, Path], None]:
    """``dump_py2(obj, path)``: pickle as the official CIFAR files are."""
    return dump_py2


@pytest.fixture
def folder_factory() -> Callable[..., list[Path]]:
    """``make_folder(root, classes, train_per_class, test_per_class, layout)``."""
    return make_folder


@pytest.fixture
def domainnet_factory() -> Callable[..., None]:
    """``make_domainnet(root, domains, classes, train_per_class, test_per_class)``."""
    return make_domainnet


@pytest.fixture
def wnids() -> tuple[str, ...]:
    """Ten real ImageNet-R WordNet ids, sorted."""
    return WNIDS
