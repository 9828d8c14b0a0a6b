"""The prepare stage: any benchmark into per-task Parquet splits, task by task, atomically.

Output (``OUT`` is the prepared folder)::

    OUT/task_00/train.parquet   OUT/task_00/test.parquet   OUT/task_00/task.json
    OUT/task_01/...

Each task folder describes itself in ``task.json`` (its classes, label offset, files with their
SHA-256 and row counts, and its own content hash), so a task can be prepared on its own (the
pipeline's ``prepare@k``, :func:`prepare_task`) and adding a task leaves the earlier folders as
they were; :func:`prepare` writes every task at once. Readers open the folder with
:func:`open_prepared`, which reads the tasks' files into one manifest and refuses tasks that do
not belong together (other data or params, labels not following on).

Each Parquet file has the columns of :data:`PARQUET_SCHEMA`: the encoded image bytes exactly as
stored on disk (JPEG, PNG, ...; in-memory arrays as lossless PNG), the global label (the class's
position in the task order), the original class id and name, and the source path. Row groups
hold ``data.row_group_size`` rows, the unit the streaming reader loads (``sdlora.data.stream``).
Train rows are shuffled once (seeded by seed and task) so that every row group mixes the task's
classes; test rows keep the source order.

Everything is written into a hidden temporary folder beside the output and renamed onto it at
the end: an error or an interrupt leaves the output as it was (absent, or the previous output)
and removes the temporary folder. A killed process (SIGKILL, power loss) can leave a
``.NAME.*.tmp`` folder behind, never a half-written output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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

from sdlora.config import Config, DataConfig, combine_hashes
from sdlora.data.benchmarks import named_tasks, open_source
from sdlora.data.source import CorruptImageError, DataError, Listing, Source
from sdlora.data.tasks import class_order, split_classes
from sdlora.files import atomic_directory as _atomic_directory
from sdlora.files import file_sha256

SCHEMA_VERSION = 3  # 3: a task.json per task folder; 2: one manifest.json for all tasks
PARQUET_VERSION = 2  # the split files' columns (unchanged since schema 2)
TASK_FILE = "task.json"
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
    metadata={b"sdlora.schema_version": str(PARQUET_VERSION).encode()},
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


def reprepare(task: int | None = None) -> str:
    """The fix for a damaged or missing prepared task (``task``: the pipeline's stage to force)."""
    stage = "prepare" if task is None else f"prepare@{task}"
    return f"re-create the prepared splits (the pipeline: `dvc repro -f {stage}`)"


# What every task of one prepared folder shares (the dataset and the params it was cut with).
SHARED_KEYS = ("dataset", "source_root", "layout", "params", "num_classes", "class_names")
TASK_KEYS = (
    "task",
    "classes",
    "class_names",
    "label_offset",
    "num_classes",
    "content_hash",
    *SPLITS,
)
SPLIT_KEYS = ("file", "rows", "sha256")


def _read_task_file(path: Path, task: int) -> dict[str, Any]:
    """One task's ``task.json``, checked for the keys the readers use."""
    fix = reprepare(task)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: task {task} is not prepared there; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a JSON {type(doc).__name__}, not a task's description; {fix}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version!r}, this sdlora reads {SCHEMA_VERSION}; {fix}"
        )

    def require(d: Any, keys: tuple[str, ...], where: str) -> None:
        if not isinstance(d, dict):
            raise DataError(f"{path}: {where} is not an object; {fix}")
        if missing := [k for k in keys if k not in d]:
            raise DataError(f"{path}: no {', '.join(map(repr, missing))} in {where}; {fix}")

    require(doc, (*SHARED_KEYS, "task", "skipped"), "the file")
    require(doc["task"], TASK_KEYS, "its 'task'")
    for split in SPLITS:
        require(doc["task"][split], SPLIT_KEYS, f"its {split!r}")
    if doc["task"]["task"] != task:
        raise DataError(f"{path} describes task {doc['task']['task']!r}, not task {task}; {fix}")
    return doc


