"""Atomic writes of files and folders: readers see the old one or the new one, never half."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _remove_orphans(folder: Path, prefix: str) -> None:
    """Remove ``<prefix><pid>.*.tmp`` files and folders whose writing process (on this machine)
    is gone: a kill left them before the rename, and they would pile up beside the output."""
    for p in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = p.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was. The parent folder must exist.
    """
    path = Path(path)
    _remove_orphans(path.parent, f".{path.name}.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create 0600: give the usual permissions
            tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(out: str | os.PathLike[str], marker: str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out``.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and ``out`` is
    left untouched. An existing ``out`` is replaced only if it is empty or holds ``marker`` (a
    file every output of this kind has), never an unrelated folder: that raises FileExistsError.
    Parent folders are created.
    """
    out = Path(out).absolute()
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"output {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise FileExistsError(
                f"output {out} exists, is not empty and holds no {marker}: refusing to replace "
                "a folder this stage did not write"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out.parent, f".{out.name}.")
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent)
    )
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets normal permissions
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically, creating the file's folder (DVC creates no parent of an
    output)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


_SHA256: dict[tuple[str, int, int], str] = {}  # a file's hash by (path, size, mtime): once


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (computed once per process while its size and mtime stay)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        with path.open("rb") as f:
            _SHA256[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _SHA256[key]
