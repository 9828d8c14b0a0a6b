"""The two kinds of failure every entry point reports in one line, without a traceback.

Each module's own errors subclass one of them (``ConfigError``, ``DataError``, ``StageError`` ...
are :class:`BadInput`; ``TrainingFailed``, ``SweepError`` ... are :class:`Failed`), so the CLI
(:mod:`sdlora.cli`) tells them apart by class, importing none of the modules that raise them.
"""

from __future__ import annotations


class BadInput(Exception):
    """Input that cannot make a valid run (params, a missing, damaged or foreign file): exit
    code 2 and one line naming what is wrong, where, and what to do."""


class Failed(Exception):
    """A run that failed for good, whose message says why and where the full story is: exit
    code 1 and that message."""
