"""Write a sequence run's outputs: accuracy matrix CSV, metrics JSON and a readable table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sdlora.atomic import atomic_path
from sdlora.metrics import write_matrix_csv
from sdlora.plots import accuracy_curve, accuracy_heatmap
from sdlora.train import SequenceResult


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def result_payload(result: SequenceResult) -> dict:
    """Everything measured, as plain JSON types."""

    def rows(m: np.ndarray | None) -> list | None:
        return None if m is None else [[None if np.isnan(v) else float(v) for v in r] for r in m]

    n = result.completed
    ncm = None if result.ncm_matrix is None else result.ncm_matrix[:n, :n]
    head = None if result.head_known_matrix is None else result.head_known_matrix[:n, :n]
    return {
        "summary": result.summary,
        "accuracy_matrix": rows(result.matrix[:n, :n]),
        "ncm_task_known_matrix": rows(ncm),
        "head_task_known_matrix": rows(head),
        "test_counts": result.counts[:n],
        "storage": result.storage,
        "tasks": [asdict(t) for t in result.tasks],
    }


def write_sequence_outputs(result: SequenceResult, out_dir: str | Path) -> dict[str, Path]:
    """``accuracy_matrix.csv`` (with counts), ``metrics.json`` and two plots under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = result.completed
    paths = {"matrix": out / "accuracy_matrix.csv", "metrics": out / "metrics.json"}
    write_matrix_csv(paths["matrix"], result.matrix[:n, :n], result.counts[:n])
    write_json(paths["metrics"], result_payload(result))
    paths["heatmap"] = accuracy_heatmap(result.matrix[:n, :n], out / "accuracy_matrix.png")
    paths["curve"] = accuracy_curve(result.summary["anytime_accuracy"], out / "accuracy_curve.png")
    return paths


def format_matrix(matrix: np.ndarray) -> str:
    """The accuracy matrix as aligned text, one row per task trained."""
    t = matrix.shape[0]
    lines = ["after  " + " ".join(f"task{j:<3d}" for j in range(t))]
    for i in range(t):
        cells = " ".join("   -   " if np.isnan(v) else f"{v:7.2f}" for v in matrix[i])
        lines.append(f"{i:5d}  {cells}")
    return "\n".join(lines)
