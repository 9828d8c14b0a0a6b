"""What a sweep leaves: the trials table, the accuracy-vs-storage Pareto front, and the best
configuration as a params file that ``dvc exp run`` applies (:func:`exp_run_args`).

Rows come from :func:`sdlora.ops.ray_tune.trial_rows`. Only trials that ran every task are ranked:
a trial ASHA stopped was measured on fewer classes, so its accuracy is not comparable.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sdlora.config import ConfigError, read_params
from sdlora.core.metrics import tidy
from sdlora.errors import Failed
from sdlora.files import write_json, write_text
from sdlora.report.plots import pareto_plot

COLUMN = {"final_accuracy": "accuracy", "average_anytime_accuracy": "average_anytime_accuracy"}
TRIALS = "trials.csv"  # every trial: params, how it ended, its figures
PARETO = "pareto.csv"  # the front's trials (DVC plot: stored_params vs accuracy)
PARETO_PNG = "pareto.png"  # every trial, the front highlighted
BEST = "best_params.yaml"  # the best trial's params changes: `sdlora exp-run` applies them
METRICS = "metrics.json"  # the best trial's figures and the sweep's counts (DVC metrics)
EXP_RUN = "python -m sdlora exp-run"


class SweepError(Failed, RuntimeError):
    """A sweep whose trials cannot give a result (all failed or stopped)."""


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (stored parameters, accuracy) that no other point beats: none has
    at most the storage and at least the accuracy with one of them strictly better. Sorted by
    storage."""
    front = []
    for i, (s_i, a_i) in enumerate(points):
        dominated = any(
            s_j <= s_i and a_j >= a_i and (s_j < s_i or a_j > a_i)
            for j, (s_j, a_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def front_of(rows: Sequence[Mapping[str, Any]], objective: str) -> list[int]:
    """Indices into ``rows`` of the finished trials no other finished trial beats on both
    stored parameters (fewer) and ``objective`` (higher), by storage."""
    done = [i for i, r in enumerate(rows) if r["status"] == "finished"]
    col = COLUMN[objective]
    points = [(float(rows[i]["stored_params"]), float(rows[i][col])) for i in done]
    return [done[k] for k in pareto_front(points)]


def best_row(
    rows: Sequence[Mapping[str, Any]], objective: str, budget: int | None
) -> Mapping[str, Any]:
    """The finished trial with the highest ``objective`` among those storing at most
    ``budget`` parameters (ties: the smaller one). Raises :class:`SweepError` when no trial
    finished and :class:`ConfigError` when none fits the budget."""
    done = [r for r in rows if r["status"] == "finished"]
    if not done:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("stopped", "error")}
        raise SweepError(
            f"no trial ran every task ({counts['stopped']} stopped by ASHA, {counts['error']} "
            "failed): raise num_samples or grace_period in tune/params.yaml, or fix the failures "
            "above"
        )
    fits = [r for r in done if budget is None or r["stored_params"] <= budget]
    if not fits:
        least = min(r["stored_params"] for r in done)
        raise ConfigError(
            f"storage_budget = {budget:,} (tune/params.yaml): no finished trial stores that few "
            "parameters "
            f"(the fewest: {least:,}); raise it, set it to null, or search smaller ranks"
        )
    col = COLUMN[objective]
    return max(fits, key=lambda r: (r[col], -r["stored_params"]))


def _value(value: Any) -> str:
    """``value`` as YAML that reads back as itself: a plain word when YAML keeps it a string,
    else JSON (a YAML subset: floats keep every digit, lists stay lists, None is null)."""
    if isinstance(value, str) and yaml.safe_load(value) == value and value.strip() == value:
        return value
    return json.dumps(value)


def exp_run_args(changes: Mapping[str, Any]) -> list[str]:
    """``dvc exp run``'s ``-S key=value`` flags for dotted-key ``changes`` (DVC reads each
    value as YAML)."""
    args = []
    for key, value in changes.items():
        args += ["-S", f"{key}={_value(value)}"]
    return args


def read_best(path: str | Path) -> dict[str, Any]:
    """The dotted-key changes in a best-params file (:data:`BEST`); ConfigError if it is not
    a mapping of dotted keys."""
    raw = read_params(path)
    bad = [k for k in raw if not isinstance(k, str) or "." not in k]
    if bad:
        raise ConfigError(
            f"{path}: expected dotted params keys such as train.lr, got {bad}; give a file "
            f"the tune stage wrote ({BEST})"
        )
    return raw


def _csv(rows: Sequence[Mapping[str, Any]], columns: list[str], keys: list[str]) -> str:
    """``rows`` as CSV; the searched ``keys`` as YAML values (null, [[0, 10], [2, 6]])."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _value(v) if k in keys else tidy(v) for k, v in r.items()})
    return out.getvalue()


def write_outputs(
    rows: list[dict[str, Any]],
    keys: list[str],
    fixed: Mapping[str, Any],
    *,
    objective: str,
    budget: int | None,
    name: str,
    results: str | Path,
    title: str,
    summary: Mapping[str, Any],
) -> tuple[Mapping[str, Any], dict[str, Path]]:
    """Write the trials table, the front (CSV and PNG), the best params file and the metrics
    into ``results``; return the best row and the paths. ``summary``: the sweep's counts and
    times, added to the metrics."""
    results = Path(results)
    best = best_row(rows, objective, budget)  # before any write: a failed sweep writes nothing
    front = front_of(rows, objective)
    on_front = {rows[i]["trial"] for i in front}
    for r in rows:
        r["pareto"] = r["trial"] in on_front
        r["best"] = r["trial"] == best["trial"]
    columns = ["trial", *keys, "status", "tasks", "accuracy", "average_anytime_accuracy",
               "forgetting", "stored_params", "pareto", "best", "first_report_s", "overhead_s",
               "seconds"]  # fmt: skip
    paths = {k: results / f for k, f in
             (("trials", TRIALS), ("pareto", PARETO), ("plot", PARETO_PNG), ("best", BEST),
              ("metrics", METRICS))}  # fmt: skip
    write_text(paths["trials"], _csv(rows, columns, keys))
    write_text(paths["pareto"], _csv([rows[i] for i in front], columns, keys))
    pareto_plot(rows, front, paths["plot"], title, COLUMN[objective], budget)
    changes = {**fixed, **{k: best[k] for k in keys}}
    col = COLUMN[objective]
    command = shlex.join(["dvc", "exp", "run", *exp_run_args(changes)])
    header = [
        f"The best trial of sweep {name} for {objective}"
        + (f" within {budget:,} stored parameters" if budget is not None else "")
        + f": trial {best['trial']}, {best[col]:.2f}% with {best['stored_params']:,} stored "
        "parameters.",
        "Its params changes (dotted keys). Apply them to the pipeline as a DVC experiment:",
        f"  {EXP_RUN} {paths['best']}",
        "which runs",
        f"  {command}",
    ]
    body = "".join(f"{k}: {_value(v)}\n" for k, v in changes.items())
    write_text(paths["best"], "".join(f"# {ln}\n" for ln in header) + body)
    write_json(
        paths["metrics"],
        tidy(
            {
                "best_trial": best["trial"],
                "best_final_accuracy": best["accuracy"],
                "best_average_anytime_accuracy": best["average_anytime_accuracy"],
                "best_forgetting": best["forgetting"],
                "best_stored_params": best["stored_params"],
                "pareto_trials": len(front),
                **summary,
            }
        ),
    )
    return best, paths
