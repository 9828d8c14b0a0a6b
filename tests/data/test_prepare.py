"""The prepare stage: task splits in Parquet, manifest, content hash, errors, atomic output."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import sdlora.data.source as source_module
from sdlora.config import DataConfig
from sdlora.data import class_order, load_digits
from sdlora.data.prepare import (
    PARQUET_SCHEMA,
    SCHEMA_VERSION,
    prepare,
    prepare_task,
    read_manifest,
)
from sdlora.data.source import CorruptImageError, DataError


def _rows(path: Path) -> dict[str, list[Any]]:
    return pq.read_table(path).to_pydict()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_digits_parquet_matches_in_memory_splits(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="digits", init_cls=2, increment=2)
    manifest = prepare(cfg, seed=1993, out=tmp_path / "out")
    train, test = load_digits()
    order = class_order(10, 1993)  # == the legacy permutation (test_tasks)
    assert manifest["class_order"] == order.tolist()
    assert manifest["totals"] == {"train": len(train), "test": len(test)}
    for t, entry in enumerate(manifest["tasks"]):
        assert entry["classes"] == order[2 * t : 2 * t + 2].tolist()
        for split, data in (("train", train), ("test", test)):
            rows = _rows(tmp_path / "out" / entry[split]["file"])
            assert entry[split]["rows"] == len(rows["label"])
            assert sorted(set(rows["label"])) == [2 * t, 2 * t + 1]
            for image, label, cid, name, path in zip(*rows.values(), strict=True):
                index = int(path.rsplit("/", 1)[1])
                assert path.startswith(f"digits/{split}/")
                assert cid == data.labels[index] == order[label] and name == str(cid)
                decoded = np.asarray(Image.open(io.BytesIO(image)))
                np.testing.assert_array_equal(decoded, data.images[index])  # lossless
            expected = np.isin(data.labels, entry["classes"]).sum()
            assert len(rows["label"]) == expected


def test_cifar_tasks_counts_order_and_disjoint_classes(
    tmp_path: Path, cifar_factory: Callable[..., dict]
) -> None:
    cifar_factory(tmp_path / "src", num_classes=100, train_per_class=2, test_per_class=1)
    cfg = DataConfig(dataset="cifar100", root=str(tmp_path / "src"), init_cls=10, increment=10)
    manifest = prepare(cfg, seed=1993, out=tmp_path / "out")
    order = class_order(100, 1993)
    assert manifest["class_order"] == order.tolist() and len(manifest["tasks"]) == 10
    seen: set[int] = set()
    for t, entry in enumerate(manifest["tasks"]):
        assert entry["label_offset"] == 10 * t
        assert entry["train"]["rows"] == 20 and entry["test"]["rows"] == 10
        ids = set(_rows(tmp_path / "out" / entry["train"]["file"])["class_id"])
        assert ids == set(entry["classes"]) == set(order[10 * t : 10 * t + 10].tolist())
        assert seen.isdisjoint(ids)
        seen |= ids
        assert all(manifest["class_to_task"][f"fine_{c:02d}"] == t for c in ids)
    assert seen == set(range(100))


def test_remainder_task_and_schema(tmp_path: Path, folder_factory: Callable[..., list]) -> None:
    files = folder_factory(tmp_path / "src", classes=[f"class_{i}" for i in range(10)])
    cfg = DataConfig(
        dataset="imagefolder", root=str(tmp_path / "src"), init_cls=3, increment=4, row_group_size=3
    )
    manifest = prepare(cfg, seed=0, out=tmp_path / "out")
    assert [e["num_classes"] for e in manifest["tasks"]] == [3, 4, 3]
    assert manifest["schema_version"] == SCHEMA_VERSION
    task0 = tmp_path / "out" / "task_00" / "train.parquet"
    meta = pq.ParquetFile(task0).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sizes == [3, 3, 3, 3] and manifest["tasks"][0]["train"]["row_groups"] == 4
    assert pq.read_schema(task0).remove_metadata() == PARQUET_SCHEMA.remove_metadata()
    rows = _rows(task0)
    assert rows["class_id"] != sorted(rows["class_id"])  # train rows mixed across row groups
    test_rows = _rows(tmp_path / "out" / "task_00" / "test.parquet")
    assert test_rows["path"] == sorted(test_rows["path"])  # test rows keep the source order
    by_path = {f.relative_to(tmp_path / "src").as_posix(): f for f in files}
    for image, path in zip(rows["image"], rows["path"], strict=True):
        assert image == by_path[path].read_bytes()  # the JPEG bytes as stored on disk


def test_content_hash_stable_and_sensitive(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    files = folder_factory(tmp_path / "src")
    cfg = DataConfig(dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=2, increment=2)
    first = prepare(cfg, seed=5, out=tmp_path / "a")
    second = prepare(cfg, seed=5, out=tmp_path / "b")
    assert first["content_hash"] == second["content_hash"]
    for t in range(len(first["tasks"])):
        assert (tmp_path / f"a/task_{t:02d}/task.json").read_bytes() == (
            tmp_path / f"b/task_{t:02d}/task.json"
        ).read_bytes()
    shutil.copytree(tmp_path / "src", tmp_path / "moved")  # where the data lives is not content
    moved = prepare(cfg.model_copy(update={"root": str(tmp_path / "moved")}), 5, tmp_path / "c")
    assert moved["content_hash"] == first["content_hash"]
    other = tmp_path / "other.jpg"
    Image.new("RGB", (12, 10), (200, 10, 10)).save(other, format="JPEG")
    files[7].write_bytes(other.read_bytes())
    changed = prepare(cfg, seed=5, out=tmp_path / "d")
    assert changed["content_hash"] != first["content_hash"]
    assert prepare(cfg, seed=6, out=tmp_path / "e")["content_hash"] != first["content_hash"]


def test_corrupt_image_fails_and_leaves_nothing(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    files = folder_factory(tmp_path / "src")
    files[2].write_bytes(files[2].read_bytes()[:40])
    cfg = DataConfig(dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=3, increment=3)
    with pytest.raises(CorruptImageError) as err:
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert str(files[2]) in str(err.value)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_skip_corrupt_counts_in_manifest(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    files = folder_factory(tmp_path / "src", train_per_class=4, test_per_class=1)
    files[1].write_bytes(b"")
    cfg = DataConfig(
        dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=3, increment=3, skip_corrupt=True
    )
    manifest = prepare(cfg, seed=0, out=tmp_path / "out")
    rel = files[1].relative_to(tmp_path / "src").as_posix()
    assert manifest["skipped"] == {
        "count": 1,
        "items": [{"split": "train", "path": rel, "reason": "empty file"}],
    }
    assert manifest["totals"] == {"train": 23, "test": 6}
    all_paths = [
        p for e in manifest["tasks"] for p in _rows(tmp_path / "out" / e["train"]["file"])["path"]
    ]
    assert rel not in all_paths and len(all_paths) == 23


def test_skipping_a_class_s_only_test_image_is_an_error(
    tmp_path: Path, folder_factory: Callable[..., list], wnids: tuple[str, ...]
) -> None:
    folder_factory(tmp_path / "src", train_per_class=2, test_per_class=1)
    bad = tmp_path / "src" / "test" / wnids[4] / "graffiti_2.jpg"
    assert bad.is_file()
    bad.write_bytes(b"garbage")
    cfg = DataConfig(
        dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=3, increment=3, skip_corrupt=True
    )
    with pytest.raises(DataError, match=rf"no test image after skipping 1 corrupt.*'{wnids[4]}'"):
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_class_without_test_image(
    tmp_path: Path, folder_factory: Callable[..., list], wnids: tuple[str, ...]
) -> None:
    folder_factory(tmp_path / "src")
    for f in (tmp_path / "src" / "test" / wnids[1]).iterdir():
        f.unlink()
    cfg = DataConfig(dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=3, increment=3)
    with pytest.raises(DataError, match=rf"1 class\(es\) with no test image: \['{wnids[1]}'\]"):
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_train_test_class_sets_differ_leaves_nothing(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    folder_factory(tmp_path / "src", classes=["cat", "dog"])
    (tmp_path / "src" / "test" / "eel").mkdir()
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "src"), init_cls=1, increment=1)
    with pytest.raises(DataError, match=r"class sets differ.*only in test/ \['eel'\]"):
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_init_cls_that_does_not_fit(tmp_path: Path, folder_factory: Callable[..., list]) -> None:
    folder_factory(tmp_path / "src")
    cfg = DataConfig(dataset="imagenet-r", root=str(tmp_path / "src"), init_cls=7, increment=2)
    with pytest.raises(
        DataError, match=r"data.init_cls = 7 does not fit dataset 'imagenet-r'.*6 classes"
    ):
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_missing_root(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="domainnet", root=str(tmp_path / "absent"))
    with pytest.raises(
        DataError, match=r"'domainnet' at .*absent: the folder does not exist; expected"
    ):
        prepare(cfg, seed=0, out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_domainnet_missing_image_skipped(
    tmp_path: Path, domainnet_factory: Callable[..., None]
) -> None:
    domainnet_factory(tmp_path / "src", domains=("clipart", "sketch"))
    (tmp_path / "src" / "sketch" / "ant" / "sketch_006_000001.jpg").unlink()
    cfg = DataConfig(
        dataset="domainnet",
        root=str(tmp_path / "src"),
        domains=["clipart", "sketch"],
        init_cls=2,
        increment=2,
    )
    with pytest.raises(CorruptImageError, match=r"sketch_006_000001.jpg: cannot read"):
        prepare(cfg, seed=0, out=tmp_path / "out")
    manifest = prepare(cfg.model_copy(update={"skip_corrupt": True}), 0, tmp_path / "out")
    assert manifest["skipped"]["count"] == 1 and manifest["totals"] == {"train": 23, "test": 12}
    ant = manifest["class_names"].index("ant")
    expected = [12 - (ant in e["classes"]) for e in manifest["tasks"]]
    assert [e["train"]["rows"] + e["test"]["rows"] for e in manifest["tasks"]] == expected
    assert manifest["params"]["domains"] == ["clipart", "sketch"]


def test_existing_output_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = DataConfig(dataset="digits", init_cls=5, increment=5)
    prepare(cfg, seed=0, out=out)
    prepare(cfg.model_copy(update={"init_cls": 10}), seed=1, out=out)
    manifest = read_manifest(out)
    assert manifest["params"]["seed"] == 1 and len(manifest["tasks"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["task_00"]
    assert _leftovers(tmp_path) == []


def test_interrupt_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    cfg = DataConfig(dataset="digits", init_cls=5, increment=5)
    before = prepare(cfg, seed=0, out=out)
    calls = {"n": 0}
    encode = source_module.encode_png

    def interrupted(image: np.ndarray) -> bytes:
        calls["n"] += 1
        if calls["n"] == 700:
            raise KeyboardInterrupt
        return encode(image)

    monkeypatch.setattr(source_module, "encode_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, seed=3, out=out)
    assert read_manifest(out) == before
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        prepare(DataConfig(dataset="digits"), seed=0, out=tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_read_manifest_checks_version(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no task_00 folder"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"schema_version": 2}')
    with pytest.raises(DataError, match="prepared by an older sdlora"):
        read_manifest(tmp_path)
    (tmp_path / "task_00").mkdir()
    (tmp_path / "task_00" / "task.json").write_text('{"schema_version": 0}')
    with pytest.raises(DataError, match=r"schema_version 0, .* `dvc repro -f prepare@0`"):
        read_manifest(tmp_path)


def test_read_manifest_refuses_a_task_file_without_what_readers_use(tmp_path: Path) -> None:
    """A hand-edited or foreign task.json stops with one DataError naming the missing key."""
    import json

    out = tmp_path / "out"
    prepare(DataConfig(dataset="digits", init_cls=5, increment=5), seed=0, out=out)
    path = out / "task_01" / "task.json"
    doc = json.loads(path.read_text())
    for bad, pattern in [
        ([doc], "a JSON list, not a task's description"),
        ({k: v for k, v in doc.items() if k != "task"}, "no 'task' in the file"),
        ({**doc, "task": {**doc["task"], "train": None}}, "its 'train' is not an object"),
        ({**doc, "task": {"task": 1}}, "no 'classes', .* in its 'task'"),
        ({**doc, "task": {**doc["task"], "task": 0}}, "describes task 0, not task 1"),
        ({**doc, "task": {**doc["task"], "label_offset": 4}}, "labels start at 4, but tasks 0..0"),
        ({**doc, "dataset": "glyphs"}, "other data or params than task 0 .dataset differ"),
    ]:  # fmt: skip
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=pattern):
            read_manifest(out)
    shutil.rmtree(out / "task_01")
    assert len(read_manifest(out)["tasks"]) == 1  # what is there
    with pytest.raises(DataError, match=r"task_01/task.json not found: task 1 is not prepared"):
        read_manifest(out, num_tasks=2)


def test_tasks_prepared_one_at_a_time_equal_the_whole(tmp_path: Path) -> None:
    """prepare@k's folders are the whole prepare's, byte for byte; a later task added to
    data.tasks leaves an earlier task's folder as it was."""
    cfg = DataConfig(dataset="digits", tasks=[["3", "1"], ["9", "0", "5"]])
    whole = prepare(cfg, seed=2, out=tmp_path / "whole")
    for t in range(2):
        prepare_task(cfg, 2, t, tmp_path / "one" / f"task_{t:02d}")
    longer = cfg.model_copy(update={"tasks": [*cfg.tasks, ["7"]]})
    prepare_task(longer, 2, 2, tmp_path / "one" / "task_02")
    for t in range(2):
        for name in ("train.parquet", "test.parquet", "task.json"):
            a, b = (tmp_path / f / f"task_{t:02d}" / name for f in ("whole", "one"))
            assert a.read_bytes() == b.read_bytes(), (t, name)
    assert read_manifest(tmp_path / "one", 2)["content_hash"] == whole["content_hash"]
    three = read_manifest(tmp_path / "one")
    assert [e["label_offset"] for e in three["tasks"]] == [0, 2, 5]
    assert three["task_hashes"][:2] == whole["task_hashes"]
    with pytest.raises(DataError, match=r"task 2: dataset 'digits' makes tasks 0..1"):
        prepare_task(cfg, 2, 2, tmp_path / "two")


