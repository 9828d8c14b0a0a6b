"""Write a sequence run's outputs: accuracy matrix CSV, metrics JSON and a readable table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdlora.core.loop import SequenceResult
from sdlora.core.metrics import write_matrix_csv
from sdlora.files import write_json, write_text
from sdlora.report.plots import accuracy_curve, accuracy_heatmap


def result_payload(result: SequenceResult) -> dict:
    """Everything measured, as plain JSON types: summary, matrix rows, diagnostics, records."""

    def rows(m: np.ndarray) -> list:
        return [[None if np.isnan(v) else float(v) for v in r] for r in m]

    return {
        "summary": result.summary,
        "accuracy_matrix": rows(result.matrix),
        "ncm_task_known_rows": result.ncm_rows or None,
        "head_task_known_rows": result.head_known_rows or None,
        "test_counts": result.counts,
        "tasks": result.records,
    }


def write_sequence_outputs(result: SequenceResult, out_dir: str | Path) -> dict[str, Path]:
    """``accuracy_matrix.csv`` (with counts), ``metrics.json`` and two plots under ``out_dir``;
    joint training: ``metrics.json`` and ``accuracy_row.csv`` (its one row, with counts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json"}
    write_json(paths["metrics"], result_payload(result))
    if result.joint:
        paths["row"] = out / "accuracy_row.csv"
        row = result.matrix[0]
        header = ",".join(f"task_{j}" for j in range(row.size))
        write_text(
            paths["row"],
            f"trained,{header}\nall_at_once,{','.join(repr(float(v)) for v in row)}\n"
            f"count,{','.join(str(c) for c in result.counts)}\n",
        )
        return paths
    paths["matrix"] = out / "accuracy_matrix.csv"
    write_matrix_csv(paths["matrix"], result.matrix, result.counts)
    paths["heatmap"] = accuracy_heatmap(result.matrix, out / "accuracy_matrix.png")
    paths["curve"] = accuracy_curve(result.summary["anytime_accuracy"], out / "accuracy_curve.png")
    return paths


def format_matrix(matrix: np.ndarray) -> str:
    """The accuracy matrix as aligned text, one row per task trained."""
    t = matrix.shape[0]  # joint training: one row over every task
    lines = ["after  " + " ".join(f"task{j:<3d}" for j in range(matrix.shape[1]))]
    for i in range(t):
        cells = " ".join("   -   " if np.isnan(v) else f"{v:7.2f}" for v in matrix[i])
        lines.append(f"{i:5d}  {cells}")
    return "\n".join(lines)
