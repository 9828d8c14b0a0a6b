"""The prepare stage: any benchmark into per-task Parquet splits plus a manifest, atomically.

Output (``OUT`` is the stage's output folder)::

    OUT/manifest.json
    OUT/task_00/train.parquet   OUT/task_00/test.parquet
    OUT/task_01/...

Each Parquet file has the columns of :data:`PARQUET_SCHEMA`: the encoded image bytes exactly as
stored on disk (JPEG, PNG, ...; in-memory arrays as lossless PNG), the global label (the class's
position in the SPEC §1 order), the original class id and name, and the source path. Row groups
hold ``data.row_group_size`` rows, the unit the streaming reader loads (``sdlora.data.stream``).
Train rows are shuffled once (seeded) so that every row group mixes the task's classes; test
rows keep the source order.

Everything is written into a hidden temporary folder beside ``OUT`` and renamed onto ``OUT`` at
the end: an error or an interrupt leaves ``OUT`` as it was (absent, or the previous output) and
removes the temporary folder. A killed process (SIGKILL, power loss) can leave a
``.OUT.*.tmp`` folder behind, never a half-written ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from sdlora.config import DataConfig
from sdlora.data.benchmarks import named_tasks, open_source
from sdlora.data.source import CorruptImageError, DataError, Listing, Source
from sdlora.data.tasks import class_order, split_classes
from sdlora.files import atomic_directory as _atomic_directory
from sdlora.files import file_sha256

SCHEMA_VERSION = 2  # 2: each split's entry holds the file's SHA-256
MANIFEST = "manifest.json"
REPREPARE = "re-create the prepared splits (the pipeline: `dvc repro -f prepare`)"
SPLITS = ("train", "test")

PARQUET_SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_id", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
    ],
    metadata={b"sdlora.schema_version": str(SCHEMA_VERSION).encode()},
)
# Images are already compressed (JPEG/PNG): compressing them again costs read time for nothing.
COMPRESSION = {
    "image": "NONE",
    "label": "ZSTD",
    "class_id": "ZSTD",
    "class_name": "ZSTD",
    "path": "ZSTD",
}


def task_dir(task: int) -> str:
    """Folder name of a task inside the output: ``task_00``, ``task_01``, ..."""
    return f"task_{task:02d}"


def read_manifest(prepared: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder, checked for a schema version this code reads."""
    path = Path(prepared) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: is {prepared} the output of the prepare stage?"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: a JSON {type(manifest).__name__}, not a manifest; {REPREPARE}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version!r}, this sdlora reads {SCHEMA_VERSION}; "
            "run the prepare stage again"
        )
    _check_manifest(manifest, path)
    return manifest


