"""DomainNet list files: merged domains, labels from the lists, names from the folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdlora.config import DOMAINNET_DOMAINS
from sdlora.data.domainnet import read_domainnet
from sdlora.data.source import DataError


def test_reads_and_merges_domains(tmp_path: Path, domainnet_factory: Callable[..., None]) -> None:
    domainnet_factory(tmp_path, domains=("clipart", "sketch"), train_per_class=2, test_per_class=1)
    source = read_domainnet(tmp_path, ["clipart", "sketch"])
    assert source.class_names == (
        "aircraft_carrier",
        "airplane",
        "alarm_clock",
        "ambulance",
        "angel",
        "ant",
    )
    assert np.bincount(source.train.class_ids).tolist() == [4] * 6  # 2 per class x 2 domains
    assert np.bincount(source.test.class_ids).tolist() == [2] * 6
    # list order: clipart's list first, then sketch's, lines in file order
    assert source.train.paths[0] == "clipart/aircraft_carrier/clipart_001_000000.jpg"
    assert source.train.paths[-1].startswith("sketch/ant/")
    assert source.train.read(0) == (tmp_path / source.train.paths[0]).read_bytes()
    only_sketch = read_domainnet(tmp_path, ["sketch"])
    assert len(only_sketch.train) == 12 and only_sketch.class_names == source.class_names


def test_default_domains_are_the_six() -> None:
    assert DOMAINNET_DOMAINS == ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def test_missing_lists_name_files_and_layout(
    tmp_path: Path, domainnet_factory: Callable[..., None]
) -> None:
    domainnet_factory(tmp_path, domains=("clipart",))
    with pytest.raises(DataError, match=r"missing list file\(s\) .*real_train.txt.*_test.txt"):
        read_domainnet(tmp_path, ["clipart", "real"])
    with pytest.raises(DataError, match=r"'domainnet' at .*does not exist; expected"):
        read_domainnet(tmp_path / "absent", ["clipart"])


def test_malformed_line_names_file_and_line(
    tmp_path: Path, domainnet_factory: Callable[..., None]
) -> None:
    domainnet_factory(tmp_path, domains=("clipart",))
    lst = tmp_path / "clipart_test.txt"
    lst.write_text(lst.read_text() + "clipart/ant/x.jpg seven\n")
    with pytest.raises(DataError, match=r"clipart_test.txt:7: expected '<path> <label>'"):
        read_domainnet(tmp_path, ["clipart"])


def test_label_naming_two_folders(tmp_path: Path, domainnet_factory: Callable[..., None]) -> None:
    domainnet_factory(tmp_path, domains=("clipart", "sketch"))
    lst = tmp_path / "sketch_train.txt"
    lst.write_text(
        lst.read_text().replace(
            "sketch/airplane/sketch_002_000000.jpg 1", "sketch/airplane/sketch_002_000000.jpg 2"
        )
    )
    with pytest.raises(
        DataError, match=r"label 2 names class folder 'alarm_clock' .* but 'airplane'"
    ):
        read_domainnet(tmp_path, ["clipart", "sketch"])


def test_labels_must_be_contiguous(tmp_path: Path, domainnet_factory: Callable[..., None]) -> None:
    domainnet_factory(tmp_path, domains=("clipart",))
    for split in ("train", "test"):
        lst = tmp_path / f"clipart_{split}.txt"
        kept = [line for line in lst.read_text().splitlines() if not line.endswith(" 2")]
        lst.write_text("\n".join(kept) + "\n")
    with pytest.raises(DataError, match=r"labels must run 0..5 but 1 never occur.*\[2\]"):
        read_domainnet(tmp_path, ["clipart"])
