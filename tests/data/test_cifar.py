"""The official python CIFAR-100 pickles read as a Source; bad layouts and files are named."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlora.data.cifar import read_cifar100
from sdlora.data.source import DataError


def test_reads_pickles_losslessly(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    written = cifar_factory(tmp_path, num_classes=100, train_per_class=2, test_per_class=1)
    source = read_cifar100(tmp_path)  # the parent of cifar-100-python, as torchvision's root
    assert source.dataset == "cifar100" and source.num_classes == 100
    assert source.class_names[:2] == ("fine_00", "fine_01")
    assert len(source.train) == 200 and len(source.test) == 100
    np.testing.assert_array_equal(source.train.class_ids, written["train_labels"])
    assert source.train.paths[3] == "train/img_train_00003.png"
    # R, G, B planes of 1024 values each become an (32, 32, 3) image, exactly
    decoded = np.asarray(Image.open(io.BytesIO(source.test.read(7))))
    expected = written["test_data"][7].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(decoded, expected)
    assert read_cifar100(tmp_path / "cifar-100-python").class_names == source.class_names


def test_missing_root_names_dataset_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'cifar100' at .*does not exist.*cifar-100-python/"):
        read_cifar100(tmp_path / "nowhere")


def test_missing_file_names_it(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    cifar_factory(tmp_path, num_classes=5)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match=r"missing .*cifar-100-python/meta.*expected layout"):
        read_cifar100(tmp_path)


def test_corrupt_pickle_names_file(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    cifar_factory(tmp_path, num_classes=5)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot read .*cifar-100-python/train"):
        read_cifar100(tmp_path)


def test_cifar10_batch_is_rejected(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    cifar_factory(tmp_path, num_classes=5)
    train = tmp_path / "cifar-100-python" / "train"
    payload = {
        b"data": np.zeros((2, 3072), np.uint8),
        b"labels": [0, 1],
        b"filenames": [b"a", b"b"],
    }
    train.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=r"lacks key\(s\) \['fine_labels'\]"):
        read_cifar100(tmp_path)


def test_wrong_dtype_is_rejected(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    cifar_factory(tmp_path, num_classes=5)
    test = tmp_path / "cifar-100-python" / "test"
    payload = pickle.loads(test.read_bytes(), encoding="bytes")
    payload[b"data"] = payload[b"data"].astype(np.float32)
    test.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="uint8"):
        read_cifar100(tmp_path)
