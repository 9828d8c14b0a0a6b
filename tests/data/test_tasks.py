"""Class orders and task splits follow SPEC section 1 (legacy NumPy permutation, init/increment)."""

from __future__ import annotations

import numpy as np
import pytest

from sdlora.data import ImageSet, class_order, split_classes


def _legacy_order(num_classes: int, seed: int) -> np.ndarray:
    """The published code's convention, which touches the global RNG."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.permutation(num_classes)
    finally:
        np.random.set_state(state)


def _toy_set(num_classes: int, per_class: int, value_offset: int = 0) -> ImageSet:
    """Images filled with their original class id, so every sample can be traced."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    images = np.broadcast_to(
        (labels + value_offset).astype(np.uint8)[:, None, None], (labels.size, 4, 4)
    ).copy()
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(num_classes)))


@pytest.mark.parametrize("seed", [0, 1, 42, 1993])
@pytest.mark.parametrize("num_classes", [1, 10, 100, 200])
def test_class_order_matches_legacy_global_seed(seed: int, num_classes: int) -> None:
    np.testing.assert_array_equal(class_order(num_classes, seed), _legacy_order(num_classes, seed))


def test_class_order_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    class_order(50, 7)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_class_order_is_a_permutation() -> None:
    order = class_order(37, 5)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), np.arange(37))


def test_split_even() -> None:
    order = class_order(10, 0)
    tasks = split_classes(order, init_cls=2, increment=2)
    assert [t.size for t in tasks] == [2, 2, 2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(tasks), order)


def test_split_with_remainder() -> None:
    order = class_order(10, 3)
    tasks = split_classes(order, init_cls=3, increment=4)
    assert [t.size for t in tasks] == [3, 4, 3]
    np.testing.assert_array_equal(np.concatenate(tasks), order)


def test_split_single_task() -> None:
    assert [t.size for t in split_classes(np.arange(5), 5, 1)] == [5]


@pytest.mark.parametrize(
    ("init_cls", "increment", "match"),
    [(0, 2, "init_cls"), (2, 0, "increment"), (11, 2, "init_cls=11 .*10")],
)
def test_split_errors(init_cls: int, increment: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_classes(np.arange(10), init_cls, increment)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 4, 4), np.float32), np.zeros(2, np.int64), "uint8"),
        (np.zeros((2, 16), np.uint8), np.zeros(2, np.int64), r"\(N, H, W\)"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int32), "int64"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros(3, np.int64), "shape"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 5]), r"0\.\.2"),
    ],
)
def test_image_set_validation(images: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageSet(images, labels, ("a", "b", "c"))


def test_image_set_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        ImageSet(np.zeros((1, 2, 2), np.uint8), np.zeros(1, np.int64), ("a", "a"))
