"""Stage ``compare`` (``compare/dvc.yaml``; not part of the default ``dvc repro``): every
``methods`` (compare/params.yaml) entry over ``seeds`` on the same splits, one table.

Each seed's splits are prepared once into ``runs/compare/prepared/seed<k>`` by the prepare
stage's function; every method of that seed reads them. Each (method, seed) runs through
:func:`sdlora.report.compare.run_variant` (``sdlora run``'s loop, data path and evaluator), writes
its
JSON to ``runs/compare/runs/`` and gets its MLflow run (the sequence's run: the same key as the
pipeline's for the same params, tagged ``sdlora.compare`` = label and ``sdlora.seed``). The
table, CSV, curve and diagnostics go to ``results/compare/`` (in git, like ``results/``), and
into one more MLflow run, ``compare-<dataset>-...``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sdlora.config import CompareConfig, Config, RunInputs, check_pipeline_method, digest, identity
from sdlora.core.records import task_metrics
from sdlora.data.prepare import TASK_FILE, open_prepared, prepare, task_dir
from sdlora.files import write_json
from sdlora.ops.tracking import SequenceTracker
from sdlora.pipeline.layout import BACKBONE_DIR, COMPARE_DIR, COMPARE_RESULTS, read_inputs
from sdlora.pipeline.mlflow_run import command_tag, open_run
from sdlora.pipeline.preflight import check_backbone
from sdlora.report import compare


def prepared_for_seed(out: Path, cfg: Config, seed: int) -> Path:
    """The seed's splits under ``out/prepared/seed<k>`` (prepared once by the prepare stage's
    function, shared by every method of the seed)."""
    folder = out / "prepared" / f"seed{seed}"
    if not (folder / task_dir(0) / TASK_FILE).is_file():
        prepare(cfg.data, seed=seed, out=folder)
    return folder


def _joint_metrics(run: dict[str, Any]) -> dict[str, float]:
    """Joint training's one row, at step 0: what task_metrics gives a sequence's task."""
    rec = run["tasks"][0]
    return {
        "accuracy": float(run["summary"]["final_accuracy"]),
        **{f"accuracy_task_{j:02d}": float(a) for j, a in enumerate(rec["accuracy"])},
        "stored_params": float(rec["storage"]["stored_params"]),
        "stored_bytes": float(rec["storage"]["stored_bytes"]),
    }


def track_run(
    variant: compare.Variant,
    run: dict[str, Any],
    prepared: Path,
    backbone: str | Path,
    stage: str = "compare",
    tags: dict[str, Any] | None = None,
) -> str:
    """The (method, seed) run in MLflow: per-task metrics, final metrics, its JSON; run id.
    ``stage`` and ``tags`` (default: ``sdlora.compare`` = the label) say who ran it."""
    records = run["tasks"]
    joint = run["joint"]
    cfg = variant.cfg
    tracker = open_run(
        cfg, records, 0 if joint else len(records), stage=stage,
        inputs=read_inputs(open_prepared(prepared), backbone),
        name=f"{variant.label}-{cfg.data.dataset}-{len(cfg.tasks or records)}tasks-s{variant.seed}",
        tags={**(tags or {"sdlora.compare": variant.label}), "sdlora.seed": variant.seed},
    )  # fmt: skip
    try:
        if joint:
            tracker.log_task(0, _joint_metrics(run))
        elif not tracker.created:  # the pipeline's run of the same sequence: fill what it lacks
            for j in range(len(records)):
                tracker.log_task(j, task_metrics(records, j))
        s = run["summary"]
        final = {
            "final_accuracy": s["final_accuracy"],
            "average_anytime_accuracy": s["average_anytime_accuracy"],
            "forgetting": s["forgetting"],
            "backward_transfer": s["backward_transfer"],
            "sequence_seconds": run["seconds"],
            "inference_images_per_second": run["inference"]["images_per_second"],
            "inference_extra_params": run["inference"]["extra_params"],
            "ncm_drop": run["ncm_drop"],
        }
        tracker.log_task(len(records) - 1, {k: float(v) for k, v in final.items() if v is not None})
        run_id = tracker.run_id
        tracker.close()
    except BaseException:
        tracker.close("FAILED")
        raise
    return str(run_id)


def summary_key(variants: list[compare.Variant], inputs: dict[int, RunInputs]) -> str:
    """The comparison's MLflow key: every (label, seed) run's identity
    (:func:`sdlora.config.identity`, ``inputs`` by seed), so the same comparison finds its
    summary run again and any change to what one run computes makes a new one."""
    return digest([[v.label, identity(v.cfg, inputs[v.seed])] for v in variants])


def track_summary(
    cfg: Config,
    paths: dict[str, Path],
    rows: list[dict[str, Any]],
    key: str,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> str:
    """One MLflow run holding the comparison's table and plots, and each method's means (and
    the published figures a row carries, as the reproduction kit's do). ``run_name`` and
    ``tags`` default to the compare stage's."""
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri, cfg.mlflow.experiment,
        run_name=run_name or f"compare-{cfg.data.dataset}-{len(cfg.tasks or {})}tasks-{key[:8]}",
        key=key,
        tags=tags or {"sdlora.compare": "summary", command_tag("compare"): "pipelines/compare.py"},
    )  # fmt: skip
    with tracker:
        for row in rows:
            means = {
                f"{row['label']}.{k}": row[k][0]
                for k in ("final_accuracy", "average_anytime_accuracy", "forgetting")
                if row[k] is not None
            }
            for k, v in (row.get("published") or {}).items():
                means[f"{row['label']}.published.{k}"] = v
            tracker.log_task(0, means)
        tracker.log_artifacts(sorted(paths.values()))
        return str(tracker.run_id)


