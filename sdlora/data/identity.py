"""A prepared split's identity: which files, in which task, under which class.

Two users who prepared "the same" benchmark compare this to know they trained on the same data:
per task, the SHA-256 of its sorted file list (``split<TAB>path<TAB>class name`` lines, paths as
the reader lists them, relative to the dataset's root), its classes in label order and its
image counts; over all tasks, one hash of the tasks' hashes and the class order. The row order
inside a split (shuffled by the seed) and where the dataset lies do not count; the files' bytes
do not either (the manifest's ``content_hash`` covers those).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow.parquet as pq

from sdlora.data.prepare import SPLITS, PreparedLike, open_prepared


def split_identity(prepared: PreparedLike) -> dict[str, Any]:
    """The identity of a prepared folder (module docstring); its files are checked first."""
    p = open_prepared(prepared)
    p.verify()
    tasks = []
    overall = hashlib.sha256()
    for t, entry in enumerate(p.tasks):
        digest = hashlib.sha256()
        counts = {}
        for split in SPLITS:
            table = pq.read_table(p.files(t, split)[0], columns=["path", "class_name"])
            rows = sorted(zip(table["path"].to_pylist(), table["class_name"].to_pylist(),
                              strict=True))  # fmt: skip
            for path, name in rows:
                digest.update(f"{split}\t{path}\t{name}\n".encode())
            counts[split] = len(rows)
        tasks.append(
            {
                "task": t,
                "classes": list(entry["class_names"]),
                "train": counts["train"],
                "test": counts["test"],
                "file_list_sha256": digest.hexdigest(),
            }
        )
        overall.update(f"{digest.hexdigest()}\t{entry['class_names']}\n".encode())
    first = p.manifest
    return {
        "dataset": first["dataset"],
        "layout": first["layout"],
        "num_tasks": len(tasks),
        "class_order": [name for task in tasks for name in task["classes"]],
        "file_list_sha256": overall.hexdigest(),
        "content_hash": first["content_hash"],
        "tasks": tasks,
    }


def format_identity(ident: dict[str, Any], folder: str) -> str:
    """The identity as the console shows it: a header, then one line per task."""
    lines = [
        f"{folder}: {ident['dataset']} ({ident['layout']}), {ident['num_tasks']} tasks",
        f"file list  sha256:{ident['file_list_sha256']}",
        f"content    {ident['content_hash']}",
        "task  train  test  file list sha256  classes (label order)",
    ]
    for t in ident["tasks"]:
        names = ", ".join(t["classes"][:6]) + (", ..." if len(t["classes"]) > 6 else "")
        lines.append(
            f"{t['task']:>4}  {t['train']:>5}  {t['test']:>4}  {t['file_list_sha256'][:16]}  "
            f"{len(t['classes'])}: {names}"
        )
    return "\n".join(lines) + "\n"
