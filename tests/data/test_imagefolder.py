"""ImageNet-R/A and ImageFolder trees: split and archive layouts, class order, layout errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdlora.data.imagefolder import read_imagefolder
from sdlora.data.source import DataError


def test_split_layout(
    tmp_path: Path, folder_factory: Callable[..., list[Path]], wnids: tuple[str, ...]
) -> None:
    classes = [wnids[3], wnids[0], wnids[5]]  # written out of order: classes must come sorted
    folder_factory(tmp_path, classes=classes, train_per_class=3, test_per_class=2)
    (tmp_path / "train" / wnids[0] / "notes.txt").write_text("not an image")
    nested = tmp_path / "train" / wnids[0] / "more" / "ART_9.JPG"
    nested.parent.mkdir()
    nested.write_bytes((tmp_path / "train" / wnids[0] / "art_0.jpg").read_bytes())
    source = read_imagefolder(tmp_path, "imagenet-r")
    assert source.class_names == tuple(sorted(classes))
    assert np.bincount(source.train.class_ids).tolist() == [4, 3, 3]  # nested file counted
    assert np.bincount(source.test.class_ids).tolist() == [2, 2, 2]
    assert f"train/{wnids[0]}/more/ART_9.JPG" in source.train.paths
    assert not any(p.endswith(".txt") for p in source.train.paths)
    assert source.train.paths == tuple(sorted(source.train.paths))


def test_archive_layout_split_per_class(
    tmp_path: Path, folder_factory: Callable[..., list[Path]], wnids: tuple[str, ...]
) -> None:
    folder_factory(
        tmp_path, classes=wnids[:4], train_per_class=10, test_per_class=0, layout="archive"
    )
    (tmp_path / "README.txt").write_text("ImageNet-R")
    a = read_imagefolder(tmp_path, "imagenet-r", test_fraction=0.2, split_seed=0)
    assert a.layout.startswith("archive")
    assert np.bincount(a.train.class_ids).tolist() == [8] * 4
    assert np.bincount(a.test.class_ids).tolist() == [2] * 4
    assert set(a.train.paths).isdisjoint(a.test.paths)
    assert len(set(a.train.paths) | set(a.test.paths)) == 40
    again = read_imagefolder(tmp_path, "imagenet-r", test_fraction=0.2, split_seed=0)
    assert again.test.paths == a.test.paths
    other = read_imagefolder(tmp_path, "imagenet-r", test_fraction=0.2, split_seed=1)
    assert other.test.paths != a.test.paths
    # a class's split does not depend on the other classes present
    for cls in wnids[1:4]:
        for f in (tmp_path / cls).iterdir():
            f.unlink()
        (tmp_path / cls).rmdir()
    alone = read_imagefolder(tmp_path, "imagenet-r", test_fraction=0.2, split_seed=0)
    assert alone.test.paths == tuple(p for p in a.test.paths if p.startswith(wnids[0]))


def test_archive_class_with_one_image(
    tmp_path: Path, folder_factory: Callable[..., list[Path]], wnids: tuple[str, ...]
) -> None:
    folder_factory(
        tmp_path, classes=wnids[:2], train_per_class=1, test_per_class=0, layout="archive"
    )
    with pytest.raises(DataError, match=rf"class '{wnids[0]}' has 1 image"):
        read_imagefolder(tmp_path, "imagenet-a")


def test_root_one_level_too_high(
    tmp_path: Path, folder_factory: Callable[..., list[Path]], wnids: tuple[str, ...]
) -> None:
    folder_factory(tmp_path / "imagenet-r", classes=wnids[:2], layout="archive")
    with pytest.raises(
        DataError, match=r"'imagenet-r' at .*WordNet ids.*'imagenet-r'.*expected layout"
    ):
        read_imagefolder(tmp_path, "imagenet-r")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"'imagenet-a' at .*does not exist; expected layout: ROOT/train/<wnid>"
    ):
        read_imagefolder(tmp_path / "absent", "imagenet-a")


def test_imagefolder_needs_train_and_test(
    tmp_path: Path, folder_factory: Callable[..., list[Path]]
) -> None:
    folder_factory(tmp_path, classes=["cat", "dog"], layout="archive")
    with pytest.raises(DataError, match=r"'imagefolder' at .*no train/ and no test/ folder"):
        read_imagefolder(tmp_path, "imagefolder")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"no test/ folder"):
        read_imagefolder(tmp_path, "imagenet-r")  # half a split layout is never an archive


def test_train_test_class_sets_differ(
    tmp_path: Path, folder_factory: Callable[..., list[Path]]
) -> None:
    folder_factory(tmp_path, classes=["cat", "dog", "eel"])
    for f in (tmp_path / "test" / "dog").iterdir():
        f.unlink()
    (tmp_path / "test" / "dog").rmdir()
    (tmp_path / "test" / "fox").mkdir()
    with pytest.raises(
        DataError, match=r"class sets differ: only in train/ \['dog'\], only in test/ \['fox'\]"
    ):
        read_imagefolder(tmp_path, "imagefolder")


def test_generic_names_allowed_only_for_imagefolder(
    tmp_path: Path, folder_factory: Callable[..., list[Path]]
) -> None:
    folder_factory(tmp_path, classes=["cat", "dog"])
    assert read_imagefolder(tmp_path, "imagefolder").class_names == ("cat", "dog")
    with pytest.raises(DataError, match="WordNet ids"):
        read_imagefolder(tmp_path, "imagenet-r")
