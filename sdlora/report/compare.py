"""Every method over several seeds on the same splits: the comparison the article's tables make.

``methods`` in compare/params.yaml maps a label to the params.yaml keys it changes (``{}`` is
the file as it is; ``{model.method: seq_lora}``; SD-LoRA-RR is
``{model.rank_schedule: [...]}``), and ``seeds`` lists the seeds. Each (label, seed) runs through
:func:`sdlora.core.loop.run_sequence`, the pipeline's own loop, data path and evaluator, on the
seed's prepared splits, which every method shares; then the merged model is measured at
inference. :func:`summarize_runs` turns the runs into one row per label (mean and standard
deviation over seeds), :func:`write_outputs` into the table (Markdown and CSV), the curves and
the diagnostics (SD-LoRA-KD's residual per task, the task-known NCM drift).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora.config import CompareConfig, Config, ConfigError, load_config
from sdlora.core import metrics
from sdlora.core.evaluate import evaluate
from sdlora.core.loop import SequenceResult, run_sequence
from sdlora.core.methods import method_class
from sdlora.core.model import SDLoRAViT
from sdlora.core.train import resolve_device, torch_threads
from sdlora.files import write_json, write_text
from sdlora.report import plots
from sdlora.report.sequence import result_payload

# (column, key of a run's "summary" or of the run itself, digits); mean ± std over seeds
METRIC_COLUMNS = (
    ("final acc", "final_accuracy", 2),
    ("AAA", "average_anytime_accuracy", 2),
    ("forgetting", "forgetting", 2),
    ("BWT", "backward_transfer", 2),
    ("NCM drop", "ncm_drop", 2),
)


@dataclass(frozen=True)
class Variant:
    """One run of the comparison: a label of compare/params.yaml at one seed, with its config."""

    label: str
    seed: int
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.label}-s{self.seed}"


def plan_variants(params: str | Path, settings: CompareConfig) -> list[Variant]:
    """Every (label, seed) of ``settings`` over ``params`` as a validated config, before
    anything trains.

    A label whose changes do not make a valid params file is an error naming the label.
    """
    out = []
    for seed in settings.seeds:
        for label, changes in settings.methods.items():
            try:
                cfg = load_config(params, {**changes, "seed": seed, "progress": False})
            except ConfigError as err:
                raise ConfigError(f"methods.{label} changes {changes}: {err}") from None
            out.append(Variant(label, seed, cfg))
    return out


def old_task_drift(rows: list[list[float]]) -> list[float]:
    """Per task i >= 1: mean over earlier tasks j of (row j's own score - row i's), i.e. how far
    the task-known NCM accuracy of old tasks fell since each was learned (feature drift)."""
    m = metrics.lower_triangular(rows)
    return [float(np.mean(np.diag(m)[:i] - m[i, :i])) for i in range(1, m.shape[0])]


@torch.no_grad()
def inference_cost(
    model: SDLoRAViT, prepared: str | Path, cfg: Config, num_tasks: int
) -> dict[str, float]:
    """The merged model at inference (SPEC §5): its parameters, those beyond the backbone and
    head (0 after a merge), and images per second over the test splits of tasks
    ``0..num_tasks-1``, against the unmerged model's."""
    device = resolve_device(cfg.device)
    merged = model.merge()
    tasks = range(num_tasks)
    rates = {}
    for name, net in (("merged", merged), ("unmerged", model)):
        start = time.perf_counter()
        _, counts = evaluate(net, prepared, tasks, cfg, device)
        rates[name] = sum(counts) / (time.perf_counter() - start)
    params = sum(p.numel() for p in merged.parameters())
    backbone = model.storage()["backbone_params"]
    head = sum(t.numel() for t in model.head.full_weight())
    return {
        "params": float(params),
        "extra_params": float(params - backbone - head),
        "images_per_second": rates["merged"],
        "unmerged_images_per_second": rates["unmerged"],
    }


