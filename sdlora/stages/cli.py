"""What every ``pipelines/<stage>.py`` shares: ``--params``, bad-input handling, printed results.

Each stage module has a ``main(argv)`` (what its entry script imports): it builds its parser
with :func:`stage_parser`, adds the input and output paths dvc.yaml passes, and calls
:func:`run_stage`. This module imports no stage and none of the libraries they use (bad-input
errors are matched by name, :data:`BAD_INPUT`), so an entry script's import closure, which
dvc.yaml lists as the stage's code deps (:mod:`sdlora.deps`), holds its own stage only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sdlora.config import Config, load_config

# Bad input (config, missing or foreign inputs, corrupt data, an output in the way): exit 2 with
# one message. Named, not imported: an error can only come from a module already loaded.
BAD_INPUT = (
    "sdlora.config.ConfigError",
    "sdlora.stages.records.StageError",
    "sdlora.data.source.DataError",
    "sdlora.tracking.TrackingError",
    "sdlora.checkpoint.AdapterMismatchError",
    "builtins.FileExistsError",
)


def is_bad_input(err: BaseException) -> bool:
    """Whether ``err`` is one of :data:`BAD_INPUT` (or a subclass)."""
    for name in BAD_INPUT:
        module, _, cls = name.rpartition(".")
        kind = getattr(sys.modules.get(module), cls, None)
        if isinstance(kind, type) and isinstance(err, kind):
            return True
    return False


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``pipelines/<stage>.py`` with ``--params``; the stage adds its paths."""
    parser = argparse.ArgumentParser(prog=f"pipelines/{stage}.py", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    return parser


def add_dir(
    parser: argparse.ArgumentParser,
    flag: str,
    what: str,
    default: str | None,
    shown: str | None = None,
    dest: str | None = None,
) -> None:
    """A folder option of a stage, ``flag DIR``; its help names the default (or ``shown``)."""
    help_ = f"{what} (default: {shown or default})"
    parser.add_argument(flag, metavar="DIR", default=default, dest=dest, help=help_)


def run_stage(
    stage: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[Config, argparse.Namespace], Any],
    show: Callable[[Any], Any] | None = None,
) -> int:
    """Parse ``argv``, load ``--params`` and call ``run(cfg, args)``; print ``show(result)``.

    Bad input (:data:`BAD_INPUT`) exits with code 2 and one clear message on stderr; anything
    else (a crashed worker, say) keeps its traceback.
    """
    args = parser.parse_args(argv)
    try:
        result = run(load_config(args.params), args)
    except Exception as err:
        if not is_bad_input(err):
            raise
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 2
    if show is not None:
        print(json.dumps(show(result), indent=2))
    return 0