MANIFEST_KEYS = ("dataset", "num_classes", "class_names", "tasks", "content_hash")
TASK_KEYS = ("task", "classes", "class_names", "label_offset", "num_classes", *SPLITS)
SPLIT_KEYS = ("file", "rows", "sha256")


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest without the keys the readers use (a hand-edited or foreign file)."""

    def require(doc: Any, keys: tuple[str, ...], where: str) -> None:
        if not isinstance(doc, dict):
            raise DataError(f"{path}: {where} is not an object; {REPREPARE}")
        if missing := [k for k in keys if k not in doc]:
            raise DataError(f"{path}: no {', '.join(map(repr, missing))} in {where}; {REPREPARE}")

    require(manifest, MANIFEST_KEYS, "the manifest")
    if not isinstance(manifest["tasks"], list) or not manifest["tasks"]:
        raise DataError(f"{path}: 'tasks' is not a list of tasks; {REPREPARE}")
    for t, entry in enumerate(manifest["tasks"]):
        require(entry, TASK_KEYS, f"task {t}")
        for split in SPLITS:
            require(entry[split], SPLIT_KEYS, f"task {t}'s {split!r}")


@dataclass(frozen=True, eq=False)
class Prepared:
    """A prepared folder with its manifest, read once (:func:`open_prepared`). Every reader of
    the splits takes one, so a stage that opens the folder once reads its manifest once; it is
    also a path (``os.fspath``) to the folder."""

    folder: Path
    manifest: dict[str, Any]

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """The manifest's task entries, in order."""
        return self.manifest["tasks"]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_classes(self, task: int | list[int]) -> tuple[int, int]:
        """``(label_offset, num_classes)`` of ``task``; for a list of consecutive tasks (joint
        training), of their classes together."""
        tasks = [task] if isinstance(task, int) else list(task)
        for t in tasks:
            if not 0 <= t < self.num_tasks:
                raise ValueError(f"{self} has tasks 0..{self.num_tasks - 1}, not task {t}")
        if not tasks or tasks != list(range(tasks[0], tasks[0] + len(tasks))):
            raise ValueError(f"tasks {tasks}: give one task or consecutive tasks")
        num_classes = sum(int(self.tasks[t]["num_classes"]) for t in tasks)
        return int(self.tasks[tasks[0]]["label_offset"]), num_classes

    def files(self, tasks: int | list[int], split: str) -> list[Path]:
        """The Parquet files of ``split`` ('train' or 'test') of one task or several."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        wanted = [tasks] if isinstance(tasks, int) else list(tasks)
        bad = [t for t in wanted if not 0 <= t < self.num_tasks]
        if bad:
            raise ValueError(f"tasks {bad} not in {self} (it has tasks 0..{self.num_tasks - 1})")
        return [self.folder / self.tasks[t][split]["file"] for t in wanted]

    def verify(self, files: list[tuple[int, str]] | None = None) -> None:
        """Check that the split files (``(task, split)`` pairs; default: all) still have the
        SHA-256 the prepare stage recorded: damage inside a file (its footer and row count
        intact) is refused before it is trained or evaluated on."""
        every = [(t, s) for t in range(self.num_tasks) for s in SPLITS]
        pairs = every if files is None else files
        for task, split in pairs:
            entry = self.tasks[task][split]
            path = self.folder / entry["file"]
            if not path.is_file():
                listed = self.folder / MANIFEST
                raise DataError(f"{path} not found (listed in {listed}); {REPREPARE}")
            if file_sha256(path) != entry["sha256"]:
                raise DataError(
                    f"{path} is not the file the prepare stage wrote (its SHA-256 differs from "
                    f"the one in {self.folder / MANIFEST}): damaged or replaced since; {REPREPARE}"
                )


PreparedLike = Prepared | str | Path  # a prepared folder, opened or by path


def open_prepared(prepared: PreparedLike) -> Prepared:
    """``prepared`` as it is, or the folder with its manifest read (:func:`read_manifest`)."""
    if isinstance(prepared, Prepared):
        return prepared
    return Prepared(Path(prepared), read_manifest(prepared))


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """:func:`sdlora.files.atomic_directory` guarded by the manifest; refusals are
    DataErrors."""
    try:
        with _atomic_directory(out, marker=MANIFEST) as tmp:
            yield tmp
    except FileExistsError as err:
        raise DataError(str(err)) from None


def _at(source: Source) -> str:
    """`` at ROOT`` for an on-disk source, for messages; nothing for an embedded one."""
    return f" at {source.root}" if source.root else ""


def _check_classes(source: Source, used: np.ndarray) -> None:
    """Every class used needs a train and a test image (before anything is read)."""
    for split in SPLITS:
        listing: Listing = getattr(source, split)
        counts = np.bincount(listing.class_ids, minlength=source.num_classes)
        _no_image(source, split, counts, used)


def _no_image(
    source: Source, split: str, counts: np.ndarray, used: np.ndarray, note: str = ""
) -> None:
    missing = [source.class_names[i] for i in used if counts[i] == 0]
    if missing:
        raise DataError(
            f"dataset {source.dataset!r}{_at(source)}: {len(missing)} class(es) with no {split} "
            f"image{note}: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )


def _check_fit(source: Source, init_cls: int, increment: int) -> None:
    num = source.num_classes
    if init_cls > num:
        raise DataError(
            f"data.init_cls = {init_cls} does not fit dataset {source.dataset!r}{_at(source)}: "
            f"it has {num} classes; use 1..{num}"
        )
    if increment < 1 or init_cls < 1:
        raise DataError(
            f"data.init_cls and data.increment must be >= 1, got {init_cls}, {increment}"
        )


def _read_or_error(listing: Listing, i: int) -> bytes | CorruptImageError:
    try:
        return listing.read(i)
    except CorruptImageError as err:
        return err


class _SplitWriter:
    """Writes one task split, row group by row group, hashing every row in written order."""

    def __init__(self, path: Path, row_group_size: int, hasher: Any) -> None:
        self.writer = pq.ParquetWriter(
            path,
            PARQUET_SCHEMA,
            compression=COMPRESSION,
            use_dictionary=["class_name"],
            write_statistics=["label", "class_id"],
        )
        self.row_group_size = row_group_size
        self.hasher = hasher
        self.buffer: dict[str, list[Any]] = {name: [] for name in PARQUET_SCHEMA.names}
        self.rows = 0
        self.row_groups = 0

    def add(self, image: bytes, label: int, class_id: int, class_name: str, path: str) -> None:
        row = (image, label, class_id, class_name, path)
        for name, value in zip(PARQUET_SCHEMA.names, row, strict=True):
            self.buffer[name].append(value)
        digest = hashlib.sha256(image).hexdigest()
        self.hasher.update(json.dumps([label, class_id, class_name, path, digest]).encode() + b"\n")
        if len(self.buffer["image"]) >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        n = len(self.buffer["image"])
        if n:
            table = pa.Table.from_pydict(self.buffer, schema=PARQUET_SCHEMA)
            self.writer.write_table(table, row_group_size=n)
            self.rows += n
            self.row_groups += 1
            self.buffer = {name: [] for name in PARQUET_SCHEMA.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _write_split(
    path: Path,
    listing: Listing,
    rows: np.ndarray,
    source: Source,
    label_of: np.ndarray,
    cfg: DataConfig,
    pool: ThreadPoolExecutor,
    hasher: Any,
    bar: Any,
) -> tuple[int, int, np.ndarray, list[dict[str, str]]]:
    """Write ``listing``'s items ``rows`` (in that order) to ``path``, reading in parallel.

    Returns rows written, row groups, rows kept per class and the skipped items.
    """
    kept = np.zeros(source.num_classes, dtype=np.int64)
    skipped: list[dict[str, str]] = []
    writer = _SplitWriter(path, cfg.row_group_size, hasher)
    try:
        for start in range(0, rows.size, cfg.row_group_size):
            chunk = rows[start : start + cfg.row_group_size].tolist()
            read = pool.map(lambda i: _read_or_error(listing, i), chunk)
            for i, data in zip(chunk, read, strict=True):
                if isinstance(data, CorruptImageError):
                    if not cfg.skip_corrupt:
                        raise data
                    skipped.append({"path": listing.paths[i], "reason": data.reason})
                    continue
                cid = int(listing.class_ids[i])
                name, src = source.class_names[cid], listing.paths[i]
                writer.add(data, int(label_of[cid]), cid, name, src)
                kept[cid] += 1
            bar.update(len(chunk))
    finally:
        writer.close()
    return writer.rows, writer.row_groups, kept, skipped


def prepare(
    cfg: DataConfig,
    seed: int,
    out: str | Path,
    progress: bool = False,
    threads: int | None = None,
    source: Source | None = None,
) -> dict[str, Any]:
    """Read the benchmark of ``cfg``, cut it into tasks (SPEC §1 with ``seed``), write ``out``.

    Returns the manifest (also written as ``out/manifest.json``). Raises :class:`DataError`
    (a :class:`CorruptImageError` for an unreadable image unless ``cfg.skip_corrupt``) with
    nothing left behind. ``threads`` read and check images in parallel (default 2 per core, <= 8).
    ``source``: another dataset than ``cfg.dataset`` (pre-training's letters), split as ``cfg``
    says.
    """
    source = source or open_source(cfg)
    if cfg.tasks is None:  # SPEC §1: a seeded order cut by init_cls, increment
        _check_fit(source, cfg.init_cls, cfg.increment)
        order = class_order(source.num_classes, seed)
        tasks = split_classes(order, cfg.init_cls, cfg.increment)
    else:  # the user's tasks, in their order; classes left out are not prepared
        tasks = named_tasks(
            source.class_names, cfg.tasks, f"dataset {source.dataset!r}{_at(source)}"
        )
        order = np.concatenate(tasks)
    _check_classes(source, order)
    label_of = np.full(source.num_classes, -1, dtype=np.int64)  # -1: a class left out
    label_of[order] = np.arange(order.size)
    task_of = np.full(source.num_classes, -1, dtype=np.int64)
    for t, classes in enumerate(tasks):
        task_of[classes] = t

    hasher = hashlib.sha256()
    hasher.update(json.dumps({"schema_version": SCHEMA_VERSION, "order": order.tolist()}).encode())
    skipped: list[dict[str, str]] = []
    kept = {s: np.zeros(source.num_classes, dtype=np.int64) for s in SPLITS}
    entries: list[dict[str, Any]] = []
    total = len(source.train) + len(source.test)
    threads = threads or min(8, 2 * (os.cpu_count() or 1))
    desc = f"prepare {source.dataset}"
    with (
        atomic_directory(out) as tmp,
        ThreadPoolExecutor(max_workers=threads) as pool,
        # disable=None: tqdm draws only on a terminal (a log gets no carriage-return lines)
        tqdm(total=total, desc=desc, unit="img", disable=None if progress else True) as bar,
    ):
        for t, classes in enumerate(tasks):
            (tmp / task_dir(t)).mkdir()
            entry: dict[str, Any] = {
                "task": t,
                "classes": classes.tolist(),
                "class_names": [source.class_names[c] for c in classes],
                "label_offset": int(label_of[classes[0]]),
                "num_classes": int(classes.size),
            }
            for split in SPLITS:
                listing: Listing = getattr(source, split)
                rows = np.flatnonzero(task_of[listing.class_ids] == t)
                if split == "train":  # mix the task's classes in every row group
                    rows = np.random.default_rng([seed, t]).permutation(rows)
                hasher.update(f"task {t} {split}\n".encode())
                rel = f"{task_dir(t)}/{split}.parquet"
                n, groups, kept_t, skipped_t = _write_split(
                    tmp / rel, listing, rows, source, label_of, cfg, pool, hasher, bar
                )
                kept[split] += kept_t
                skipped += [{"split": split, **item} for item in skipped_t]
                entry[split] = {"file": rel, "rows": n, "row_groups": groups,
                                "sha256": file_sha256(tmp / rel)}  # fmt: skip
            entries.append(entry)
        note = f" after skipping {len(skipped)} corrupt image(s)"
        for split in SPLITS:
            _no_image(source, split, kept[split], order, note)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": source.dataset,
            "source_root": source.root,
            "layout": source.layout,
            "params": {
                "seed": seed,
                "init_cls": cfg.init_cls,
                "increment": cfg.increment,
                **({} if cfg.tasks is None else {"tasks": cfg.tasks}),  # unset: as before
                "split_seed": cfg.split_seed,
                "test_fraction": cfg.test_fraction,
                "domains": list(cfg.domains) if source.dataset == "domainnet" else None,
                "skip_corrupt": cfg.skip_corrupt,
                "row_group_size": cfg.row_group_size,
            },
            "num_classes": source.num_classes,
            "class_names": list(source.class_names),
            "class_order": order.tolist(),
            "class_to_task": {source.class_names[c]: int(task_of[c]) for c in sorted(order)},
            "tasks": entries,
            "totals": {s: int(kept[s].sum()) for s in SPLITS},
            "skipped": {"count": len(skipped), "items": skipped},
            "columns": {f.name: str(f.type) for f in PARQUET_SCHEMA},
            "content_hash": "sha256:" + hasher.hexdigest(),
        }
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return manifest
