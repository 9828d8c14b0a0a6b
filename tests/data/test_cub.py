"""CUB-200-2011's official lists: classes by id, the official split, bad lists named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdlora.data.cub import read_cub200
from sdlora.data.source import DataError


def test_reads_the_official_split(tmp_path: Path, cub_factory: Callable[..., Path]) -> None:
    base = cub_factory(tmp_path, num_classes=4, train_per_class=3, test_per_class=2)
    for root in (tmp_path, base):  # the CUB_200_2011 folder or the one holding it
        source = read_cub200(root)
        assert source.class_names == ("001.Bird_1", "002.Bird_2", "003.Bird_3", "004.Bird_4")
        assert np.bincount(source.train.class_ids).tolist() == [3] * 4
        assert np.bincount(source.test.class_ids).tolist() == [2] * 4
        assert source.train.paths[0] == "images/001.Bird_1/Bird_1_0001.jpg"
        assert source.test.paths[0] == "images/001.Bird_1/Bird_1_0004.jpg"  # id order
        assert source.train.read(0) == (base / source.train.paths[0]).read_bytes()


def test_classes_follow_ids_not_file_order(
    tmp_path: Path, cub_factory: Callable[..., Path]
) -> None:
    base = cub_factory(tmp_path, num_classes=3)
    classes = base / "classes.txt"
    classes.write_text("".join(reversed(classes.read_text().splitlines(keepends=True))))
    assert read_cub200(base).class_names == ("001.Bird_1", "002.Bird_2", "003.Bird_3")


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("images.txt", lambda t: t + "x images/y.jpg\n", r"images.txt:10: expected '<id> <path"),
        ("images.txt", lambda t: t + "1 001.Bird_1/again.jpg\n", r"images.txt:10: id 1 is listed"),
        (
            "train_test_split.txt",
            lambda t: t.replace("1 1\n", "1 2\n", 1),
            r"image 1 is marked '2'; expected 1 \(train\) or 0",
        ),
        (
            "train_test_split.txt",
            lambda t: "\n".join(t.splitlines()[1:]) + "\n",
            r"list different image ids, e.g. \[1\]",
        ),
        (
            "images.txt",
            lambda t: t.replace("001.Bird_1/Bird_1_0001.jpg", "999.Nope/x.jpg"),
            r"image 1 is '999.Nope/x.jpg'; expected '<class folder>/<file>'",
        ),
        (
            "image_class_labels.txt",
            lambda t: t.replace("1 1\n", "1 2\n", 1),
            r"gives image 1 class 2 but its folder '001.Bird_1' is class 1",
        ),
        ("classes.txt", lambda t: t.replace("2 002", "5 002"), r"class ids must run 1..C"),
        (
            "train_test_split.txt",
            lambda t: t.replace("3 0\n", "3 1\n"),
            r"1 class\(es\) have no test image, e.g. \['001.Bird_1'\]",
        ),
    ],
)
def test_bad_lists_are_named(
    tmp_path: Path,
    cub_factory: Callable[..., Path],
    file: str,
    edit: Callable[[str], str],
    message: str,
) -> None:
    base = cub_factory(tmp_path, num_classes=3)
    path = base / file
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=message):
        read_cub200(base)


def test_missing_files_name_them_and_the_layout(
    tmp_path: Path, cub_factory: Callable[..., Path]
) -> None:
    with pytest.raises(DataError, match=r"'cub200' at .*absent: the folder does not exist"):
        read_cub200(tmp_path / "absent")
    base = cub_factory(tmp_path, num_classes=2)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match=r"missing train_test_split.txt; expected layout: ROOT/"):
        read_cub200(base)
