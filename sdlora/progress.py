"""Epoch progress: a bar on a terminal, a line per epoch elsewhere.

:func:`sdlora.core.train.run_epoch` reports every step to a :class:`Progress` (``epoch(desc,
total)``
gives a bar, ``update`` moves it, ``close`` ends the epoch). Two kinds:

- :class:`ConsoleProgress` draws it: a transient tqdm bar (loss, images/s) on a terminal, one
  line per finished epoch on anything else (a log, CI), nothing when disabled;
- :class:`sdlora.ops.console.FileProgress` writes it for a Ray worker, whose driver draws it
  with a :class:`ConsoleProgress` (:class:`sdlora.ops.console.ProgressRelay`).
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from tqdm.auto import tqdm

VERBOSE_ENV = "SDLORA_VERBOSE"  # 1: Ray's output on the console too (a train stage's --verbose)


class EpochBar(Protocol):
    """One epoch's progress."""

    def update(self, batches: int, loss: float, samples: int, seconds: float) -> None:
        """``batches`` done, their mean ``loss``, ``samples`` seen, ``seconds`` since the start."""

    def close(self) -> None:
        """The epoch ended."""


class Progress(Protocol):
    """Where :func:`sdlora.core.train.run_epoch` reports."""

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
