"""CIFAR-100, the official Python version (``cifar-100-python/{train,test,meta}`` pickles).

Classes are the 100 fine labels in label-id order (SPEC §1: label ids for CIFAR), named by
``meta[b'fine_label_names']``. Images (``b'data'``: uint8 (N, 3072), planes R, G, B of 32x32,
row-major) are stored as lossless PNG. The source path of a row is ``{split}/{filename}`` from
``b'filenames'``. The pickles are read by an unpickler that builds numpy arrays and nothing
else: a crafted file is refused before any of its code could run (issue 19).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sdlora.data.source import DataError, Source, array_listing

LAYOUT = (
    "ROOT/cifar-100-python/{train,test,meta} (the official python pickles, "
    "cifar-100-python.tar.gz extracted), or ROOT pointing at cifar-100-python itself"
)
# The only globals an official file names (its numpy arrays, pickled by Python 2 and numpy 1);
# numpy 2 writes _reconstruct under numpy._core. Anything else could run code when loaded.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


def _error(root: Path, what: str) -> DataError:
    return DataError(f"dataset 'cifar100' at {root}: {what}; expected layout: {LAYOUT}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only the numpy arrays the official files hold: a crafted file runs no code."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global, or a DataError naming the one the file asks for (nothing runs)."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"cifar100: {self.path} refers to {module}.{name}, which no official CIFAR-100 "
                f"file uses (refused, nothing run); re-download the official CIFAR-100 python "
                f"version (cifar-100-python.tar.gz)"
            )
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, Any]:
    """Unpickle a Python-2 era CIFAR file; keys come back as str whatever they were written as."""
    try:
        with path.open("rb") as f:
            raw = _CifarUnpickler(f, path).load()
    except DataError:  # a refused global: its own message (DataError is also a ValueError)
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"cifar100: cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(f"cifar100: {path} holds a {type(raw).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _split(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, 32, 32, 3) uint8, fine labels int64, filenames) of one split pickle."""
    d = _load_pickle(path)
    missing = [k for k in ("data", "fine_labels", "filenames") if k not in d]
    if missing:
        raise DataError(f"cifar100: {path} lacks key(s) {missing} (is it CIFAR-10?)")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"cifar100: {path}: b'data' must be a uint8 array (N, 3072)")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"cifar100: {path}: b'data' has {data.shape[1]} columns, expected 3072")
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    names = [_text(f) for f in d["filenames"]]
    n = data.shape[0]
    if labels.shape != (n,) or len(names) != n:
        raise DataError(
            f"cifar100: {path}: {n} images but {labels.size} fine_labels and {len(names)} filenames"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"cifar100: {path}: fine_labels must lie in 0..{num_classes - 1}")
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels, names


def read_cifar100(root: str | Path) -> Source:
    """The official python CIFAR-100 under ``root`` (or ``root/cifar-100-python``)."""
    root = Path(root)
    if not root.is_dir():
        raise _error(root, "the folder does not exist")
    base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    missing = [n for n in ("train", "test", "meta") if not (base / n).is_file()]
    if missing:
        raise _error(root, f"missing {', '.join(str(base / n) for n in missing)}")
    meta = _load_pickle(base / "meta")
    if "fine_label_names" not in meta:
        raise DataError(f"cifar100: {base / 'meta'} lacks key b'fine_label_names'")
    class_names = tuple(_text(n) for n in meta["fine_label_names"])
    train_x, train_y, train_f = _split(base / "train", len(class_names))
    test_x, test_y, test_f = _split(base / "test", len(class_names))
    return Source(
        dataset="cifar100",
        root=str(base.resolve()),
        layout="cifar-100-python pickles",
        class_names=class_names,
        train=array_listing(train_x, train_y, [f"train/{f}" for f in train_f]),
        test=array_listing(test_x, test_y, [f"test/{f}" for f in test_f]),
    )