def compare_stage(
    cfg: Config,
    settings: CompareConfig,
    *,
    params: str | Path = "params.yaml",
    backbone: str = BACKBONE_DIR,
    out: str | Path = COMPARE_DIR,
    results: str | Path = COMPARE_RESULTS,
    track: bool = True,
) -> dict[str, Any]:
    """Run the comparison of ``settings`` (``compare/params.yaml``) over ``params``; write
    ``results`` and the per-run JSON under ``out``; return the rows.

    Every (method, seed) config is validated and the backbone loaded before anything trains.
    """
    check_pipeline_method(cfg)  # the base file is the pipeline's: a per-task method
    variants = compare.plan_variants(params, settings)
    check_backbone(cfg)
    out = Path(out)
    labels = compare.labels_of(variants)
    seeds = settings.seeds
    print(
        f"compare: {len(variants)} runs ({len(labels)} methods x {len(seeds)} "
        f"seed{'s' * (len(seeds) != 1)}) on "
        f"{cfg.data.dataset}; table and plots in {results}/",
        flush=True,
    )
    start = time.perf_counter()

    (out / "runs").mkdir(parents=True, exist_ok=True)

    def on_run(i: int, variant: compare.Variant, run: dict[str, Any]) -> None:
        write_json(out / "runs" / f"{variant.name}.json", run)
        if track:
            track_run(variant, run, out / "prepared" / f"seed{variant.seed}", backbone)
        s = run["summary"]
        forgetting = "—" if s["forgetting"] is None else f"{s['forgetting']:.2f}"
        left = (time.perf_counter() - start) / (i + 1) * (len(variants) - i - 1)
        print(
            f"compare [{i + 1}/{len(variants)}] {variant.label} seed {variant.seed}: final "
            f"{s['final_accuracy']:.2f}, AAA {s['average_anytime_accuracy']:.2f}, forgetting "
            f"{forgetting} ({run['seconds']:.0f} s; about {left / 60:.0f} min left)",
            flush=True,
        )

    runs = compare.run_comparison(variants, lambda seed: prepared_for_seed(out, cfg, seed), on_run)
    rows = compare.summarize_runs(runs, labels)
    title = f"{cfg.data.dataset}, {len(cfg.tasks or {})} tasks, seeds {', '.join(map(str, seeds))}"
    paths = compare.write_outputs(runs, rows, results, title)
    if track:
        inputs = [
            read_inputs(open_prepared(out / "prepared" / f"seed{s}"), backbone) for s in seeds
        ]
        track_summary(
            cfg, paths, rows, summary_key(variants, dict(zip(seeds, inputs, strict=True)))
        )
    print(compare.markdown_table(rows), end="")
    print(f"compare: {len(variants)} runs in {(time.perf_counter() - start) / 60:.1f} min")
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}}
