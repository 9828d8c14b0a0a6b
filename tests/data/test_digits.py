"""sklearn's bundled digits load offline as a fixed, stratified ImageSet pair."""

from __future__ import annotations

import numpy as np
import pytest

from sdlora.data import load_digits


def test_counts_shapes_and_range() -> None:
    train, test = load_digits()
    assert len(train) + len(test) == 1797
    for data in (train, test):
        assert data.images.shape[1:] == (8, 8)
        assert data.images.dtype == np.uint8
        assert data.labels.dtype == np.int64
        assert data.class_names == tuple("0123456789")
    assert train.images.max() == 255 and train.images.min() == 0
    # ink is bright on a dark background: the outer columns are nearly 0, the centre bright
    outer = train.images[:, :, [0, -1]].astype(float).mean()
    assert outer < 5 < 100 < train.images[:, 2:6, 2:6].mean()


@pytest.mark.parametrize("fraction", [0.2, 0.3])
def test_split_is_stratified(fraction: float) -> None:
    train, test = load_digits(test_fraction=fraction)
    total = np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10)
    np.testing.assert_array_equal(total, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    share = np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(share - total * fraction) <= 1)


def test_split_is_fixed_per_seed() -> None:
    a_train, a_test = load_digits(split_seed=0)
    b_train, b_test = load_digits(split_seed=0)
    c_train, _ = load_digits(split_seed=1)
    np.testing.assert_array_equal(a_train.images, b_train.images)
    np.testing.assert_array_equal(a_test.labels, b_test.labels)
    assert not np.array_equal(a_train.images, c_train.images)


def test_train_and_test_do_not_share_images() -> None:
    train, test = load_digits()
    train_rows = {row.tobytes() for row in train.images}
    shared = sum(row.tobytes() in train_rows for row in test.images)
    assert shared == 0  # the 1,797 raw images are all distinct


def test_bad_fraction() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)