def _task_numbers(folder: Path) -> int:
    """How many tasks ``folder`` holds: ``task_00``, ``task_01``, ... without a gap."""
    found = sorted(
        int(m.group(1))
        for p in folder.iterdir()
        if (m := re.fullmatch(r"task_(\d{2,})", p.name)) and p.is_dir()
    )
    if not found:
        if (folder / "manifest.json").is_file():
            raise DataError(
                f"{folder} was prepared by an older sdlora (one manifest.json); {REPREPARE}"
            )
        raise DataError(f"{folder} holds no task_00 folder: is it the prepare stage's output?")
    if found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        raise DataError(
            f"{folder} lacks {task_dir(missing[0])} (has {found[-1] + 1} tasks' "
            f"folders but not every one); {reprepare(missing[0])}"
        )
    return len(found)


def read_manifest(prepared: str | Path, num_tasks: int | None = None) -> dict[str, Any]:
    """Tasks ``0..num_tasks-1`` of a prepared folder (default: every ``task_XX`` there) as one
    manifest: the shared description, the task entries (file paths relative to the folder),
    totals, and the content hash of these tasks. Refuses tasks that do not belong together."""
    folder = Path(prepared)
    if not folder.is_dir():
        raise DataError(f"{folder} not found: is it the output of the prepare stage?")
    n = _task_numbers(folder) if num_tasks is None else num_tasks
    docs = [_read_task_file(folder / task_dir(t) / TASK_FILE, t) for t in range(n)]
    first = docs[0]
    entries, seen, offset = [], set(), 0
    for t, doc in enumerate(docs):
        path = folder / task_dir(t) / TASK_FILE
        differ = [k for k in SHARED_KEYS if doc[k] != first[k]]
        if differ:
            raise DataError(
                f"{path} was prepared from other data or params than task 0 ({', '.join(differ)} "
                f"differ); {reprepare(t)}"
            )
        entry = dict(doc["task"])
        if entry["label_offset"] != offset:
            raise DataError(
                f"{path}: its labels start at {entry['label_offset']}, but tasks 0..{t - 1} hold "
                f"{offset} classes: prepared for another task list; {reprepare(t)}"
            )
        if twice := seen & set(entry["class_names"]):
            raise DataError(
                f"{path}: classes {sorted(twice)} are also in an earlier task; {reprepare(t)}"
            )
        seen |= set(entry["class_names"])
        offset += int(entry["num_classes"])
        for split in SPLITS:
            entry[split] = {**entry[split], "file": f"{task_dir(t)}/{entry[split]['file']}"}
        entries.append(entry)
    order = [c for e in entries for c in e["classes"]]
    names = first["class_names"]
    hashes = [e["content_hash"] for e in entries]
    return {
        "schema_version": SCHEMA_VERSION,
        **{k: first[k] for k in SHARED_KEYS},
        "class_order": order,
        "class_to_task": {names[c]: e["task"] for e in entries for c in sorted(e["classes"])},
        "tasks": entries,
        "totals": {s: sum(int(e[s]["rows"]) for e in entries) for s in SPLITS},
        "skipped": {
            "count": sum(len(d["skipped"]) for d in docs),
            "items": [item for d in docs for item in d["skipped"]],
        },
        "columns": {f.name: str(f.type) for f in PARQUET_SCHEMA},
        "task_hashes": hashes,
        "content_hash": combine_hashes(hashes),
    }


@dataclass(frozen=True, eq=False)
class Prepared:
    """A prepared folder with its manifest, read once (:func:`open_prepared`). Every reader of
    the splits takes one, so a stage that opens the folder once reads its tasks' files once; it
    is also a path (``os.fspath``) to the folder."""

    folder: Path
    manifest: dict[str, Any]

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """The task entries, in order."""
        return self.manifest["tasks"]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_file(self, task: int) -> Path:
        """Task ``task``'s ``task.json`` (what messages about its entry name)."""
        return self.folder / task_dir(task) / TASK_FILE

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
                listed = self.task_file(task)
                raise DataError(f"{path} not found (listed in {listed}); {reprepare(task)}")
            if file_sha256(path) != entry["sha256"]:
                raise DataError(
                    f"{path} is not the file the prepare stage wrote (its SHA-256 differs from "
                    f"the one in {self.task_file(task)}): damaged or replaced since; "
                    f"{reprepare(task)}"
                )


PreparedLike = Prepared | str | Path  # a prepared folder, opened or by path