def run_variant(variant: Variant, prepared: str | Path) -> dict[str, Any]:
    """Train and evaluate one (label, seed) through ``run_sequence``; measure its merged model.

    Returns the run's payload (:func:`sdlora.report.sequence.result_payload`) with the label, seed,
    method, training time, the NCM drift per task and the inference figures.
    """
    cfg = variant.cfg
    last: dict[str, SDLoRAViT] = {}

    def keep(task: int, model: SDLoRAViT, result: SequenceResult) -> None:
        last["model"] = model

    start = time.perf_counter()
    joint = method_class(cfg.model.method).trains_jointly
    result = run_sequence(cfg, prepared, ncm=not joint, on_task_end=keep)
    seconds = time.perf_counter() - start
    with torch_threads(cfg.train.threads):
        inference = inference_cost(last["model"], prepared, cfg, len(result.counts))
    drift = old_task_drift(result.ncm_rows) if result.ncm_rows else []
    return {
        "label": variant.label,
        "seed": variant.seed,
        "method": cfg.model.method,
        "joint": joint,  # trained every task at once: one row, no curve
        "seconds": seconds,
        "ncm_drift": drift,
        "ncm_drop": drift[-1] if drift else None,
        "inference": inference,
        **result_payload(result),
    }


def _mean_std(values: Iterable[float | None]) -> tuple[float, float] | None:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v))


def summarize_runs(runs: list[dict[str, Any]], labels: Iterable[str]) -> list[dict[str, Any]]:
    """One row per label, in ``labels`` order: mean and std over its seeds of every metric,
    stored parameters and bytes after the last task, inference figures, KD folds, time."""
    rows = []
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        if not mine:
            continue
        last = [r["tasks"][-1] for r in mine]
        row: dict[str, Any] = {
            "label": label,
            "method": mine[0]["method"],
            "joint": mine[0]["joint"],
            "seeds": [r["seed"] for r in mine],
        }
        for _, key, _ in METRIC_COLUMNS:
            src = [r.get(key) if key == "ncm_drop" else r["summary"].get(key) for r in mine]
            row[key] = _mean_std(src)
        row["stored_params"] = _mean_std(t["storage"]["stored_params"] for t in last)
        row["stored_bytes"] = _mean_std(t["storage"]["stored_bytes"] for t in last)
        row["backbone_params"] = last[0]["storage"]["backbone_params"]
        for key in ("params", "extra_params", "images_per_second"):
            row[f"inference_{key}"] = _mean_std(r["inference"][key] for r in mine)
        kd = [t["kd"] for r in mine for t in r["tasks"] if "kd" in t]
        row["kd_folded"] = (sum(bool(k["folded"]) for k in kd), len(kd)) if kd else None
        row["kd_tau"] = kd[0]["tau"] if kd else None
        row["seconds"] = _mean_std(r["seconds"] for r in mine)
        row["anytime_accuracy"] = np.mean(
            [r["summary"]["anytime_accuracy"] for r in mine], axis=0
        ).tolist()
        rows.append(row)
    return rows


def _fmt(stat: tuple[float, float] | None, digits: int = 2, n: int = 2) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


TABLE_HEADER = (
    "method", "seeds", "final acc", "AAA", "forgetting", "BWT", "NCM drop", "stored params",
    "stored bytes", "inference params (extra)", "inference img/s", "KD folds", "s/run",
)  # fmt: skip


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The Markdown table's cells: mean ± std over seeds; — where a metric does not apply."""
    out = []
    for row in rows:
        n = len(row["seeds"])
        stored = row["stored_params"][0]
        share = 100 * stored / row["backbone_params"]
        folds = row["kd_folded"]
        out.append([
            row["label"],
            ",".join(map(str, row["seeds"])),
            *(_fmt(row[key], d, n) for _, key, d in METRIC_COLUMNS),
            f"{stored:,.0f} ({share:.1f}%)",
            f"{row['stored_bytes'][0]:,.0f}",
            f"{row['inference_params'][0]:,.0f} (+{row['inference_extra_params'][0]:,.0f})",
            f"{row['inference_images_per_second'][0]:,.0f}",
            f"{folds[0]}/{folds[1]} at τ={row['kd_tau']:g}" if folds else "—",
            f"{row['seconds'][0]:.0f}",
        ])  # fmt: skip
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (one line per method)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + " --- |" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines) + "\n"


