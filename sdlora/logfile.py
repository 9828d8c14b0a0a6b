"""Send everything a block of code prints, its child processes included, to a log file.

Ray prints from C++ and from the processes it starts (GCS, raylet, the workers' output that it
forwards to the driver), so ``sys.stdout`` alone cannot catch it: :func:`redirect_output` points
the process's file descriptors 1 and 2 at the log file, and hands back a stream on the original
stderr for what the user should see. Processes started inside the block keep writing to the
log after it ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def redirect_output(path: str | Path) -> Iterator[TextIO]:
    """Append fds 1 and 2 to ``path`` (created with its folder) inside the block; yield the console.

    The yielded stream writes to the terminal (the original stderr); on exit, fds 1 and 2 are
    restored, also when the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            os.dup2(log, fd)
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log)
        console.close()


def tail(path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' when there is none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
