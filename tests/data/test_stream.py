"""The streaming reader: each sample once per epoch across ranks and workers; SPEC §6 transforms."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdlora.config import DataConfig
from sdlora.data.prepare import prepare
from sdlora.data.stream import (
    ParquetStream,
    build_transform,
    make_loader,
    open_task,
    shard_bounds,
    task_files,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits in 2 tasks of 5 classes, 37-row row groups (uneven, so shards cut through groups)."""
    out = tmp_path_factory.mktemp("stream") / "prepared"
    prepare(DataConfig(dataset="digits", init_cls=5, increment=5, row_group_size=37), 0, out)
    return out


def _all_paths(files: list[Path]) -> list[str]:
    return [p for f in files for p in pq.read_table(f, columns=["path"]).column("path").to_pylist()]


def _first_pixel(image: Image.Image) -> int:
    return 0  # cheap transform: the test is about which rows are read, not pixels


def _collect(stream: ParquetStream) -> list[str]:
    return [path for _, _, path in stream]


@pytest.mark.parametrize("mix_groups", [1, 3, None])
@pytest.mark.parametrize("batch_size", [None, 10])
@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_read_every_sample_once(
    prepared: Path, shuffle: bool, batch_size: int | None, mix_groups: int | None
) -> None:
    files = task_files(prepared, [0, 1], "train")
    expected = Counter(_all_paths(files))
    for epoch in range(2):
        seen: Counter[str] = Counter()
        sizes = []
        for rank in range(2):
            stream = ParquetStream(
                files,
                _first_pixel,
                shuffle=shuffle,
                seed=3,
                rank=rank,
                world_size=2,
                batch_size=batch_size,
                return_path=True,
                mix_groups=mix_groups,
            )
            stream.set_epoch(epoch)
            got = _collect(stream)
            assert len(got) == len(stream)
            sizes.append(len(got))
            seen.update(got)
        assert seen == expected  # each exactly once
        assert abs(sizes[0] - sizes[1]) <= 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_global_batches_do_not_depend_on_the_world_size(prepared: Path, world_size: int) -> None:
    """Rank parts of global batch i, in rank order, are batch i of one process (DDP = 1 process)."""
    files = task_files(prepared, 0, "train")
    batch = 36  # divides over 2 and 3 ranks

    def batches(rank: int, world: int) -> list[list[str]]:
        stream = ParquetStream(
            files, _first_pixel, shuffle=True, seed=5, rank=rank, world_size=world,
            batch_size=batch, return_path=True,
        )  # fmt: skip
        stream.set_epoch(1)
        loader = DataLoader(stream, batch_size=batch // world)
        return [list(paths) for _, _, paths in loader]

    one = batches(0, 1)
    parts = [batches(r, world_size) for r in range(world_size)]
    assert len(one) == -(-ParquetStream(files).num_rows // batch)
    for i, whole in enumerate(one):
        assert [p for rank in parts for p in (rank[i] if i < len(rank) else [])] == whole


def test_shuffle_changes_with_epoch_not_with_rank(prepared: Path) -> None:
    files = task_files(prepared, 0, "train")
    orders = []
    for epoch in (0, 1):
        stream = ParquetStream(files, _first_pixel, shuffle=True, seed=0, return_path=True)
        stream.set_epoch(epoch)
        orders.append(_collect(stream))
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])
    plain = _collect(ParquetStream(files, _first_pixel, return_path=True))
    assert plain == _all_paths(files)  # no shuffle: file order


