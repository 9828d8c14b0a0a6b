"""The official python CIFAR-100 pickles read as a Source; bad layouts and files are named."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlora.data.cifar import ALLOWED_GLOBALS, read_cifar100
from sdlora.data.source import DataError
from sdlora.errors import BadInput


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


def test_cifar10_batch_is_rejected(
    tmp_path: Path, cifar_factory: Callable[..., dict], py2_dump: Callable[..., None]
) -> None:
    cifar_factory(tmp_path, num_classes=5)
    payload = {
        b"data": np.zeros((2, 3072), np.uint8),
        b"labels": [0, 1],
        b"filenames": [b"a", b"b"],
    }
    py2_dump(payload, tmp_path / "cifar-100-python" / "train")
    with pytest.raises(DataError, match=r"lacks key\(s\) \['fine_labels'\]"):
        read_cifar100(tmp_path)


def test_wrong_dtype_is_rejected(
    tmp_path: Path, cifar_factory: Callable[..., dict], py2_dump: Callable[..., None]
) -> None:
    cifar_factory(tmp_path, num_classes=5)
    test = tmp_path / "cifar-100-python" / "test"
    payload = pickle.loads(test.read_bytes(), encoding="bytes")  # our own file, just written
    payload[b"data"] = payload[b"data"].astype(np.float32)
    py2_dump(payload, test)
    with pytest.raises(DataError, match="uint8"):
        read_cifar100(tmp_path)


def _globals(path: Path) -> set[tuple[str, str]]:
    """The (module, name) globals a protocol-2 pickle names (GLOBAL opcodes), read, not run."""
    ops = pickletools.genops(path.read_bytes())
    return {tuple(arg.split(" ", 1)) for op, arg, _ in ops if op.name == "GLOBAL"}


class _Shell:
    """Unpickles by running a shell command, as a crafted file would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


@pytest.mark.parametrize("name", ["meta", "train", "test"])
def test_crafted_pickle_runs_nothing(
    tmp_path: Path, cifar_factory: Callable[..., dict], py2_dump: Callable[..., None], name: str
) -> None:
    cifar_factory(tmp_path, num_classes=5)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-100-python" / name
    key = b"fine_label_names" if name == "meta" else b"fine_labels"
    payload = pickle.loads(target.read_bytes(), encoding="bytes")  # our own file, just written
    payload[key] = _Shell(f"touch {marker}")
    py2_dump(payload, target)  # official in every other byte: os.system is the only extra global
    forbidden = f"{os.system.__module__}.system"  # posix.system on Linux
    with pytest.raises(DataError) as err:
        read_cifar100(tmp_path)
    message = str(err.value)
    assert f"{target} refers to {forbidden}" in message
    assert "re-download the official CIFAR-100 python version" in message
    assert "\n" not in message and isinstance(err.value, BadInput)
    assert not marker.exists()


def test_official_globals_are_allowed(tmp_path: Path, cifar_factory: Callable[..., dict]) -> None:
    written = cifar_factory(tmp_path, num_classes=5)
    base = tmp_path / "cifar-100-python"
    # as Python 2 with numpy 1 wrote them: numpy 2 names _reconstruct under numpy._core
    for name in ("train", "test"):
        path = base / name
        path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
        assert _globals(path) == {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    assert _globals(base / "meta") == set()
    assert _globals(base / "train") <= ALLOWED_GLOBALS
    source = read_cifar100(tmp_path)
    assert source.class_names == tuple(f"fine_{i:02d}" for i in range(5))
    np.testing.assert_array_equal(source.train.class_ids, written["train_labels"])
    decoded = np.asarray(Image.open(io.BytesIO(source.train.read(3))))
    expected = written["train_data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(decoded, expected)


def test_python3_bytes_global_is_refused(
    tmp_path: Path, cifar_factory: Callable[..., dict]
) -> None:
    cifar_factory(tmp_path, num_classes=5)
    meta = tmp_path / "cifar-100-python" / "meta"
    payload = pickle.loads(meta.read_bytes(), encoding="bytes")  # our own file, just written
    meta.write_bytes(pickle.dumps(payload, protocol=2))  # Python 3 names _codecs.encode for bytes
    with pytest.raises(DataError, match=r"meta refers to _codecs\.encode, which no official"):
        read_cifar100(tmp_path)
