"""Stage ``evaluate``: the accuracy matrix, ``metrics.json``, the curve and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdlora import metrics, plots
from sdlora.atomic import atomic_directory, write_json
from sdlora.config import Config
from sdlora.plan import EVAL_DIR
from sdlora.stages.cli import add_dir, run_stage, stage_parser
from sdlora.stages.records import RECORD, StageError, accuracy_matrix, read_record, require_plan

METRICS = "metrics.json"  # the final scalars (dvc metrics show)
CURVE = "accuracy_curve.csv"  # anytime accuracy per task (dvc plots show)


def evaluate_stage(
    cfg: Config, *, record: str | Path | None = None, out: str | Path = EVAL_DIR
) -> dict[str, Any]:
    """Stage ``evaluate``: the accuracy matrix, ``metrics.json``, the curve and the plots.

    ``record``: the last task's output (default ``final_task``); ``out``: ``runs/pipeline/eval``.
    """
    plan = require_plan(cfg)
    assert cfg.final_task is not None  # the config validator pairs it with tasks
    final_task = cfg.final_task if record is None else record
    rec = read_record(final_task)
    records = rec["tasks"]
    if len(records) != len(plan):
        raise StageError(f"{final_task}/{RECORD} holds {len(records)} tasks, not {len(plan)}")
    R = accuracy_matrix(records)
    counts = records[-1]["counts"]
    summary = metrics.summarize(R, counts)
    storage = records[-1]["storage"]
    final = {
        "final_accuracy": summary["final_accuracy"],
        "average_anytime_accuracy": summary["average_anytime_accuracy"],
        "forgetting": summary["forgetting"],
        "backward_transfer": summary["backward_transfer"],
        "num_tasks": summary["num_tasks"],
        "stored_params": storage["stored_params"],
        "stored_bytes": storage["stored_bytes"],
    }
    with atomic_directory(out, marker=METRICS) as tmp:
        metrics.write_matrix_csv(tmp / "accuracy_matrix.csv", R, counts)
        write_json(tmp / METRICS, final)
        rows = "".join(f"{i},{a:.4f}\n" for i, a in enumerate(summary["anytime_accuracy"]))
        (tmp / CURVE).write_text("task,accuracy\n" + rows)
        plots.accuracy_heatmap(R, tmp / "accuracy_matrix.png")
        plots.accuracy_curve(summary["anytime_accuracy"], tmp / "accuracy_curve.png")
        plots.magnitude_trajectories(
            [np.asarray(r["magnitudes"]) for r in records], tmp / "magnitudes.png"
        )
        write_json(
            tmp / "results.json",
            {"summary": summary, "counts": counts, "key": rec["key"], "tasks": records},
        )
    return final


def main(argv: list[str] | None = None) -> int:
    """``pipelines/evaluate.py [--params P] [--record DIR] [--out DIR]``; prints the metrics."""
    parser = stage_parser("evaluate", "Accuracy matrix, metrics.json and plots of the sequence.")
    add_dir(parser, "--record", "the last task's output", None, "final_task")
    add_dir(parser, "--out", "output folder", EVAL_DIR)
    return run_stage(
        "evaluate",
        parser,
        argv,
        lambda cfg, args: evaluate_stage(cfg, record=args.record, out=args.out),
        show=lambda final: final,
    )