def open_prepared(prepared: PreparedLike, num_tasks: int | None = None) -> Prepared:
    """``prepared`` as it is, or the folder with tasks ``0..num_tasks-1`` (default: all there)
    read into one manifest (:func:`read_manifest`)."""
    if isinstance(prepared, Prepared):
        if num_tasks is not None and prepared.num_tasks < num_tasks:
            raise ValueError(
                f"{prepared} was opened with {prepared.num_tasks} tasks, not {num_tasks}"
            )
        return prepared
    return Prepared(Path(prepared), read_manifest(prepared, num_tasks))


def open_tasks(cfg: Config, num_tasks: int, prepared: PreparedLike) -> Prepared:
    """Tasks ``0..num_tasks-1`` of the prepared folder, refused unless each is the task the
    ``tasks`` section describes (its label offset and, when named, its classes): a folder
    prepared for another task list is never trained or evaluated on."""
    opened = open_prepared(prepared, num_tasks)
    for t, entry in enumerate(opened.tasks):
        want = (cfg.tasks or {})[t]
        have = (entry["label_offset"], entry["class_names"])
        if want.label_offset != have[0] or want.classes not in (None, have[1]):
            shown = f"classes {have[1]}" if want.classes is not None else "its classes"
            raise DataError(
                f"{opened.task_file(t)}: task {t} was prepared with labels from {have[0]} and "
                f"{shown}, not as tasks.{t} says (labels from {want.label_offset}"
                + (f", classes {want.classes}" if want.classes is not None else "")
                + f"); run `dvc repro prepare@{t}`"
            )
    return opened


@contextmanager
def atomic_directory(out: str | Path, marker: str) -> Iterator[Path]:
    """:func:`sdlora.files.atomic_directory` guarded by ``marker``; refusals are DataErrors."""
    try:
        with _atomic_directory(out, marker=marker) as tmp:
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


def task_plan(cfg: DataConfig, seed: int, source: Source) -> list[np.ndarray]:
    """The classes of every task (indices into ``source.class_names``), in task order:
    ``data.tasks`` by name, else SPEC §1's seeded order cut by init_cls and increment."""
    if cfg.tasks is None:
        _check_fit(source, cfg.init_cls, cfg.increment)
        return split_classes(class_order(source.num_classes, seed), cfg.init_cls, cfg.increment)
    return named_tasks(source.class_names, cfg.tasks, f"dataset {source.dataset!r}{_at(source)}")


def _shared(cfg: DataConfig, seed: int, source: Source) -> dict[str, Any]:
    """What every task's ``task.json`` holds alike: the dataset and the params it was cut with."""
    return {
        "dataset": source.dataset,
        "source_root": source.root,
        "layout": source.layout,
        "params": {
            "seed": seed,
            "init_cls": cfg.init_cls,
            "increment": cfg.increment,
            "split_seed": cfg.split_seed,
            "test_fraction": cfg.test_fraction,
            "domains": list(cfg.domains) if source.dataset == "domainnet" else None,
            "skip_corrupt": cfg.skip_corrupt,
            "row_group_size": cfg.row_group_size,
        },
        "num_classes": source.num_classes,
        "class_names": list(source.class_names),
    }


