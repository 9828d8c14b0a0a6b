"""scikit-learn's bundled 8x8 handwritten digits as an offline ImageSet pair."""

from __future__ import annotations

import numpy as np

from sdlora.data.tasks import ImageSet

DIGIT_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Real 8x8 digits (1,797, shipped with sklearn), scaled to 0..255, stratified train/test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    from sklearn import datasets as sk_datasets  # here: importing sklearn takes about 1 s
    from sklearn.model_selection import train_test_split

    bunch = sk_datasets.load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.size),
        test_size=test_fraction,
        stratify=labels,
        random_state=split_seed,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return (
        ImageSet(images[train_idx], labels[train_idx], DIGIT_NAMES),
        ImageSet(images[test_idx], labels[test_idx], DIGIT_NAMES),
    )
