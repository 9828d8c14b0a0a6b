"""The comparison's arithmetic on hand-made runs: drift, means over seeds, the table's cells."""

from __future__ import annotations

import pytest

from sdlora.report.compare import csv_table, markdown_table, old_task_drift, summarize_runs


def test_old_task_drift_is_the_mean_drop_since_each_task_was_learned() -> None:
    rows = [[90.0], [85.0, 80.0], [70.0, 75.0, 60.0]]
    # after task 1: task 0 fell 90 -> 85; after task 2: task 0 90 -> 70, task 1 80 -> 75
    assert old_task_drift(rows) == [5.0, pytest.approx(12.5)]


def _run(label: str, seed: int, final: float, forgetting: float | None, stored: int) -> dict:
    task = {"storage": {"stored_params": stored, "stored_bytes": 4 * stored,
                        "backbone_params": 1000}}  # fmt: skip
    return {
        "label": label, "seed": seed, "method": label, "joint": label == "joint",
        "seconds": 10.0 + seed,
        "ncm_drop": None, "ncm_drift": [],
        "summary": {"final_accuracy": final, "average_anytime_accuracy": final + 5,
                    "forgetting": forgetting, "backward_transfer": None,
                    "anytime_accuracy": [final + 10, final]},
        "tasks": [task],
        "inference": {"params": 1100.0, "extra_params": 0.0, "images_per_second": 50.0},
    }  # fmt: skip


def test_rows_are_means_and_stds_over_seeds_in_the_params_order() -> None:
    runs = [_run("b", 0, 60.0, 10.0, 200), _run("a", 0, 80.0, None, 100),
            _run("b", 1, 70.0, 20.0, 200)]  # fmt: skip
    rows = summarize_runs(runs, ["b", "a"])
    assert [r["label"] for r in rows] == ["b", "a"] and rows[0]["seeds"] == [0, 1]
    assert rows[0]["final_accuracy"] == (65.0, 5.0) and rows[0]["forgetting"] == (15.0, 5.0)
    assert rows[1]["forgetting"] is None and rows[0]["anytime_accuracy"] == [75.0, 65.0]
    table = markdown_table(rows).splitlines()
    assert table[2].startswith("| b | 0,1 | 65.00 ± 5.00 | 70.00 ± 5.00 | 15.00 ± 5.00 | — |")
    assert "| a | 0 | 80.00 | 85.00 | — |" in table[3] and "100 (10.0%)" in table[3]
    lines = csv_table(rows).splitlines()
    assert lines[0].startswith("method,base_method,seeds,final_accuracy_mean,final_accuracy_std")
    assert lines[2].startswith("a,a,0,80.0,0.0,85.0,0.0,,,")