@pytest.mark.parametrize("batch_size", [None, 8])
@pytest.mark.parametrize("world_size", [1, 2])
def test_dataloader_workers_read_every_sample_once(
    prepared: Path, world_size: int, batch_size: int | None
) -> None:
    files = task_files(prepared, 1, "test")
    expected = Counter(_all_paths(files))
    seen: Counter[str] = Counter()
    for rank in range(world_size):
        stream = ParquetStream(
            files,
            _first_pixel,
            shuffle=True,
            seed=1,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            return_path=True,
        )
        loader = DataLoader(stream, batch_size=8 // world_size, num_workers=2)
        for _, _, paths in loader:
            seen.update(paths)
    assert seen == expected


def test_mixing_all_groups_puts_both_tasks_in_every_batch(prepared: Path) -> None:
    """Joint training (``mix_groups=None``): one shuffle over both tasks' files, so each batch
    holds classes of both; per-group shuffling (the default) leaves most batches one task's."""
    files = task_files(prepared, [0, 1], "train")

    def tasks_per_batch(mix: int | None) -> list[int]:
        stream = ParquetStream(
            files, _first_pixel, shuffle=True, seed=1, batch_size=30, mix_groups=mix
        )
        loader = DataLoader(stream, batch_size=30)
        return [len({int(c) // 5 for c in y}) for _, y in loader]

    assert set(tasks_per_batch(None)) == {2}
    assert tasks_per_batch(1).count(1) > len(tasks_per_batch(1)) // 2
    with pytest.raises(ValueError, match="mix_groups must be >= 1"):
        ParquetStream(files, mix_groups=0)


def test_plan_reads_only_overlapping_groups(prepared: Path) -> None:
    files = task_files(prepared, 0, "train")
    stream = ParquetStream(files, shuffle=False, rank=1, world_size=4)
    sizes = [n for _, _, n in stream.groups]
    assert sizes[:-1] == [37] * (len(sizes) - 1)
    plan = stream.plan()
    start, stop = shard_bounds(stream.num_rows, 1, 4)
    assert sum(rows.size for _, rows in plan) == stop - start
    assert [w for w, _ in plan] == [(g,) for g in range(start // 37, (stop - 1) // 37 + 1)]


def _share(n: int, shard: int, num_shards: int) -> int:
    start, stop = shard_bounds(n, shard, num_shards)
    return stop - start


def test_rank_share_does_not_depend_on_workers() -> None:
    for n in (0, 1, 7, 100, 101):
        for world in (1, 2, 3, 8):
            ranks = [_share(n, r, world) for r in range(world)]
            assert sum(ranks) == n and max(ranks) - min(ranks) <= 1
            for workers in (2, 4):
                split = [
                    sum(_share(n, r * workers + w, world * workers) for w in range(workers))
                    for r in range(world)
                ]
                assert split == ranks


def test_stream_arguments_are_checked(prepared: Path) -> None:
    files = task_files(prepared, 0, "test")
    with pytest.raises(ValueError, match="both rank and world_size"):
        ParquetStream(files, rank=0)
    with pytest.raises(ValueError, match="rank < world_size"):
        ParquetStream(files, rank=2, world_size=2)
    with pytest.raises(ValueError, match="tasks \\[5\\]"):
        task_files(prepared, 5, "test")
    with pytest.raises(ValueError, match="split"):
        task_files(prepared, 0, "val")


def test_open_task_yields_normalised_tensors(prepared: Path) -> None:
    stream = open_task(prepared, 1, "train", image_size=24, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = DataLoader(stream, batch_size=64)
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 24, 24) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(5, 10))
    assert images.min() >= -2.0 - 1e-6 and images.max() <= 2.0 + 1e-6 and images.min() < -1.0
    assert torch.equal(images[:, 0], images[:, 2])  # grey digits replicated to RGB


def test_test_transform_is_resize_bicubic_then_centre_crop() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    got = build_transform(train=False, size=224)(image)
    ref = image.resize((341, 256), Image.Resampling.BICUBIC)  # shorter side 256 = 224 * 256 / 224
    left, top = (341 - 224) // 2, (256 - 224) // 2
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    assert got.shape == (3, 224, 224) and got.min() >= 0.0 and got.max() <= 1.0
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), ref, atol=1 / 255 + 1e-6)


def test_train_transform_is_random_crop_and_flip() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    transform = build_transform(train=True, size=32)
    torch.manual_seed(0)
    a, b = transform(image), transform(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    crop = transform.transforms[0]
    assert crop.scale == (0.05, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert transform.transforms[1].p == 0.5
    with pytest.raises(ValueError, match="both mean and std"):
        build_transform(train=True, size=32, mean=(0.5,) * 3)
    plain = build_transform(train=True, size=32, augment=False)  # data.augment: none
    assert torch.equal(plain(image), build_transform(train=False, size=32)(image))


@pytest.mark.parametrize("workers", [0, 2])
def test_persistent_workers_follow_set_epoch(prepared: Path, workers: int) -> None:
    """make_loader's workers live across epochs, yet each epoch is that epoch's shuffle, in
    the batches one process reads, every sample once."""
    files = task_files(prepared, 0, "train")

    def epochs(workers: int) -> list[list[str]]:
        stream = ParquetStream(
            files, _first_pixel, shuffle=True, seed=2, batch_size=10, return_path=True
        )
        loader = make_loader(stream, 10, workers, torch.device("cpu"))
        out = []
        for epoch in range(3):
            stream.set_epoch(epoch)
            out.append([p for _, _, paths in loader for p in paths])
        return out

    got, reference = epochs(workers), epochs(0)
    assert got == reference  # the same order for any worker count
    assert got[0] != got[1] and sorted(got[0]) == sorted(got[2]) == sorted(_all_paths(files))