def _write_task(
    folder: Path,
    task: int,
    tasks: list[np.ndarray],
    source: Source,
    cfg: DataConfig,
    seed: int,
    pool: ThreadPoolExecutor,
    bar: Any,
) -> dict[str, Any]:
    """Write task ``task`` of ``tasks`` into ``folder`` (its splits and ``task.json``)."""
    classes = tasks[task]
    offset = sum(int(c.size) for c in tasks[:task])
    label_of = np.full(source.num_classes, -1, dtype=np.int64)  # -1: not this task's class
    label_of[classes] = offset + np.arange(classes.size)
    hasher = hashlib.sha256()
    head = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "classes": classes.tolist(),
        "label_offset": offset,
    }
    hasher.update(json.dumps(head).encode())
    entry: dict[str, Any] = {
        "task": task,
        "classes": classes.tolist(),
        "class_names": [source.class_names[c] for c in classes],
        "label_offset": offset,
        "num_classes": int(classes.size),
    }
    skipped: list[dict[str, str]] = []
    for split in SPLITS:
        listing: Listing = getattr(source, split)
        rows = np.flatnonzero(label_of[listing.class_ids] >= 0)
        if split == "train":  # mix the task's classes in every row group
            rows = np.random.default_rng([seed, task]).permutation(rows)
        hasher.update(f"{split}\n".encode())
        name = f"{split}.parquet"
        n, groups, kept, skipped_s = _write_split(
            folder / name, listing, rows, source, label_of, cfg, pool, hasher, bar
        )
        note = f" after skipping {len(skipped_s)} corrupt image(s)" if skipped_s else ""
        _no_image(source, split, kept, classes, note)
        skipped += [{"split": split, **item} for item in skipped_s]
        entry[split] = {
            "file": name,
            "rows": n,
            "row_groups": groups,
            "sha256": file_sha256(folder / name),
        }
    entry["content_hash"] = "sha256:" + hasher.hexdigest()
    doc = {
        "schema_version": SCHEMA_VERSION,
        **_shared(cfg, seed, source),
        "task": entry,
        "skipped": skipped,
        "columns": {f.name: str(f.type) for f in PARQUET_SCHEMA},
    }
    (folder / TASK_FILE).write_text(
        json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return doc


def _rows_of(source: Source, classes: np.ndarray) -> int:
    """Images of ``classes`` in both splits (the progress bar's total)."""
    return sum(int(np.isin(getattr(source, s).class_ids, classes).sum()) for s in SPLITS)


def prepare(
    cfg: DataConfig,
    seed: int,
    out: str | Path,
    progress: bool = False,
    threads: int | None = None,
    source: Source | None = None,
) -> dict[str, Any]:
    """Read the benchmark of ``cfg``, cut it into tasks (:func:`task_plan` with ``seed``), write
    every task's folder into ``out``; return the manifest (:func:`read_manifest`).

    Raises :class:`DataError` (a :class:`CorruptImageError` for an unreadable image unless
    ``cfg.skip_corrupt``) with nothing left behind. ``threads`` read and check images in
    parallel (default 2 per core, <= 8). ``source``: another dataset than ``cfg.dataset``
    (pre-training's letters), split as ``cfg`` says.
    """
    source = source or open_source(cfg)
    tasks = task_plan(cfg, seed, source)
    _check_classes(source, np.concatenate(tasks))
    threads = threads or min(8, 2 * (os.cpu_count() or 1))
    total = _rows_of(source, np.concatenate(tasks))
    older = (Path(out) / "manifest.json").is_file()  # an older sdlora's output: replaced
    with (
        atomic_directory(out, "manifest.json" if older else f"{task_dir(0)}/{TASK_FILE}") as tmp,
        ThreadPoolExecutor(max_workers=threads) as pool,
        # disable=None: tqdm draws only on a terminal (a log gets no carriage-return lines)
        tqdm(
            total=total,
            desc=f"prepare {source.dataset}",
            unit="img",
            disable=None if progress else True,
        ) as bar,
    ):
        for t in range(len(tasks)):
            (tmp / task_dir(t)).mkdir()
            _write_task(tmp / task_dir(t), t, tasks, source, cfg, seed, pool, bar)
    return read_manifest(out)


def prepare_task(
    cfg: DataConfig,
    seed: int,
    task: int,
    out: str | Path,
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write task ``task`` alone into its folder ``out`` (``PREPARED/task_XX``): what the
    pipeline's ``prepare@task`` runs, so adding a task leaves the earlier tasks' folders alone.
    Returns the task's ``task.json``. Errors as :func:`prepare`."""
    source = open_source(cfg)
    tasks = task_plan(cfg, seed, source)
    if not 0 <= task < len(tasks):
        raise DataError(
            f"task {task}: {describe_source(source)} makes tasks 0..{len(tasks) - 1} with these "
            "params"
        )
    _check_classes(source, tasks[task])
    threads = threads or min(8, 2 * (os.cpu_count() or 1))
    with (
        atomic_directory(out, TASK_FILE) as tmp,
        ThreadPoolExecutor(max_workers=threads) as pool,
        tqdm(
            total=_rows_of(source, tasks[task]),
            desc=f"prepare {source.dataset} task {task}",
            unit="img",
            disable=None if progress else True,
        ) as bar,
    ):
        doc = _write_task(tmp, task, tasks, source, cfg, seed, pool, bar)
    return doc


def describe_source(source: Source) -> str:
    """``dataset 'name'`` and, for an on-disk one, where it lies: for messages."""
    return f"dataset {source.dataset!r}{_at(source)}"
