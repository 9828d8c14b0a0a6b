"""Image sets as datasets load them, the class order and its cut into tasks (SPEC section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """Grayscale images (uint8, ink bright on dark) with original class ids, as datasets load."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        """Reject wrong shapes, dtypes or label ranges early, where the cause is still visible."""
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 numpy array, got {_describe(self.images)}")
        if self.images.ndim != 3:
            raise ValueError(f"images must have shape (N, H, W), got shape {self.images.shape}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64:
            raise ValueError(f"labels must be an int64 numpy array, got {_describe(self.labels)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, "
                f"got {self.labels.shape}"
            )
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(n, str) for n in self.class_names
        ):
            raise ValueError("class_names must be a tuple of str")
        if len(self.class_names) == 0:
            raise ValueError("class_names must name at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        num = len(self.class_names)
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= num):
            raise ValueError(
                f"labels must lie in 0..{num - 1} (one per class name), "
                f"got range {self.labels.min()}..{self.labels.max()}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes C (the length of class_names), present in labels or not."""
        return len(self.class_names)

    def __len__(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])


def _describe(value: object) -> str:
    """Short type/dtype description for error messages."""
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype}"
    return type(value).__name__


def class_order(num_classes: int, seed: int) -> np.ndarray:
    """Legacy `np.random.seed(seed); np.random.permutation(C)` order, without global RNG use."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return np.random.RandomState(seed).permutation(num_classes).astype(np.int64)


def split_classes(order: np.ndarray, init_cls: int, increment: int) -> list[np.ndarray]:
    """Cut a class order into tasks: init_cls classes, then increment each, remainder last."""
    order = np.asarray(order, dtype=np.int64)
    num = int(order.size)
    if init_cls < 1:
        raise ValueError(f"init_cls must be >= 1, got init_cls={init_cls} ({num} classes)")
    if increment < 1:
        raise ValueError(f"increment must be >= 1, got increment={increment} ({num} classes)")
    if init_cls > num:
        raise ValueError(f"init_cls={init_cls} exceeds the number of classes ({num})")
    tasks = [order[:init_cls].copy()]
    for start in range(init_cls, num, increment):
        tasks.append(order[start : start + increment].copy())
    return tasks
