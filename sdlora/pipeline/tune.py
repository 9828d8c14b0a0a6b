"""Stage ``tune`` (``tune/dvc.yaml``; not part of the default ``dvc repro``): a Ray Tune sweep of
whole task sequences over ``space`` (tune/params.yaml) on the pipeline's splits and backbone.

The sweep's name is a hash of everything its trials depend on (params, data, weights, the
sweep's own settings), so a sweep cut by a kill or a crash is restored with
``Tuner.restore`` when the stage runs again with the same settings: finished trials are kept,
unfinished ones start again. Ray Tune's folders live under ``storage_path`` of tune/params.yaml
(default
``runs/tune/ray``), outside DVC's outputs, so ``dvc repro`` never deletes them. The trials
table, the Pareto front (CSV, PNG), the best params file and the metrics go to
``results/tune/`` (in git, like ``results/``); MLflow gets a parent run with a child per trial.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from sdlora.config import (
    TUNE_RUNTIME_KEYS,
    Config,
    ConfigError,
    RunInputs,
    TuneSettings,
    digest,
    identity,
)
from sdlora.core.loop import check_prepared
from sdlora.ops.ray_session import ensure_ray
from sdlora.ops.ray_tune import check_trials, concurrency, run_sweep, trial_need, trial_rows
from sdlora.pipeline.layout import BACKBONE_DIR, PREPARED_DIR, TUNE_RESULTS, read_inputs
from sdlora.pipeline.preflight import check_backbone
from sdlora.report.tune import COLUMN, EXP_RUN, SweepError, write_outputs


def sweep_name(cfg: Config, settings: TuneSettings, inputs: RunInputs) -> str:
    """``tune-<dataset>-<hash>``: the pipeline's identity (:func:`sdlora.config.identity`)
    and the sweep's own settings, so a re-run with the same ones restores a cut sweep instead
    of starting over, and any change that alters the trials' numbers starts a new one."""
    search = settings.model_dump(mode="json", exclude=set(TUNE_RUNTIME_KEYS))
    return f"tune-{cfg.data.dataset}-{digest([identity(cfg, inputs), search], 10)}"


def _table(rows: list[dict[str, Any]], keys: list[str], col: str) -> str:
    """The trials as aligned text, best first; * marks the Pareto front, > the best."""
    head = ["", "trial", *keys, "status", "tasks", col, "stored params"]
    lines = [head]
    order = sorted(rows, key=lambda r: (r["status"] != "finished", -(r[col] or 0)))
    for r in order:
        mark = (">" if r.get("best") else " ") + ("*" if r.get("pareto") else " ")
        values = [f"{r[k]:.4g}" if isinstance(r[k], float) else json.dumps(r[k]) for k in keys]
        figure = "" if r[col] is None else f"{r[col]:.2f}"
        stored = "" if r["stored_params"] is None else f"{r['stored_params']:,}"
        lines.append([mark, r["trial"], *values, r["status"], str(r["tasks"]), figure, stored])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n"  # fmt: skip


def tune_stage(
    cfg: Config,
    settings: TuneSettings,
    *,
    params: str | Path = "params.yaml",
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    results: str | Path = TUNE_RESULTS,
    track: bool = True,
) -> dict[str, Any]:
    """Run (or restore) the sweep of ``settings`` (``tune/params.yaml``) over ``params``; write
    ``results``; return the best row."""
    import ray

    if "://" in settings.storage_path:
        raise ConfigError(
            f"tune/params.yaml: storage_path = {settings.storage_path!r}: give a file system "
            "path (on a "
            "cluster, one every node mounts at the same place)"
        )
    check_trials(params, settings)  # every value a trial could get, before reading inputs
    prepared = check_prepared(prepared, cfg, len(cfg.tasks or {}) or None)  # opened once
    inputs = read_inputs(prepared, backbone)
    name = sweep_name(cfg, settings, inputs)
    check_backbone(cfg)
    keys = sorted(settings.space)
    num_tasks = prepared.num_tasks
    started = not ray.is_initialized()
    ensure_ray(cfg.ray.address)
    try:
        cluster = ray.cluster_resources()
        at_once = concurrency(settings, cfg.ray, cluster, cfg.device)  # the deadlock rule
        need = trial_need(settings, cfg.ray, cfg.device)["CPU"]
        folder = Path(settings.storage_path) / name
        grid = math.prod(len(v["grid"]) for v in settings.space.values() if "grid" in v)
        print(
            f"tune: sweep {name}: {settings.num_samples * grid} trials of {num_tasks} tasks over "
            f"{len(keys)} searched key(s) ({', '.join(keys)}) on {cfg.data.dataset}, "
            f"{settings.trial_mode} mode, up to "
            f"{at_once} at once ({need:g} of the cluster's {cluster.get('CPU', 0):g} CPUs "
            f"each); Ray Tune's folder {folder}",
            flush=True,
        )
        begin = time.perf_counter()
        sweep = run_sweep(
            params, prepared, settings, name=name, inputs=inputs, ray=cfg.ray,
            experiment=cfg.mlflow.experiment if track else None,
            tracking_uri=cfg.mlflow.tracking_uri,
        )  # fmt: skip
        seconds = time.perf_counter() - begin
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    rows = trial_rows(sweep.grid, num_tasks, keys, sweep.first_report_s)
    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        where = "; ".join(f"trial {r['trial']}: {Path(r['path']) / 'error.txt'}" for r in failed)
        raise SweepError(
            f"{len(failed)} of {len(rows)} trial(s) failed ({where}); fix the cause and run "
            "the stage again: it restores the sweep and retries them"
        )
    overheads = [r["overhead_s"] for r in rows if r["overhead_s"] is not None]
    summary = {
        "trials": len(rows),
        "finished": sum(r["status"] == "finished" for r in rows),
        "stopped_early": sum(r["status"] == "stopped" for r in rows),
        "wall_seconds": round(seconds, 1),
        "mean_overhead_s": round(sum(overheads) / len(overheads), 2) if overheads else None,
    }
    title = f"{cfg.data.dataset}, {num_tasks} tasks: {len(rows)} trials of sweep {name}"
    best, paths = write_outputs(
        rows, keys, settings.fixed, objective=settings.objective, budget=settings.storage_budget,
        name=name, results=results, title=title, summary=summary,
    )  # fmt: skip
    col = COLUMN[settings.objective]
    print(_table(rows, keys, col), end="")
    restored = " (restored: finished trials were kept)" if sweep.restored else ""
    print(
        f"tune: {len(rows)} trials in {seconds / 60:.1f} min{restored}: {summary['finished']} "
        f"finished, {summary['stopped_early']} stopped by ASHA; * the Pareto front, > the best "
        f"for {settings.objective}: trial {best['trial']}, {best[col]:.2f}% with "
        f"{best['stored_params']:,} stored params\n"
        f"tune: apply it to the pipeline: {EXP_RUN} {paths['best']}",
        flush=True,
    )
    return {"best": dict(best), "paths": {k: str(v) for k, v in paths.items()}}
