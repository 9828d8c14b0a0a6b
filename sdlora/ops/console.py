"""The console of a Ray Train stage: the workers' progress drawn by the driver, Ray's output
sent to a log file.

- :class:`FileProgress` writes a Ray worker's (rank 0's) epochs as JSON lines to a file in the
  task's output folder, which every worker writes to anyway (a shared file system on a
  cluster); the driver's :class:`ProgressRelay` reads the file and draws the same bars with a
  :class:`sdlora.progress.ConsoleProgress`.
- :func:`redirect_output` points the process's file descriptors 1 and 2 at a log file and hands
  back a stream on the original stderr for what the user should see: Ray prints from C++ and
  from the processes it starts (GCS, raylet, the workers' output it forwards), which
  ``sys.stdout`` alone cannot catch. Processes started inside the block keep writing to the
  log after it ends.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from sdlora.progress import ConsoleProgress, EpochBar

UPDATE_EVERY_S = 0.25  # FileProgress: the most often it writes a step (epoch ends always)


class _FileBar:
    def __init__(self, owner: FileProgress, desc: str, total: int) -> None:
        self.owner, self.desc, self.total = owner, desc, total
        self.last_write = 0.0
        self.state: dict[str, Any] = {"desc": desc, "total": total, "batches": 0}
        self.owner.write({**self.state, "event": "start"})

    def update(self, batches: int, loss: float, samples: int, seconds: float) -> None:
        self.state.update(batches=batches, loss=loss, samples=samples, seconds=seconds)
        now = time.monotonic()
        if now - self.last_write >= UPDATE_EVERY_S:
            self.last_write = now
            self.owner.write({**self.state, "event": "update"})

    def close(self) -> None:
        self.owner.write({**self.state, "event": "end"})


class FileProgress:
    """Appends each epoch's progress to ``path`` as JSON lines, for :class:`ProgressRelay`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, event: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def epoch(self, desc: str, total: int) -> EpochBar:
        return _FileBar(self, desc, total)


class ProgressRelay:
    """Follows a :class:`FileProgress` file in a thread and draws it with ``console``.

    >>> with ProgressRelay(out / ".progress.jsonl", ConsoleProgress()):
    ...     trainer.fit()
    """

    def __init__(self, path: str | Path, console: ConsoleProgress, poll_s: float = 0.1) -> None:
        self.path, self.console, self.poll_s = Path(path), console, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="sdlora-progress", daemon=True)
        self._offset = 0
        self._bar: EpochBar | None = None
        self._seen = False  # any event yet: a later "resume" is a restart within the stage

    def __enter__(self) -> ProgressRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # what the last poll missed
        if self._bar is not None:  # a worker that died mid-epoch
            self._bar.close()
            self._bar = None

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._read()

    def _read(self) -> None:
        try:
            with self.path.open() as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits
        self._offset += len(complete)
        for line in complete.splitlines():
            self._draw(json.loads(line))

    def _draw(self, event: dict[str, Any]) -> None:
        seen, self._seen = self._seen, True
        if event["event"] == "resume":  # the workers start from a checkpoint
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if seen and self.console.enabled:  # within this stage: Ray restarted them
                print(
                    f"Ray Train restarted the workers after a failure: resuming at epoch "
                    f"{event['start_epoch'] + 1} from the last checkpoint",
                    file=self.console.stream, flush=True,
                )  # fmt: skip
            return
        if event["event"] == "start":
            if self._bar is not None:  # a restarted worker begins the epoch again
                self._bar.close()
            self._bar = self.console.epoch(event["desc"], event["total"])
            return
        if self._bar is None:
            return
        if "loss" in event:
            self._bar.update(event["batches"], event["loss"], event["samples"], event["seconds"])
        if event["event"] == "end":
            self._bar.close()
            self._bar = None


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
