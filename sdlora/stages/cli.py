"""Entry point of ``pipelines/<stage>.py``: parse the arguments, run the stage, report errors."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from sdlora.config import ConfigError, load_config
from sdlora.stages.records import StageError

STAGES = ("prepare", "pretrain", "train", "evaluate", "report")


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``pipelines/<stage>.py``: ``--params`` (and ``--task K`` for train).

    Bad input (config, missing or foreign inputs, corrupt data) exits with code 2 and one clear
    message on stderr; anything else (a crashed worker, say) keeps its traceback.
    """
    from sdlora.checkpoint import AdapterMismatchError
    from sdlora.data.source import DataError
    from sdlora.tracking import TrackingError

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    parser = argparse.ArgumentParser(prog=f"pipelines/{stage}.py", description=f"DVC stage {stage}")
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    if stage == "train":
        parser.add_argument("--task", type=int, required=True, help="the task index k")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        kwargs = {"task": args.task} if stage == "train" else {}
        run = getattr(importlib.import_module(f"sdlora.stages.{stage}"), f"{stage}_stage")
        result = run(cfg, **kwargs)
    except (
        ConfigError,
        StageError,
        DataError,
        TrackingError,
        AdapterMismatchError,
        FileExistsError,
    ) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 2
    if stage in ("evaluate", "report"):
        print(json.dumps(result if stage == "evaluate" else result["metrics"], indent=2))
    return 0
