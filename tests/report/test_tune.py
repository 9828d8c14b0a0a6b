"""What a sweep leaves (sdlora.report.tune): the best trial for an objective and a storage
budget, the front, the best params file and the `dvc exp run` flags it becomes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from sdlora.config import ConfigError
from sdlora.report.tune import (
    SweepError,
    best_row,
    exp_run_args,
    front_of,
    pareto_front,
    read_best,
    write_outputs,
)


def _row(trial: str, status: str, acc: float, aaa: float, stored: int, **params) -> dict:
    return {"trial": trial, "status": status, "tasks": 5 if status == "finished" else 2,
            "accuracy": acc, "average_anytime_accuracy": aaa, "forgetting": 10.0,
            "stored_params": stored, "first_report_s": 2.0, "overhead_s": 0.5, "seconds": 9.0,
            "node": "n1", "path": f"/x/{trial}", **params}  # fmt: skip


RR = [[0, 10], [2, 6]]
ROWS = [
    _row("a", "finished", 60.0, 80.0, 200_000, **{"train.lr": 0.001, "model.rank_schedule": None}),
    _row("b", "finished", 58.0, 82.0, 120_000, **{"train.lr": 0.002, "model.rank_schedule": RR}),
    _row("c", "finished", 50.0, 70.0, 150_000, **{"train.lr": 0.003, "model.rank_schedule": None}),
    _row("d", "stopped", 90.0, 95.0, 50_000, **{"train.lr": 0.004, "model.rank_schedule": None}),
]  # fmt: skip


def test_the_best_trial_is_the_finished_one_with_the_objective_highest_within_the_budget() -> None:
    assert best_row(ROWS, "final_accuracy", None)["trial"] == "a"  # d stopped: not comparable
    assert best_row(ROWS, "average_anytime_accuracy", None)["trial"] == "b"
    assert best_row(ROWS, "final_accuracy", 150_000)["trial"] == "b"
    with pytest.raises(ConfigError, match=r"budget = 100,000 \(tune/params.yaml\): no finished "
                       r"trial stores that few parameters \(the fewest: 120,000\)"):  # fmt: skip
        best_row(ROWS, "final_accuracy", 100_000)
    with pytest.raises(SweepError, match=r"no trial ran every task \(1 stopped by ASHA, 0 fail"):
        best_row(ROWS[3:], "final_accuracy", None)


def test_the_front_holds_the_finished_trials_nothing_beats() -> None:
    assert [ROWS[i]["trial"] for i in front_of(ROWS, "final_accuracy")] == ["b", "a"]  # c loses
    assert [ROWS[i]["trial"] for i in front_of(ROWS, "average_anytime_accuracy")] == ["b"]


def test_exp_run_flags_read_back_as_the_same_values() -> None:
    changes = {"train.lr": 0.0017721628137324138, "model.rank_schedule": RR,
               "model.method": "sdlora_kd", "model.blocks": None, "data.x": "yes"}  # fmt: skip
    args = exp_run_args(changes)
    assert args[:2] == ["-S", "train.lr=0.0017721628137324138"]
    assert "model.method=sdlora_kd" in args and 'data.x="yes"' in args  # yes: a bool
    pairs = [a.split("=", 1) for a in args[1::2]]
    assert {k: yaml.safe_load(v) for k, v in pairs} == changes  # DVC reads -S values as YAML


def test_the_outputs_name_the_best_trial_and_its_file_applies_it(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    keys = ["model.rank_schedule", "train.lr"]
    best, paths = write_outputs(
        rows, keys, {"model.method": "sdlora_kd"}, objective="final_accuracy", budget=None,
        name="tune-x", results=tmp_path, title="t", summary={"trials": 4, "wall_seconds": 1.0},
    )  # fmt: skip
    assert best["trial"] == "a"
    assert read_best(paths["best"]) == {"model.method": "sdlora_kd", "model.rank_schedule": None,
                                        "train.lr": 0.001}  # fmt: skip
    text = paths["best"].read_text()
    assert "python -m sdlora exp-run" in text
    assert "dvc exp run -S model.method=sdlora_kd -S model.rank_schedule=null" in text
    table = list(csv.DictReader(paths["trials"].open()))
    assert [r["trial"] for r in table] == ["a", "b", "c", "d"]
    assert [r["pareto"] for r in table] == ["True", "True", "False", "False"]
    assert table[1]["model.rank_schedule"] == "[[0, 10], [2, 6]]" and table[0]["best"] == "True"
    assert [r["trial"] for r in csv.DictReader(paths["pareto"].open())] == ["b", "a"]
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["best_trial"] == "a" and metrics["best_final_accuracy"] == 60.0
    assert metrics["pareto_trials"] == 2 and metrics["trials"] == 4
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_is_written_when_no_trial_finished(tmp_path: Path) -> None:
    with pytest.raises(SweepError):
        write_outputs(
            [dict(ROWS[3])], ["train.lr"], {}, objective="final_accuracy", budget=None,
            name="tune-x", results=tmp_path / "out", title="t", summary={},
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_best_params_file_must_hold_dotted_keys(tmp_path: Path) -> None:
    bad = tmp_path / "best.yaml"
    bad.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"expected dotted params keys such as train.lr"):
        read_best(bad)


def test_the_pareto_front_keeps_what_nothing_beats_on_both_storage_and_accuracy() -> None:
    points = [(100.0, 60.0), (50.0, 60.0), (50.0, 55.0), (200.0, 70.0), (150.0, 65.0),
              (150.0, 64.0), (300.0, 70.0)]  # fmt: skip
    # (100, 60) loses to (50, 60); (50, 55) to (50, 60); (150, 64) to (150, 65); (300, 70)
    # to (200, 70)
    assert pareto_front(points) == [1, 4, 3]
    assert pareto_front([(1.0, 1.0)]) == [0] and pareto_front([]) == []
