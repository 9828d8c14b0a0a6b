"""atomic_path: the new file replaces the old only on success; no temporary file is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.files import atomic_path


def test_success_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_file_created_private_gets_the_usual_permissions(tmp_path: Path) -> None:
    """safetensors creates its file 0600; the adapter should read like every other output."""
    import os

    import torch
    from safetensors.torch import save_file

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
            assert tmp.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """Temporary files and folders of a process that is gone go; a live one's stay."""
    import os
    import subprocess
    import sys

    from sdlora.files import atomic_directory

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dead_file = tmp_path / f".a.txt.{gone}.1234abcd.tmp"
    dead_dir = tmp_path / f".out.{gone}.xyz.tmp"
    live_dir = tmp_path / f".out.{os.getpid()}.xyz.tmp"
    for p in (dead_dir, live_dir):
        p.mkdir()
        (p / "half").write_text("x")
    dead_file.write_text("half")
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("new")
    assert not dead_file.exists() and dead_dir.exists()  # only the file's own leftovers
    with atomic_directory(tmp_path / "out", marker="m") as tmp:
        (tmp / "m").write_text("")
    assert not dead_dir.exists() and live_dir.exists()
