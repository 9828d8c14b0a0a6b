"""Epoch progress: a bar on a terminal, a line per epoch elsewhere, relayed from Ray workers.

:func:`sdlora.train.run_epoch` reports every step to a :class:`Progress` (``epoch(desc, total)``
gives a bar, ``update`` moves it, ``close`` ends the epoch). Two kinds:

- :class:`ConsoleProgress` draws it: a transient tqdm bar (loss, images/s) on a terminal, one
  line per finished epoch on anything else (a log, CI), nothing when disabled;
- :class:`FileProgress` writes each update as a JSON line to a file; a Ray worker (rank 0) uses
  it, and the driver's :class:`ProgressRelay` reads the file and draws the same bars with a
  :class:`ConsoleProgress`. The file lies in the task's output folder, which every worker
  writes to anyway (a shared file system on a cluster).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from tqdm.auto import tqdm

UPDATE_EVERY_S = 0.25  # FileProgress: the most often it writes a step (epoch ends always)


class EpochBar(Protocol):
    """One epoch's progress."""

    def update(self, batches: int, loss: float, samples: int, seconds: float) -> None:
        """``batches`` done, their mean ``loss``, ``samples`` seen, ``seconds`` since the start."""

    def close(self) -> None:
        """The epoch ended."""


class Progress(Protocol):
    """Where :func:`sdlora.train.run_epoch` reports."""

    def epoch(self, desc: str, total: int) -> EpochBar:
        """A bar for an epoch of ``total`` batches, labelled ``desc``."""


def _rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else 0.0


class _ConsoleBar:
    def __init__(self, owner: ConsoleProgress, desc: str, total: int) -> None:
        self.owner, self.desc, self.total = owner, desc, total
        self.last = (0, float("nan"), 0, 0.0)
        self.bar = None
        if owner.enabled and owner.live:
            self.bar = tqdm(
                total=total, desc=desc, unit="batch", leave=False, file=owner.stream,
                dynamic_ncols=True,
            )  # fmt: skip

    def update(self, batches: int, loss: float, samples: int, seconds: float) -> None:
        self.last = (batches, loss, samples, seconds)
        if self.bar is not None:
            self.bar.n = batches
            self.bar.set_postfix_str(
                f"loss {loss:.4f}, {_rate(samples, seconds):.0f} images/s", refresh=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.owner.enabled:  # no terminal: one line per epoch
            _, loss, samples, seconds = self.last
            print(
                f"{self.desc}: loss {loss:.4f}, {_rate(samples, seconds):.0f} images/s, "
                f"{seconds:.1f} s",
                file=self.owner.stream,
                flush=True,
            )


class ConsoleProgress:
    """Draws epochs on ``stream`` (default stderr): a live bar on a terminal, else a line each.

    ``live`` (default: whether ``stream`` is a terminal) picks the bar; ``enabled=False`` (params
    ``progress: false``) draws nothing.
    """

    def __init__(
        self, enabled: bool = True, stream: TextIO | None = None, live: bool | None = None
    ) -> None:
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.live = _isatty(self.stream) if live is None else live

    def epoch(self, desc: str, total: int) -> EpochBar:
        return _ConsoleBar(self, desc, total)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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
