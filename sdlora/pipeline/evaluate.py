"""Stage ``evaluate``: the accuracy matrix, ``metrics.json``, the curve and the plots.

``metrics.json``, the curve's CSV and the two images ``dvc plots`` shows (the accuracy heatmap
and the magnitudes) go to ``results/`` (``METRICS_FILE``, ``CURVE_FILE``, ``HEATMAP_FILE``,
``MAGNITUDES_FILE`` in :mod:`sdlora.pipeline.layout`), outside DVC's cache: git keeps
them with ``dvc.lock``, so the committed default is the baseline ``dvc metrics diff`` and ``dvc
plots diff`` compare against, and a fresh clone shows its plots before anything has run.
Everything else (matrix, records) goes to the cached ``runs/pipeline/eval``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdlora.config import Config
from sdlora.core import metrics
from sdlora.core.records import accuracy_matrix
from sdlora.files import atomic_directory, atomic_path, write_json, write_text
from sdlora.pipeline.layout import (
    CURVE_FILE,
    EVAL_DIR,
    HEATMAP_FILE,
    MAGNITUDES_FILE,
    METRICS_FILE,
    RECORD,
    StageError,
    read_record,
    require_plan,
)
from sdlora.report import plots

MARKER = "results.json"  # every eval folder holds it (what atomic_directory may replace)


def _write_image(draw: Callable[[Path], Any], path: Path) -> None:
    """``draw(file)`` into a scratch folder, then the image to ``path`` atomically."""
    with tempfile.TemporaryDirectory() as scratch:
        drawn = Path(scratch) / path.name  # matplotlib picks the format from the suffix
        draw(drawn)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(drawn.read_bytes())


def evaluate_stage(
    cfg: Config,
    *,
    record: str | Path | None = None,
    out: str | Path = EVAL_DIR,
    metrics_file: str | Path = METRICS_FILE,
    curve_file: str | Path = CURVE_FILE,
    heatmap_file: str | Path = HEATMAP_FILE,
    magnitudes_file: str | Path = MAGNITUDES_FILE,
) -> dict[str, Any]:
    """Stage ``evaluate``: the accuracy matrix, ``metrics.json``, the curve and the plots.

    ``record``: the last task's output (default ``final_task``); ``out``: the cached folder
    (``runs/pipeline/eval``); ``metrics_file``, ``curve_file``, ``heatmap_file``,
    ``magnitudes_file``: what git keeps (``results/metrics.json``, ``accuracy_curve.csv``,
    ``accuracy_matrix.png``, ``magnitudes.png``).
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
    with atomic_directory(out, marker=MARKER) as tmp:
        metrics.write_matrix_csv(tmp / "accuracy_matrix.csv", R, counts)
        plots.accuracy_curve(summary["anytime_accuracy"], tmp / "accuracy_curve.png")
        write_json(
            tmp / "results.json",
            {"summary": summary, "counts": counts, "key": rec["key"], "tasks": records},
        )
    rows = "".join(f"{i},{a:.4f}\n" for i, a in enumerate(summary["anytime_accuracy"]))
    write_text(curve_file, "task,accuracy\n" + rows)
    final = metrics.tidy(final)  # as people read them (dvc metrics show, MLflow)
    write_text(metrics_file, json.dumps(final, indent=2) + "\n")
    _write_image(lambda f: plots.accuracy_heatmap(R, f), Path(heatmap_file))
    magnitude_rows = [np.asarray(r["magnitudes"]) for r in records]
    _write_image(lambda f: plots.magnitude_trajectories(magnitude_rows, f), Path(magnitudes_file))
    return final
