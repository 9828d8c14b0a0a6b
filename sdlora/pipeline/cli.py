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
import logging
import sys
from collections.abc import Callable
from typing import Any

from sdlora.config import Config, load_config

# Bad input (config, missing or foreign inputs, corrupt data, an output in the way): exit 2 with
# one message. Named, not imported: an error can only come from a module already loaded.
BAD_INPUT = (
    "sdlora.config.ConfigError",
    "sdlora.pipeline.layout.StageError",
    "sdlora.data.source.DataError",
    "sdlora.ops.tracking.TrackingError",
    "sdlora.core.checkpoint.AdapterMismatchError",
    "builtins.FileExistsError",
    "sdlora.ops.ray_train.TaskInputError",
)
# Failures whose message says it all (and where the full story is): exit 1, no traceback.
FAILED = (
    "sdlora.ops.ray_train.TrainingFailed",
    "sdlora.ops.ray_session.ClusterUnreachable",
    "sdlora.report.tune.SweepError",
)


def is_one_of(err: BaseException, names: tuple[str, ...]) -> bool:
    """Whether ``err`` is of a class in ``names`` (such as :data:`BAD_INPUT`), or a subclass."""
    for name in names:
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

    Bad input (:data:`BAD_INPUT`) exits with code 2 and one clear message on stderr, a failure
    of :data:`FAILED` with code 1 and its message; anything else keeps its traceback. MLflow's
    informational messages are not shown.
    """
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        result = run(load_config(args.params), args)
    except Exception as err:
        if is_one_of(err, BAD_INPUT):
            print(f"{stage}: error: {err}", file=sys.stderr)
            return 2
        if is_one_of(err, FAILED):
            print(f"{stage}: failed: {err}", file=sys.stderr)
            return 1
        raise
    if show is not None:
        print(json.dumps(show(result), indent=2))
    return 0