def test_damage_inside_a_split_is_refused_by_its_checksum(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    """The footer and the row count stay as they were: only the recorded SHA-256 tells."""
    from sdlora.data.prepare import open_prepared

    folder_factory(tmp_path / "src", classes=[f"class_{i}" for i in range(4)])
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "src"), init_cls=2, increment=2)
    prepare(cfg, seed=0, out=tmp_path / "out")
    prepared = open_prepared(tmp_path / "out")
    prepared.verify()
    split = tmp_path / "out" / "task_01" / "train.parquet"
    raw = bytearray(split.read_bytes())
    raw[200:600] = bytes(400)  # inside the data pages
    split.write_bytes(bytes(raw))
    pq.ParquetFile(split)  # still opens: footer intact
    prepared.verify([(0, "train"), (1, "test")])  # the other files are fine
    with pytest.raises(DataError, match=r"task_01/train\.parquet is not the file the prepare"):
        prepared.verify()


# ---- data.tasks: the tasks by class name (issue 20) -------------------------------------------


def test_tasks_named_in_the_seeded_order_prepare_the_same_bytes(tmp_path: Path) -> None:
    """data.tasks listing the seeded order by name gives byte-identical splits and the same
    content hash: the explicit list and init_cls/increment are one path."""
    seeded = DataConfig(dataset="digits", init_cls=4, increment=3)
    first = prepare(seeded, seed=7, out=tmp_path / "seeded")
    named = [entry["class_names"] for entry in first["tasks"]]
    order = [str(c) for c in class_order(10, 7)]  # digits' names are their labels
    assert named == [order[:4], order[4:7], order[7:]]
    listed = DataConfig(dataset="digits", tasks=named)
    second = prepare(listed, seed=7, out=tmp_path / "listed")  # the seed still shuffles rows
    assert second["content_hash"] == first["content_hash"]
    assert second["class_order"] == first["class_order"]
    assert second["class_to_task"] == first["class_to_task"]
    for a, b in zip(first["tasks"], second["tasks"], strict=True):
        for split in ("train", "test"):
            assert a[split] == b[split]  # file, rows, row groups, SHA-256
            path = a[split]["file"]
            assert (tmp_path / "seeded" / path).read_bytes() == (
                tmp_path / "listed" / path
            ).read_bytes()


