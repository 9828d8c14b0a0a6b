"""Tiny on-disk fixtures in every real format, built on the fly in tmp_path (nothing downloaded)
by the library's stand-in writers (:mod:`sdlora.data.standin`, which the reproduction kit's
smoke runs use too).

- ``cifar_factory``: ``cifar-100-python/{train,test,meta}`` pickled as the official files are;
  ``py2_dump`` pickles as they do (bytes as Python 2's str, so the files name no global but
  numpy's).
- ``folder_factory``: small random JPEGs under ImageNet-R-like WordNet-id folders, in the split
  (``train/``, ``test/``) or the archive (one folder per class) layout.
- ``domainnet_factory``: ``{domain}/{class}/{file}.jpg`` plus ``{domain}_{train,test}.txt``.
- ``cub_factory``: ``CUB_200_2011/`` with ``images/`` and its list files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdlora.data.standin import (
    dump_py2,
    write_cifar100,
    write_cub200,
    write_domainnet,
    write_folders,
)

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
DOMAINNET_CLASSES = ("aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel", "ant")


def make_folder(
    root: Path,
    classes: Sequence[str] = WNIDS[:6],
    train_per_class: int = 4,
    test_per_class: int = 1,
    layout: str = "split",
) -> list[Path]:
    """JPEGs named like ImageNet-R's (``art_3.jpg``); ``archive`` puts all under root/<wnid>/."""
    return write_folders(root, classes, train_per_class, test_per_class, layout)


def make_domainnet(
    root: Path,
    domains: Sequence[str] = ("clipart", "sketch"),
    classes: Sequence[str] = DOMAINNET_CLASSES,
    train_per_class: int = 2,
    test_per_class: int = 1,
) -> None:
    """Images at root/{domain}/{class}/{domain}_{c:03d}_{i:06d}.jpg and the two lists per domain."""
    write_domainnet(root, domains, classes, train_per_class, test_per_class)


@pytest.fixture
def cifar_factory() -> Callable[..., dict[str, np.ndarray]]:
    """``make_cifar(root, num_classes=100, train_per_class=2, test_per_class=1)``."""
    return write_cifar100


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
def cub_factory() -> Callable[..., Path]:
    """``write_cub200(root, num_classes, train_per_class, test_per_class)``."""
    return write_cub200


@pytest.fixture
def wnids() -> tuple[str, ...]:
    """Ten real ImageNet-R WordNet ids, sorted."""
    return WNIDS
