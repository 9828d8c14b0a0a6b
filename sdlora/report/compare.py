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
from sdlora.core.diagnostics import interpolation_path
from sdlora.core.evaluate import evaluate
from sdlora.core.loop import Learner, SequenceResult, run_sequence
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


def run_variant(
    variant: Variant, prepared: str | Path, learn: Learner | None = None, diagnostics: bool = True
) -> dict[str, Any]:
    """Train and evaluate one (label, seed) through ``run_sequence``; measure its merged model.

    ``learn``: how each task trains (default in this process; the reproduction kit passes Ray
    Train's :func:`sdlora.ops.ray_train.ray_learner`). ``diagnostics``: also record the NCM
    drift and the low-loss path (extra evaluation passes). Returns the run's payload
    (:func:`sdlora.report.sequence.result_payload`) with the label, seed, method, training
    time, the NCM drift per task and the inference figures.
    """
    cfg = variant.cfg
    device = resolve_device(cfg.device)
    last: dict[str, Any] = {}
    path: dict[str, list[float]] | None = None
    path_seconds = 0.0

    def keep(task: int, model: SDLoRAViT, result: SequenceResult) -> None:
        nonlocal path, path_seconds
        last["model"] = model
        if result.joint or task > 1 or not diagnostics:
            return
        begin = time.perf_counter()
        with torch_threads(cfg.train.threads):
            if task == 0:
                last["after_task_0"] = model.merge()
            else:  # Finding 3: from the model after task 0 to the one after task 1
                path = interpolation_path(last.pop("after_task_0"), model.merge(), prepared,
                                          cfg, device)  # fmt: skip
        path_seconds += time.perf_counter() - begin

    start = time.perf_counter()
    joint = method_class(cfg.model.method).trains_jointly
    result = run_sequence(cfg, prepared, learn=learn, ncm=diagnostics and not joint,
                          on_task_end=keep)  # fmt: skip
    seconds = time.perf_counter() - start - path_seconds
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
        "low_loss_path": path,  # tasks 0 and 1 along the merged deltas' line (Finding 3)
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
        stats = [x for k in CSV_STATS for x in metrics.tidy(row[k] or ("", ""))]
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
    """``table.md``, ``table.csv``, ``metrics.json``, ``kd_residuals.csv``,
    ``low_loss_path.csv``, the curve, the KD residual, NCM drift, low-loss path and SD-LoRA
    magnitude plots, under ``out``; returns them by name."""
    out = Path(out)
    paths = {
        "table": out / "table.md", "csv": out / "table.csv", "metrics": out / "metrics.json",
        "kd": out / "kd_residuals.csv", "curve": out / "accuracy_curve.png",
        "kd_plot": out / "kd_residual.png", "drift_plot": out / "ncm_drift.png",
        "path": out / "low_loss_path.csv", "path_plot": out / "low_loss_path.png",
        "magnitudes_plot": out / "magnitudes.png",
    }  # fmt: skip
    write_text(paths["table"], f"# {title}\n\n" + markdown_table(rows))
    write_text(paths["csv"], csv_table(rows))
    write_json(paths["metrics"], metrics.tidy({
        r["label"]: {k: (None if r[k] is None else r[k][0]) for k in
                     ("final_accuracy", "average_anytime_accuracy", "forgetting",
                      "backward_transfer", "stored_params")}
        for r in rows
    }))  # fmt: skip
    kd = metrics.tidy(kd_residuals(runs))
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
    write_text(paths["path"], path_csv(runs))
    plots.low_loss_path_plot(path_means(runs, PATH_METHODS), paths["path_plot"],
                             len({r["seed"] for r in runs}))  # fmt: skip
    label, history = magnitude_means(runs)
    plots.magnitude_trajectories(
        history or [np.zeros((0, 1))], paths["magnitudes_plot"],
        title=f"{label}: task magnitudes across the sequence (mean over seeds)" if label else None,
    )  # fmt: skip
    return paths


PATH_METHODS = ("sdlora", "seq_lora")  # Finding 3's figure: SD-LoRA against vanilla LoRA


def path_csv(runs: list[dict[str, Any]]) -> str:
    """Every run's low-loss path as CSV rows (label, seed, lam, task_0, task_1)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "method", "seed", "lam", "task_0", "task_1"])
    for r in runs:
        p = r.get("low_loss_path") or {"lam": [], "task_0": [], "task_1": []}
        for lam, a0, a1 in zip(p["lam"], p["task_0"], p["task_1"], strict=True):
            w.writerow([r["label"], r["method"], r["seed"], f"{lam:.1f}", f"{a0:.2f}", f"{a1:.2f}"])
    return buf.getvalue()


def path_means(runs: list[dict[str, Any]], methods: Iterable[str]) -> dict[str, dict[str, list]]:
    """Per method of ``methods``, its first label's low-loss path, mean over that label's seeds."""
    out: dict[str, dict[str, list]] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method and r.get("low_loss_path")]
        if not mine:
            continue
        label = mine[0]["label"]
        paths = [r["low_loss_path"] for r in mine if r["label"] == label]
        out[label] = {
            "lam": paths[0]["lam"],
            **{k: np.mean([p[k] for p in paths], axis=0).tolist() for k in ("task_0", "task_1")},
        }
    return out


def magnitude_means(runs: list[dict[str, Any]]) -> tuple[str | None, list[np.ndarray]]:
    """The first SD-LoRA label's magnitudes after each task (mean over its seeds): Finding 2."""
    mine = [r for r in runs if r["method"] == "sdlora" and not r["joint"]]
    if not mine:
        return None, []
    label = mine[0]["label"]
    seeds = [r for r in mine if r["label"] == label]
    steps = len(seeds[0]["tasks"])
    history = [
        np.mean([np.asarray(r["tasks"][i]["magnitudes"], dtype=float) for r in seeds], axis=0)
        for i in range(steps)
    ]
    return label, history


def run_comparison(
    variants: list[Variant],
    prepared_for: Callable[[int], Path],
    on_run: Callable[[int, Variant, dict[str, Any]], None] | None = None,
    learner_for: Callable[[Variant, Path], Learner] | None = None,
    diagnostics: bool = True,
) -> list[dict[str, Any]]:
    """Run every variant in order (seed by seed, so each seed's splits are prepared once);
    ``on_run(i, variant, run)`` after each (the stage prints and tracks it there).
    ``learner_for(variant, prepared)``: how its tasks train (default: in this process)."""
    runs = []
    for i, v in enumerate(variants):
        prepared = prepared_for(v.seed)
        learn = None if learner_for is None else learner_for(v, prepared)
        run = run_variant(v, prepared, learn, diagnostics)
        runs.append(run)
        if on_run is not None:
            on_run(i, v, run)
    return runs


def labels_of(variants: Iterable[Variant]) -> list[str]:
    """The labels in their params order."""
    return list(dict.fromkeys(v.label for v in variants))
