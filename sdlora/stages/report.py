"""Stage ``report``: final metrics, plots and the merged model into MLflow; a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora.atomic import atomic_directory, write_json
from sdlora.checkpoint import load_adapter
from sdlora.config import Config
from sdlora.distributed import ADAPTER
from sdlora.plan import BACKBONE_DIR, EVAL_DIR, PREPARED_DIR, REPORT_DIR
from sdlora.stages.cli import add_dir, run_stage, stage_parser
from sdlora.stages.evaluate import METRICS
from sdlora.stages.mlflow_run import open_run
from sdlora.stages.records import (
    accuracy_matrix,
    read_json,
    read_record,
    require_plan,
    task_metrics,
)
from sdlora.train import build_model


def _num(v: float, digits: int) -> str:
    """A training figure, or "-" for a task trained without epochs (NaN)."""
    return "-" if v != v else f"{v:.{digits}f}"


def _cell(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _format_report(cfg: Config, final: dict[str, Any], records: list[dict], run_id: str) -> str:
    R = accuracy_matrix(records)
    lines = [
        f"# {cfg.model.method} on {cfg.data.dataset}: {len(records)} tasks, seed {cfg.seed}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in final.items()),
        "",
        "## Accuracy after each task (%)",
        "",
        "| after | " + " | ".join(f"task {j}" for j in range(len(records))) + " |",
        "|---" * (len(records) + 1) + "|",
    ]
    for i in range(len(records)):
        cells = ["" if np.isnan(v) else f"{v:.2f}" for v in R[i]]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training",
        "",
        "| task | classes | rank | train loss | s/epoch | samples/s | stored params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = task_metrics(records, r["task"])
        lines.append(
            f"| {r['task']} | {r['num_classes']} | {r['rank']} | {_num(m['train_loss'], 4)} | "
            f"{_num(m['epoch_seconds'], 2)} | {_num(m['samples_per_second'], 0)} | "
            f"{r['storage']['stored_params']:,} |"
        )
    lines += ["", f"MLflow run `{run_id}` in experiment `{cfg.mlflow.experiment}`.", ""]
    return "\n".join(lines)


def report_stage(
    cfg: Config,
    *,
    eval_dir: str | Path = EVAL_DIR,
    record: str | Path | None = None,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    out: str | Path = REPORT_DIR,
) -> dict[str, Any]:
    """Stage ``report``: final metrics, plots and the merged model into the MLflow run; a summary.

    The merged model is a plain timm ViT (every adapter folded into the weights) logged as an
    MLflow PyTorch model with an input example from task 0's test split. Inputs: the evaluate
    stage's output ``eval_dir``, the last task's output ``record`` (default ``final_task``),
    the prepare and pretrain stages' outputs; ``out``: ``runs/pipeline/report``.
    """
    from sdlora.train import task_stream

    require_plan(cfg)
    assert cfg.final_task is not None
    final_task = Path(cfg.final_task if record is None else record)
    records = read_record(final_task)["tasks"]
    eval_dir = Path(eval_dir)
    final = read_json(eval_dir / METRICS, "the evaluate stage's output", "run `dvc repro`")
    model = build_model(cfg, torch.device("cpu"))
    load_adapter(model, final_task / ADAPTER)
    merged = model.merge().eval()
    stream = task_stream(prepared, 0, "test", cfg, model.backbone)  # as evaluation reads it
    example = next(iter(torch.utils.data.DataLoader(stream, batch_size=2)))[0]
    with (
        atomic_directory(out, marker="run.json") as tmp,
        open_run(
            cfg, records, backfill=len(records), prepared=prepared, backbone=backbone
        ) as tracker,
    ):
        tracker.log_task(len(records) - 1, final)
        tracker.log_artifacts(sorted(p for p in eval_dir.iterdir() if p.is_file()), "evaluate")
        info = tracker.log_model(merged, example, name="merged_model")
        payload = {
            "mlflow_run_id": tracker.run_id,
            "experiment": cfg.mlflow.experiment,
            "model_uri": info.model_uri,
            "metrics": final,
        }
        (tmp / "report.md").write_text(_format_report(cfg, final, records, tracker.run_id))
        write_json(tmp / "run.json", payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """``pipelines/report.py [--params P] [--eval DIR] [--record DIR] [--prepared DIR]
    [--backbone DIR] [--out DIR]``; prints the metrics."""
    parser = stage_parser("report", "Final metrics, plots and the merged model to MLflow.")
    add_dir(parser, "--eval", "the evaluate stage's output", EVAL_DIR, dest="eval_dir")
    add_dir(parser, "--record", "the last task's output", None, "final_task")
    add_dir(parser, "--prepared", "the prepare stage's output", PREPARED_DIR)
    add_dir(parser, "--backbone", "the pretrain stage's output", BACKBONE_DIR)
    add_dir(parser, "--out", "output folder", REPORT_DIR)
    return run_stage(
        "report",
        parser,
        argv,
        lambda cfg, args: report_stage(
            cfg,
            eval_dir=args.eval_dir,
            record=args.record,
            prepared=args.prepared,
            backbone=args.backbone,
            out=args.out,
        ),
        show=lambda payload: payload["metrics"],
    )
