"""Stream prepared Parquet task splits: row group by row group, decoded, transformed, sharded.

:class:`ParquetStream` is a ``torch.utils.data.IterableDataset`` over one or more Parquet files
written by the prepare stage. It never holds more than one row group per reader in memory, so an
ImageNet-R-sized task streams in a few tens of MB.

Sharding: the readers of an epoch are the ``world_size`` distributed ranks times the DataLoader
workers of each (``num_workers``, 1 without workers); reader ``s = rank * num_workers + worker``
of ``S = world_size * num_workers``. The epoch's row groups are put in one order (shuffled with
``(seed, epoch)`` when ``shuffle``, identically on every reader), their rows concatenated, and
reader ``s`` takes the contiguous rows ``[s * N // S, (s + 1) * N // S)``. So every row is read
exactly once per epoch across all readers, a reader touches only the row groups overlapping its
range, and the readers' shares differ by at most one row. A rank's share,
``(rank + 1) * N // world_size - rank * N // world_size``, does not depend on ``num_workers``;
it is ``len(stream)``. With ``shuffle``, rows are also permuted inside every row group the
reader loads (train files are already shuffled across row groups by the prepare stage).

Call :meth:`ParquetStream.set_epoch` before each epoch (as with ``DistributedSampler``); with
``persistent_workers=True`` the workers keep the epoch they were started with.

Transforms (SPEC §6, as the public code): train ``RandomResizedCrop(size, scale=(0.05, 1),
ratio=(3/4, 4/3))`` + horizontal flip; test ``Resize(int(size * 256 / 224), bicubic)`` +
``CenterCrop(size)``; then float pixels in [0, 1], normalised only if a mean/std is given
(``input_norm: none`` passes none).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.transforms import v2

from sdlora.data.prepare import read_manifest


def build_transform(
    train: bool,
    size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = True,
) -> v2.Compose:
    """PIL image -> float tensor (3, size, size): the train or test transform of SPEC §6.

    ``augment=False`` gives training images the test transform (for data such as letters,
    where a flip changes the class and a 5% crop of a 16 px image leaves nothing).
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (no normalisation)")
    if train and augment:
        steps: list[Any] = [
            v2.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    else:
        steps = [
            v2.Resize(int(size * 256 / 224), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(size),
        ]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def decode(data: bytes) -> Image.Image:
    """Encoded bytes (JPEG, PNG, ...) -> RGB PIL image (grey images are replicated)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_bounds(num_rows: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of shard ``shard`` out of ``num_shards`` over ``num_rows``."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must lie in 0..{num_shards - 1}, got {shard}")
    return shard * num_rows // num_shards, (shard + 1) * num_rows // num_shards


class ParquetStream(IterableDataset):
    """Samples ``(image, label)`` (``(image, label, path)`` with ``return_path``) of Parquet files.

    ``transform`` maps a decoded RGB PIL image to what is yielded (e.g. :func:`build_transform`);
    ``None`` yields the PIL image. ``rank`` / ``world_size`` default to torch.distributed's when
    a process group is initialised, else 0 / 1.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        return_path: bool = False,
    ) -> None:
        super().__init__()
        if not files:
            raise ValueError("give at least one Parquet file")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        self.files = [str(f) for f in files]
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.return_path = return_path
        self.epoch = 0
        # (file index, row group index, rows) for every row group, in file order
        self.groups: list[tuple[int, int, int]] = []
        for fi, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            self.groups += [(fi, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.num_rows = sum(n for _, _, n in self.groups)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (same on every rank and worker)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch, over all its DataLoader workers."""
        start, stop = shard_bounds(self.num_rows, self.rank, self.world_size)
        return stop - start

    def _group_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.groups)))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.groups)).tolist()

    def plan(self, shard: int, num_shards: int) -> list[tuple[int, int, int]]:
        """``(group index, first row, stop row)`` slices shard ``shard`` reads this epoch."""
        start, stop = shard_bounds(self.num_rows, shard, num_shards)
        slices = []
        offset = 0
        for g in self._group_order():
            n = self.groups[g][2]
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                slices.append((g, lo - offset, hi - offset))
            offset += n
            if offset >= stop:
                break
        return slices

    def __iter__(self) -> Iterator[Any]:
        """Yield this reader's samples of the epoch (see the module docstring for the sharding)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shard, num_shards = self.rank * workers + worker, self.world_size * workers
        columns = ["image", "label"] + (["path"] if self.return_path else [])
        handles: dict[int, pq.ParquetFile] = {}
        for g, lo, hi in self.plan(shard, num_shards):
            fi, rg, _ = self.groups[g]
            if fi not in handles:
                handles[fi] = pq.ParquetFile(self.files[fi])
            table = handles[fi].read_row_group(rg, columns=columns).slice(lo, hi - lo)
            images = table.column("image").to_pylist()
            labels = table.column("label").to_pylist()
            paths = table.column("path").to_pylist() if self.return_path else None
            del table
            rows = range(len(images))
            if self.shuffle:
                rows = np.random.default_rng([self.seed, self.epoch, g]).permutation(len(images))
            for i in rows:
                image = decode(images[i])
                sample = self.transform(image) if self.transform is not None else image
                if paths is not None:
                    yield sample, labels[i], paths[i]
                else:
                    yield sample, labels[i]


def task_files(prepared: str | Path, tasks: int | Sequence[int], split: str) -> list[Path]:
    """Parquet files of ``split`` ('train' or 'test') for one task or several, from the manifest."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    manifest = read_manifest(prepared)
    wanted = [tasks] if isinstance(tasks, int) else list(tasks)
    entries = manifest["tasks"]
    bad = [t for t in wanted if not 0 <= t < len(entries)]
    if bad:
        raise ValueError(f"tasks {bad} not in {prepared} (it has tasks 0..{len(entries) - 1})")
    return [Path(prepared) / entries[t][split]["file"] for t in wanted]


def open_task(
    prepared: str | Path,
    tasks: int | Sequence[int],
    split: str,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = True,
    **kwargs: Any,
) -> ParquetStream:
    """A stream over the prepared ``split`` of ``tasks`` with the SPEC §6 transform.

    Train streams shuffle by default and augment unless ``augment=False``; ``kwargs`` go to
    :class:`ParquetStream` (``seed``, ``rank``, ``world_size``, ``shuffle``, ``return_path``).
    """
    kwargs.setdefault("shuffle", split == "train")
    transform = build_transform(split == "train", image_size, mean, std, augment)
    return ParquetStream(task_files(prepared, tasks, split), transform, **kwargs)