CSV_STATS = ("final_accuracy", "average_anytime_accuracy", "forgetting", "backward_transfer",
             "ncm_drop", "stored_params", "stored_bytes", "inference_params",
             "inference_extra_params", "inference_images_per_second", "seconds")  # fmt: skip


def csv_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as CSV: a mean and a std column per figure (empty where it does not apply)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "base_method", "seeds", *(f"{k}_{s}" for k in CSV_STATS
                                                    for s in ("mean", "std")),
                "kd_folded", "kd_tasks", "kd_tau"])  # fmt: skip
    for row in rows:
        stats = [x for k in CSV_STATS for x in (row[k] or ("", ""))]
        folds = row["kd_folded"] or ("", "")
        w.writerow([row["label"], row["method"], " ".join(map(str, row["seeds"])), *stats,
                    *folds, "" if row["kd_tau"] is None else row["kd_tau"]])  # fmt: skip
    return buf.getvalue()


def kd_residuals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SD-LoRA-KD's fit per task: label, seed, task, rho, residual, tau, folded, accuracies."""
    out = []
    for r in runs:
        for t in r["tasks"]:
            if "kd" in t:
                k = t["kd"]
                out.append({"method": r["label"], "seed": r["seed"], "task": t["task"],
                            "rho": k["rho"], "residual": k["residual"], "tau": k["tau"],
                            "folded": bool(k["folded"]),
                            "accuracy_before_fold": k.get("accuracy_before_fold"),
                            "accuracy_after_fold": k.get("accuracy_after_fold")})  # fmt: skip
    return out


def write_outputs(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], out: str | Path, title: str
) -> dict[str, Path]:
    """``table.md``, ``table.csv``, ``metrics.json``, ``kd_residuals.csv``, the curve, the KD
    residual and the NCM drift plots, under ``out``; returns them by name."""
    out = Path(out)
    paths = {
        "table": out / "table.md", "csv": out / "table.csv", "metrics": out / "metrics.json",
        "kd": out / "kd_residuals.csv", "curve": out / "accuracy_curve.png",
        "kd_plot": out / "kd_residual.png", "drift_plot": out / "ncm_drift.png",
    }  # fmt: skip
    write_text(paths["table"], f"# {title}\n\n" + markdown_table(rows))
    write_text(paths["csv"], csv_table(rows))
    write_json(paths["metrics"], {
        r["label"]: {k: (None if r[k] is None else r[k][0]) for k in
                     ("final_accuracy", "average_anytime_accuracy", "forgetting",
                      "backward_transfer", "stored_params")}
        for r in rows
    })  # fmt: skip
    kd = kd_residuals(runs)
    buf = io.StringIO()
    fields = ["method", "seed", "task", "rho", "residual", "tau", "folded",
              "accuracy_before_fold", "accuracy_after_fold"]  # fmt: skip
    w = csv.DictWriter(buf, fields, lineterminator="\n")
    w.writeheader()
    w.writerows(kd)
    write_text(paths["kd"], buf.getvalue())
    curves = {r["label"]: r["anytime_accuracy"] for r in rows if not r["joint"]}
    joint = {r["label"]: r["final_accuracy"][0] for r in rows if r["joint"]}
    plots.comparison_curve(curves, joint, paths["curve"], title=title)
    plots.kd_residual_plot(kd, paths["kd_plot"])
    drift = {
        r["label"]: np.mean([x["ncm_drift"] for x in runs if x["label"] == r["label"]], axis=0)
        for r in rows
        if not r["joint"] and r["ncm_drop"] is not None
    }
    plots.drift_plot(drift, paths["drift_plot"])
    return paths


def run_comparison(
    variants: list[Variant],
    prepared_for: Callable[[int], Path],
    on_run: Callable[[int, Variant, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every variant in order (seed by seed, so each seed's splits are prepared once);
    ``on_run(i, variant, run)`` after each (the stage prints and tracks it there)."""
    runs = []
    for i, v in enumerate(variants):
        run = run_variant(v, prepared_for(v.seed))
        runs.append(run)
        if on_run is not None:
            on_run(i, v, run)
    return runs


def labels_of(variants: Iterable[Variant]) -> list[str]:
    """The labels in their params order."""
    return list(dict.fromkeys(v.label for v in variants))
