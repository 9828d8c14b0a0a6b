"""Folder datasets: ImageNet-R, ImageNet-A and any ImageFolder with ``train/`` and ``test/``.

Classes are the class folders' names, sorted as torchvision's ``ImageFolder`` sorts them (Python
string order), numbered 0..C-1 in that order (SPEC §1). Images are the files below each class
folder (recursively, symlinks followed) whose suffix is one of ``IMG_EXTENSIONS``, in sorted path
order; other files are ignored. Rows keep the file bytes as they are on disk.

Two layouts:

- split: ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>``. This is how the
  toolboxes behind the published ImageNet-R/A numbers ship them (an 80/20 split) and the only
  layout for ``imagefolder``. Train and test must hold the same class folders.
- archive (ImageNet-R and ImageNet-A only): ``ROOT/<wnid>/<image>``, the tar files extracted
  (``imagenet-r/``, ``imagenet-a/``; a ``README.txt`` beside the folders is ignored). Each class
  is split on its own: its sorted files are permuted by a generator seeded with
  ``(split_seed, crc32(class name))`` and the first ``round(n * test_fraction)`` (at least 1, at
  most n - 1) are the test images, so a class's split does not depend on which other classes
  are present.

For ImageNet-R/A every class folder must be a WordNet id (``n`` + 8 digits); that catches a root
that points one level too high (``.../data`` instead of ``.../data/imagenet-r``).
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from sdlora.data.source import IMG_EXTENSIONS, DataError, Source, file_listing

WNID = re.compile(r"n\d{8}")

LAYOUTS = {
    "imagenet-r": (
        "ROOT/train/<wnid>/<image> and ROOT/test/<wnid>/<image> (the toolboxes' split), or the "
        "archive layout ROOT/<wnid>/<image> (imagenet-r.tar extracted, ROOT = .../imagenet-r)"
    ),
    "imagenet-a": (
        "ROOT/train/<wnid>/<image> and ROOT/test/<wnid>/<image> (the toolboxes' split), or the "
        "archive layout ROOT/<wnid>/<image> (imagenet-a.tar extracted, ROOT = .../imagenet-a)"
    ),
    "imagefolder": "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>",
}


def _error(dataset: str, root: Path, what: str) -> DataError:
    return DataError(f"dataset {dataset!r} at {root}: {what}; expected layout: {LAYOUTS[dataset]}")


def class_folders(folder: Path) -> list[str]:
    """Sub-folder names, sorted as torchvision's ImageFolder.find_classes sorts them."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def image_files(class_dir: Path, relative_to: Path) -> list[str]:
    """Image files below ``class_dir`` (recursive, symlinks followed), '/'-paths, sorted."""
    found = []
    for dirpath, _, filenames in os.walk(class_dir, followlinks=True):
        for name in filenames:
            if name.lower().endswith(IMG_EXTENSIONS):
                found.append(Path(dirpath, name).relative_to(relative_to).as_posix())
    return sorted(found)


def _check_wnids(dataset: str, root: Path, names: list[str]) -> None:
    if dataset == "imagefolder":
        return
    bad = [n for n in names if not WNID.fullmatch(n)]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise _error(
            dataset, root, f"class folders must be WordNet ids like n01443537, got {shown}"
        )


def _scan(root: Path, folder: Path, names: list[str]) -> tuple[list[str], list[int]]:
    """Paths (relative to root) and class ids of the images in ``folder/<name>`` for each name."""
    paths: list[str] = []
    ids: list[int] = []
    for cid, name in enumerate(names):
        files = image_files(folder / name, root)
        paths += files
        ids += [cid] * len(files)
    return paths, ids


def split_class(files: list[str], name: str, test_fraction: float, split_seed: int) -> list[bool]:
    """Per file of one class: True if it goes to test. Seeded by (split_seed, crc32(name))."""
    n = len(files)
    n_test = min(max(int(np.floor(n * test_fraction + 0.5)), 1), n - 1)
    rng = np.random.default_rng([split_seed, zlib.crc32(name.encode())])
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.permutation(n)[:n_test]] = True
    return is_test.tolist()


def read_imagefolder(
    root: str | Path, dataset: str = "imagefolder", test_fraction: float = 0.2, split_seed: int = 0
) -> Source:
    """ImageNet-R / ImageNet-A / generic ImageFolder under ``root`` in either layout above."""
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown folder dataset {dataset!r}; use one of {sorted(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise _error(dataset, root, "the folder does not exist")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        return _read_split(root, dataset, train_dir, test_dir)
    if dataset == "imagefolder" or train_dir.is_dir() or test_dir.is_dir():
        missing = [d.name + "/" for d in (train_dir, test_dir) if not d.is_dir()]
        raise _error(dataset, root, f"no {' and no '.join(missing)} folder")
    return _read_archive(root, dataset, test_fraction, split_seed)


def _read_split(root: Path, dataset: str, train_dir: Path, test_dir: Path) -> Source:
    train_names, test_names = class_folders(train_dir), class_folders(test_dir)
    if not train_names:
        raise _error(dataset, root, f"no class folders in {train_dir}")
    if train_names != test_names:
        only_train = sorted(set(train_names) - set(test_names))
        only_test = sorted(set(test_names) - set(train_names))
        raise DataError(
            f"dataset {dataset!r} at {root}: train and test class sets differ: "
            f"only in train/ {only_train[:10]}, only in test/ {only_test[:10]}"
        )
    _check_wnids(dataset, root, train_names)
    train_paths, train_ids = _scan(root, train_dir, train_names)
    test_paths, test_ids = _scan(root, test_dir, test_names)
    return Source(
        dataset=dataset,
        root=str(root.resolve()),
        layout="split: train/<class>/, test/<class>/",
        class_names=tuple(train_names),
        train=file_listing(root, train_paths, train_ids),
        test=file_listing(root, test_paths, test_ids),
    )


def _read_archive(root: Path, dataset: str, test_fraction: float, split_seed: int) -> Source:
    names = class_folders(root)
    if not names:
        raise _error(dataset, root, "no class folders")
    _check_wnids(dataset, root, names)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction = {test_fraction}: must lie strictly in (0, 1)")
    split: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for cid, name in enumerate(names):
        files = image_files(root / name, root)
        if len(files) < 2:
            raise DataError(
                f"dataset {dataset!r} at {root}: class {name!r} has {len(files)} image(s); the "
                "archive layout is split per class and needs at least 2 (one train, one test)"
            )
        for path, is_test in zip(
            files, split_class(files, name, test_fraction, split_seed), strict=True
        ):
            paths, ids = split["test" if is_test else "train"]
            paths.append(path)
            ids.append(cid)
    return Source(
        dataset=dataset,
        root=str(root.resolve()),
        layout=f"archive: <wnid>/, split per class (test_fraction {test_fraction}, "
        f"split_seed {split_seed})",
        class_names=tuple(names),
        train=file_listing(root, *split["train"]),
        test=file_listing(root, *split["test"]),
    )
