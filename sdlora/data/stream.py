"""Stream prepared Parquet task splits: row group by row group, decoded, transformed, sharded.

:class:`ParquetStream` is a ``torch.utils.data.IterableDataset`` over one or more Parquet files
written by the prepare stage. It never holds more than one row group per reader in memory, so an
ImageNet-R-sized task streams in a few tens of MB. It is the only way images reach a model:
pre-training, ``sdlora run`` and the pipeline's stages all read prepared splits through it.

Epoch order: the row groups are put in one order (shuffled with ``(seed, epoch)`` when
``shuffle``), the rows of each group permuted with ``(seed, epoch, group)`` (identically on every
reader), and the rows concatenated: positions ``0 .. N-1``. With ``mix_groups=k`` the rows of
every ``k`` consecutive groups of that order are permuted together instead (a reader then holds
``k`` groups at a time); ``None``: all of them, one shuffle of every row (joint training over
several tasks' files, whose groups each hold one task's classes: every batch mixes tasks).

Sharding over readers (the ``world_size`` distributed ranks, times the DataLoader workers of
each):

- ``batch_size=B`` (training): global batch ``i`` is positions ``[i B, (i + 1) B)``; rank ``r``
  takes its contiguous :func:`shard_bounds` part of every global batch, and DataLoader worker
  ``w`` of ``k`` the batches with ``i % k == w``. So the global batches are those of one
  process whatever the world size (DDP equals one process), and with a DataLoader batch of
  ``B // world_size`` each rank's batches line up with the global ones.
- ``batch_size=None`` (evaluation): reader ``s = rank * k + w`` of ``S = world_size * k`` takes
  the contiguous positions ``[s N // S, (s + 1) N // S)``.

Either way every row is read exactly once per epoch across all readers, and a reader decodes
only its own rows. Call :meth:`ParquetStream.set_epoch` before each epoch (as with
``DistributedSampler``); the epoch lives in shared memory, so persistent DataLoader workers
(:func:`make_loader`) follow it.

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
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.transforms import v2

from sdlora.data.prepare import PreparedLike, open_prepared
from sdlora.data.source import DataError


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
    a process group is initialised, else 0 / 1. ``batch_size``: the global batch the epoch is
    cut into (see the module docstring); None shards contiguously.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        shuffle: bool = False,
        seed: int | Sequence[int] = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        return_path: bool = False,
        mix_groups: int | None = 1,
    ) -> None:
        super().__init__()
        if mix_groups is not None and mix_groups < 1:
            raise ValueError(f"mix_groups must be >= 1 or None (all), got {mix_groups}")
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
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.files = [str(f) for f in files]
        self.transform = transform
        self.shuffle = shuffle
        self.seed = [seed] if isinstance(seed, int) else list(seed)
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.return_path = return_path
        self.mix_groups = mix_groups
        # in shared memory, so that persistent DataLoader workers see set_epoch's value
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # (file index, row group index, rows) for every row group, in file order
        self.groups: list[tuple[int, int, int]] = []
        for fi, f in enumerate(self.files):
            meta = _metadata(f)
            self.groups += [(fi, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.num_rows = sum(n for _, _, n in self.groups)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (same on every rank and worker, persistent ones too)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        """Samples this rank yields per epoch, over all its DataLoader workers."""
        return int(sum(b - a for a, b in self._ranges(0, 1)))

    def num_batches(self) -> int:
        """Global batches per epoch (every rank takes part in each; 1 without ``batch_size``)."""
        return -(-self.num_rows // self.batch_size) if self.batch_size else 1

    def batch_rows(self, i: int) -> int:
        """Rows of global batch ``i`` over all ranks (the last one may be short)."""
        if self.batch_size is None:
            return self.num_rows
        return max(0, min(self.batch_size, self.num_rows - i * self.batch_size))

    def _rng(self, *extra: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, self.epoch, *extra])

    def _group_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.groups)))
        return self._rng().permutation(len(self.groups)).tolist()

    def _ranges(self, worker: int, workers: int) -> list[tuple[int, int]]:
        """The epoch positions ``[a, b)`` this rank's ``worker`` (of ``workers``) reads."""
        n = self.num_rows
        if self.batch_size is None:
            return [shard_bounds(n, self.rank * workers + worker, self.world_size * workers)]
        out = []
        for i, start in enumerate(range(0, n, self.batch_size)):
            if i % workers == worker:
                lo, hi = shard_bounds(self.batch_rows(i), self.rank, self.world_size)
                if lo < hi:
                    out.append((start + lo, start + hi))
        return out

    def plan(self, worker: int = 0, workers: int = 1) -> list[tuple[tuple[int, ...], np.ndarray]]:
        """``(group indices, rows)`` this reader reads this epoch, in epoch order.

        ``group indices``: one group, or ``mix_groups`` read together; rows index their rows
        concatenated in that order, already in the epoch's order.
        """
        mine = np.zeros(self.num_rows, dtype=bool)
        for a, b in self._ranges(worker, workers):
            mine[a:b] = True
        order = self._group_order()
        k = (self.mix_groups or len(order)) if self.shuffle else 1
        out, offset = [], 0
        for window in (tuple(order[i : i + k]) for i in range(0, len(order), k)):
            n = sum(self.groups[g][2] for g in window)
            picked = np.flatnonzero(mine[offset : offset + n])
            if picked.size:
                rows = self._rng(*window).permutation(n) if self.shuffle else np.arange(n)
                out.append((window, rows[picked]))
            offset += n
        return out

    def __iter__(self) -> Iterator[Any]:
        """Yield this reader's samples of the epoch (see the module docstring for the sharding)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        columns = ["image", "label"] + (["path"] if self.return_path else [])
        handles: dict[int, pq.ParquetFile] = {}
        for window, rows in self.plan(worker, workers):
            parts = []
            for g in window:
                fi, rg, _ = self.groups[g]
                if fi not in handles:
                    handles[fi] = pq.ParquetFile(self.files[fi])
                try:
                    parts.append(handles[fi].read_row_group(rg, columns=columns))
                except (OSError, pa.ArrowException) as err:
                    raise DataError(_unreadable(self.files[fi], f"row group {rg}", err)) from err
            table = (parts[0] if len(parts) == 1 else pa.concat_tables(parts)).take(rows)
            source = np.repeat(window, [self.groups[g][2] for g in window])[rows]  # row -> group
            images = table.column("image").to_pylist()
            labels = table.column("label").to_pylist()
            paths = table.column("path").to_pylist() if self.return_path else None
            del table
            for i, data in enumerate(images):
                try:
                    image = decode(data)
                except (OSError, ValueError) as err:  # PIL: truncated or not an image
                    fi, rg, _ = self.groups[source[i]]
                    where = f"row group {rg}, image {i}"
                    raise DataError(_unreadable(self.files[fi], where, err)) from err
                sample = self.transform(image) if self.transform is not None else image
                if paths is not None:
                    yield sample, labels[i], paths[i]
                else:
                    yield sample, labels[i]


def make_loader(
    stream: ParquetStream, batch_size: int, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """The DataLoader every entry point reads ``stream`` through (``data.workers``).

    ``workers`` > 0 decode and transform in that many processes, kept alive across epochs
    (re-iterate the same loader after :meth:`ParquetStream.set_epoch`); each reads its own
    global batches, so what a rank gets is the same for any worker count. Batches are pinned
    for a CUDA ``device`` (copies overlap compute with ``non_blocking=True``).
    """
    return torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


def _unreadable(path: str | Path, where: str, err: BaseException) -> str:
    return (
        f"{path}: {where} cannot be read ({type(err).__name__}: {err}); the file is damaged: "
        "prepare the splits again (`dvc repro -f prepare`)"
    )


def _metadata(path: str) -> pq.FileMetaData:
    """A Parquet file's metadata; a clear error naming the file when it is not Parquet."""
    try:
        return pq.ParquetFile(path).metadata
    except FileNotFoundError:
        raise DataError(f"{path}: prepared split not found; run the prepare stage again") from None
    except (OSError, pa.ArrowException) as err:
        raise DataError(
            f"{path}: not a readable Parquet split ({err}); run the prepare stage again"
        ) from None


def task_files(prepared: PreparedLike, tasks: int | Sequence[int], split: str) -> list[Path]:
    """Parquet files of ``split`` ('train' or 'test') for one task or several, from the manifest."""
    return open_prepared(prepared).files(
        list(tasks) if not isinstance(tasks, int) else tasks, split
    )


def open_task(
    prepared: PreparedLike,
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
