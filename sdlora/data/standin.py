"""Generated stand-ins for the on-disk benchmarks, each in its reader's own layout.

Tiny random images written where the real files would lie, so that a reader, the prepare stage
and everything after them run on real code paths with nothing downloaded: the reproduction
kit's ``--smoke`` runs (:mod:`sdlora.reproduce`) and the tests use them. The images are noise:
what a stand-in checks is the plumbing, never accuracy.

- :func:`write_cifar100`: ``cifar-100-python/{train,test,meta}`` pickled as the official files
  are (Python-2 protocol, bytes keys, ``b'data'`` uint8 (N, 3072) in R, G, B planes).
- :func:`write_folders`: JPEGs under class folders, split (``train/``, ``test/``) or as one
  folder per class (the ImageNet-R/A archives).
- :func:`write_domainnet`: ``{domain}/{class}/{file}.jpg`` and ``{domain}_{train,test}.txt``.
- :func:`write_cub200`: ``CUB_200_2011/`` with ``images/`` and its four list files.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

RENDITIONS = ("art", "cartoon", "graffiti", "painting", "sketch", "toy")  # ImageNet-R file names


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    """A random-noise RGB JPEG of ``size`` (width, height), different for every seed."""
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


def write_cifar100(
    root: Path, num_classes: int = 100, train_per_class: int = 2, test_per_class: int = 1
) -> dict[str, np.ndarray]:
    """The official pickles under ``root/cifar-100-python``; returns the arrays written."""
    base = Path(root) / "cifar-100-python"
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


def wordnet_ids(count: int) -> list[str]:
    """``count`` made-up WordNet-id class names (``n`` + 8 digits), sorted."""
    return [f"n{10_000_000 + i:08d}" for i in range(count)]


def write_folders(
    root: Path,
    classes: Sequence[str],
    train_per_class: int = 4,
    test_per_class: int = 1,
    layout: str = "split",
    size: tuple[int, int] = (12, 10),
) -> list[Path]:
    """JPEGs named like ImageNet-R's (``art_3.jpg``) under ``root/{train,test}/<class>/``, or
    with ``layout="archive"`` all under ``root/<class>/``; returns the files in write order."""
    files = []
    seed = 0
    for cls in classes:
        for i in range(train_per_class + test_per_class):
            name = f"{RENDITIONS[i % len(RENDITIONS)]}_{i}.jpg"
            if layout == "archive":
                path = Path(root) / cls / name
            else:
                split = "train" if i < train_per_class else "test"
                path = Path(root) / split / cls / name
            write_jpeg(path, seed, size)
            files.append(path)
            seed += 1
    return files


def write_domainnet(
    root: Path,
    domains: Sequence[str],
    classes: Sequence[str],
    train_per_class: int = 2,
    test_per_class: int = 1,
    size: tuple[int, int] = (12, 10),
) -> None:
    """Images at ``root/{domain}/{class}/{domain}_{c:03d}_{i:06d}.jpg`` and the two lists per
    domain, labels in class order."""
    seed = 1000
    for domain in domains:
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for c, cls in enumerate(classes):
            for i in range(train_per_class + test_per_class):
                rel = f"{domain}/{cls}/{domain}_{c + 1:03d}_{i:06d}.jpg"
                write_jpeg(Path(root) / rel, seed, size)
                seed += 1
                lines["train" if i < train_per_class else "test"].append(f"{rel} {c}")
        for split, entries in lines.items():
            (Path(root) / f"{domain}_{split}.txt").write_text("\n".join(entries) + "\n")


def cub_class_names(count: int) -> list[str]:
    """``count`` class folders named as CUB's are (``001.Bird_1``), in id order."""
    return [f"{i:03d}.Bird_{i}" for i in range(1, count + 1)]


def write_cub200(
    root: Path,
    num_classes: int = 200,
    train_per_class: int = 2,
    test_per_class: int = 1,
    size: tuple[int, int] = (12, 10),
) -> Path:
    """``root/CUB_200_2011`` as the archive extracts: ``images/<class>/<file>.jpg``,
    ``images.txt``, ``train_test_split.txt``, ``classes.txt`` and ``image_class_labels.txt``
    (image ids class by class, as the release numbers them). Returns the CUB_200_2011 folder."""
    base = Path(root) / "CUB_200_2011"
    names = cub_class_names(num_classes)
    images, split, labels = [], [], []
    image_id = 0
    for c, cls in enumerate(names, start=1):
        for i in range(train_per_class + test_per_class):
            image_id += 1
            rel = f"{cls}/{cls.split('.', 1)[1]}_{image_id:04d}.jpg"
            write_jpeg(base / "images" / rel, 2000 + image_id, size)
            images.append(f"{image_id} {rel}")
            split.append(f"{image_id} {1 if i < train_per_class else 0}")
            labels.append(f"{image_id} {c}")
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in enumerate(names, 1)))
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return base