def test_tasks_named_leave_out_the_classes_they_do_not_name(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="digits", tasks=[["3", "1"], ["9"]])
    manifest = prepare(cfg, seed=0, out=tmp_path / "out")
    assert manifest["class_order"] == [3, 1, 9]
    assert manifest["class_to_task"] == {"1": 0, "3": 0, "9": 1}
    assert [e["label_offset"] for e in manifest["tasks"]] == [0, 2]
    first, second = (_rows(tmp_path / "out" / e["test"]["file"]) for e in manifest["tasks"])
    assert set(zip(first["label"], first["class_name"], strict=True)) == {(0, "3"), (1, "1")}
    assert set(zip(second["label"], second["class_name"], strict=True)) == {(2, "9")}
    assert manifest["totals"]["test"] == len(first["label"]) + len(second["label"])


def test_a_task_naming_a_class_the_data_lacks_is_refused_with_the_closest(
    tmp_path: Path, folder_factory: Callable[..., list]
) -> None:
    with pytest.raises(DataError) as err:
        prepare(DataConfig(dataset="digits", tasks=[["1"], ["2", "11"]]), 0, tmp_path / "d")
    assert str(err.value) == (
        "data.tasks: class '11' (task 1) is not in dataset 'digits'; did you mean ['1']?"
    )
    assert not (tmp_path / "d").exists() and _leftovers(tmp_path) == []
