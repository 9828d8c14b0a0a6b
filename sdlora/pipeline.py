"""The DVC pipeline's stages as library functions; ``pipelines/*.py`` parse arguments and call them.

``prepare`` -> ``pretrain`` -> ``train@0`` ... ``train@T-1`` -> ``evaluate`` -> ``report``
(paths in :mod:`sdlora.plan`). Every stage writes its output folder atomically: a failed or
killed stage leaves the previous output or none, never half of one.

- ``train@k`` trains task k on Ray Train (:func:`sdlora.distributed.train_task_distributed`,
  streaming its Parquet split), evaluates every task seen so far on the driver, logs the task to
  the sequence's MLflow run (step = k) and writes ``task_XX/`` = the adapter after ``end_task``,
  the epoch log and ``record.json`` (every task's record so far, the run key and run id).
- Ray's run folder is named after a hash of everything task k depends on, so a killed stage
  resumes from its last epoch checkpoint when re-run, and a re-run of a finished stage restores
  the finished state instead of training again (the output is then bit-identical).
- The MLflow run is found by the whole sequence's key (:data:`sdlora.tracking.KEY_TAG`): a
  re-run stage continues the same run; a run created after earlier tasks were trained (a changed
  later-task setting, a new tracking store) first gets their metrics from ``record.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora import metrics, plots
from sdlora.atomic import atomic_directory
from sdlora.checkpoint import load_adapter
from sdlora.config import EMBEDDED_DATASETS, ON_DISK_DATASETS, Config, ConfigError, TaskEntry
from sdlora.data.prepare import read_manifest
from sdlora.distributed import ADAPTER, train_task_distributed
from sdlora.evaluate import evaluate_prepared
from sdlora.plan import (
    BACKBONE_DIR,
    EVAL_DIR,
    OVERRIDES,
    PREPARED_DIR,
    REPORT_DIR,
    WRITE_COMMAND,
    count_tasks,
    task_output,
)
from sdlora.report import write_json
from sdlora.tracking import SequenceTracker, flatten_params
from sdlora.train import build_model, resolve_device

RECORD = "record.json"  # in every task output
BACKBONE_RECORD = "backbone.json"  # in the pretrain output
METRICS = "metrics.json"  # in the evaluate output: the final scalars (dvc metrics show)
CURVE = "accuracy_curve.csv"  # in the evaluate output: anytime accuracy per task (dvc plots)


class StageError(RuntimeError):
    """A stage cannot run: an input is missing or does not belong to this configuration."""


# ---- the task plan -------------------------------------------------------------------------------


def require_plan(cfg: Config) -> dict[int, TaskEntry]:
    """The ``tasks`` section; a clear error when params.yaml has none."""
    if cfg.tasks is None:
        raise ConfigError(f"tasks: params.yaml has no tasks section; run `{WRITE_COMMAND}`")
    return cfg.tasks


def num_tasks_of(cfg: Config) -> int:
    """How many tasks ``data.*`` makes (the on-disk folder is listed if its class count varies)."""
    total = {**EMBEDDED_DATASETS, **ON_DISK_DATASETS}.get(cfg.data.dataset)
    if total is None:
        from sdlora.data.benchmarks import open_source

        total = open_source(cfg.data).num_classes
    return count_tasks(total, cfg.data.init_cls, cfg.data.increment)


# ---- keys: what a stage's result depends on ------------------------------------------------------


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: {what} is missing; {fix}") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{path} is not valid JSON ({err}); {fix}") from None


def read_backbone_record() -> dict[str, Any]:
    """``artifacts/backbone/backbone.json``, written by the pretrain stage."""
    return _read_json(
        Path(BACKBONE_DIR) / BACKBONE_RECORD, "the pretrain stage's output", "run `dvc repro`"
    )


def read_record(folder: str | Path) -> dict[str, Any]:
    """A task output's ``record.json``."""
    return _read_json(Path(folder) / RECORD, "a train stage's output", "run `dvc repro`")


def sequence_key(cfg: Config, upto: int | None = None) -> str:
    """Hash of what tasks ``0..upto`` (default all) depend on: config, data, backbone weights.

    Not included: where and how wide it runs (``ray``, ``mlflow``, ``device`` is), progress
    bars, and the entries of later tasks.
    """
    raw = cfg.model_dump(mode="json", exclude={"progress", "ray", "mlflow", "final_task"})
    if upto is not None:
        raw["tasks"] = {k: v for k, v in (raw["tasks"] or {}).items() if int(k) <= upto}
    raw["data_hash"] = read_manifest(PREPARED_DIR)["content_hash"]
    raw["backbone_sha256"] = read_backbone_record().get("sha256")
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def run_params(cfg: Config) -> dict[str, str]:
    """The MLflow run's params: the config (flat keys), task overrides, data and weights hashes."""
    raw = cfg.model_dump(mode="json", exclude={"progress", "ray", "mlflow", "tasks", "final_task"})
    params = flatten_params(raw)
    for k, entry in (cfg.tasks or {}).items():
        for name in OVERRIDES:
            if getattr(entry, name) is not None:
                params[f"tasks.{k}.{name}"] = str(getattr(entry, name))
    params["data.content_hash"] = read_manifest(PREPARED_DIR)["content_hash"]
    params["backbone.sha256"] = str(read_backbone_record().get("sha256"))
    return params


# ---- per-task metrics ----------------------------------------------------------------------------


def accuracy_matrix(records: list[dict[str, Any]]) -> np.ndarray:
    """The T x T matrix (percent, NaN above the diagonal) from records 0..T-1."""
    n = len(records)
    R = np.full((n, n), np.nan)
    for i, rec in enumerate(records):
        if rec["task"] != i or len(rec["accuracy"]) != i + 1:
            raise StageError(f"record of task {i} is malformed (task {rec['task']})")
        R[i, : i + 1] = rec["accuracy"]
    return R


def task_metrics(records: list[dict[str, Any]], task: int) -> dict[str, float]:
    """What MLflow gets at ``step=task``: accuracies, forgetting so far, storage, training cost."""
    R = accuracy_matrix(records[: task + 1])
    rec = records[task]
    seconds = [e["epoch_seconds"] for e in rec["epochs"]]
    out = {
        "accuracy": float(metrics.anytime_accuracy(R, rec["counts"])[-1]),
        "forgetting": metrics.forgetting_so_far(R, task),
        **{f"accuracy_task_{j:02d}": float(R[task, j]) for j in range(task + 1)},
        "stored_params": float(rec["storage"]["stored_params"]),
        "stored_bytes": float(rec["storage"]["stored_bytes"]),
        "train_loss": float(rec["epochs"][-1]["train_loss"]),
        "epoch_seconds": float(np.mean(seconds)),
        "samples_per_second": float(np.mean([e["samples_per_second"] for e in rec["epochs"]])),
        "rank": float(rec["rank"]),
    }
    return out


def _open_run(cfg: Config, records: list[dict[str, Any]], backfill: int) -> SequenceTracker:
    """Open (or reopen) the sequence's MLflow run; a new run gets tasks ``0..backfill-1``."""
    manifest = read_manifest(PREPARED_DIR)
    backbone = read_backbone_record()
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=f"{cfg.model.method}-{cfg.data.dataset}-{len(cfg.tasks or {})}tasks-s{cfg.seed}",
        key=sequence_key(cfg),
        params=run_params(cfg),
        tags={
            "sdlora.method": cfg.model.method,
            "sdlora.dataset": manifest["dataset"],
            "sdlora.backbone": cfg.backbone.name,
            "sdlora.backbone_weights": backbone.get("weights"),
            "sdlora.num_tasks": len(cfg.tasks or {}),
        },
    )
    if tracker.created:
        for j in range(backfill):
            tracker.log_task(j, task_metrics(records, j))
    return tracker


# ---- stages --------------------------------------------------------------------------------------


def prepare_stage(cfg: Config) -> dict[str, Any]:
    """Write ``data/prepared`` (see :mod:`sdlora.data.prepare`) after checking the task plan."""
    from sdlora.data.prepare import prepare

    require_plan(cfg)
    total = {**EMBEDDED_DATASETS, **ON_DISK_DATASETS}.get(cfg.data.dataset)
    if total is not None:  # fail before reading anything when the count is known
        cfg.check_num_tasks(count_tasks(total, cfg.data.init_cls, cfg.data.increment), "data.*")
    manifest = prepare(cfg.data, seed=cfg.seed, out=PREPARED_DIR, progress=cfg.progress)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{PREPARED_DIR}/manifest.json")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrain_stage(cfg: Config) -> dict[str, Any]:
    """Write ``artifacts/backbone``: ``backbone.json`` and, for the embedded default, the weights.

    Pre-training runs only when ``backbone.weights`` is a file inside ``artifacts/backbone``
    (the embedded default); with ``timm``, null or a file elsewhere it only records which
    backbone the run uses (and the file's SHA-256).
    """
    from sdlora.pretrain import pretrain_backbone

    out = Path(BACKBONE_DIR)
    weights = cfg.backbone.weights
    record: dict[str, Any] = {
        "name": cfg.backbone.name,
        "kwargs": dict(cfg.backbone.kwargs),
        "weights": weights,
        "sha256": None,
    }
    with atomic_directory(out, marker=BACKBONE_RECORD) as tmp:
        if weights in (None, "timm"):
            record["source"] = "timm pretrained weights" if weights else "random initialisation"
        elif Path(weights).resolve().is_relative_to(out.resolve()):
            target = tmp / Path(weights).resolve().relative_to(out.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            report = pretrain_backbone(cfg, target, progress=cfg.progress)
            report.path = weights
            write_json(target.with_suffix(".json"), asdict(report))
            record.update(source="pre-trained by this stage", pretrain=asdict(report))
            record["sha256"] = _sha256(target)
        elif Path(weights).is_file():
            record.update(source="weights file", sha256=_sha256(Path(weights)))
        else:
            raise ConfigError(
                f"backbone.weights = {weights!r}: no such file; give a .pth/.safetensors path, "
                f"'timm' or null (or a path under {BACKBONE_DIR}/ to pre-train the embedded one)"
            )
        write_json(tmp / BACKBONE_RECORD, record)
    return record


def train_stage(cfg: Config, task: int) -> dict[str, Any]:
    """Stage ``train@task``: train, evaluate tasks 0..task, track, write ``task_XX/``."""
    plan = require_plan(cfg)
    if task not in plan:
        raise ConfigError(f"tasks: no entry {task} (params.yaml lists tasks 0..{len(plan) - 1})")
    manifest = read_manifest(PREPARED_DIR)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{PREPARED_DIR}/manifest.json")
    records: list[dict[str, Any]] = []
    prev_adapter = None
    if task > 0:
        prev = Path(plan[task].prev)
        records = read_record(prev)["tasks"]
        if len(records) != task:
            raise StageError(f"{prev}/{RECORD} holds {len(records)} tasks, expected {task}")
        prev_adapter = prev / ADAPTER
    device = resolve_device(cfg.device)
    ray = cfg.ray
    with atomic_directory(task_output(task), marker=RECORD) as tmp:
        start = time.perf_counter()
        result = train_task_distributed(
            cfg,
            task,
            prev_adapter,
            PREPARED_DIR,
            tmp,
            num_workers=ray.num_workers,
            use_gpu=ray.use_gpu,
            cpus_per_worker=ray.cpus_per_worker,
            max_failures=ray.max_failures,
            storage_path=ray.storage_path,
            name=f"{sequence_key(cfg, upto=task)}-task{task:02d}",
            address=ray.address,
            threads_per_worker=max(1, int(ray.cpus_per_worker)),
        )
        train_seconds = time.perf_counter() - start
        model = build_model(cfg, torch.device("cpu"))
        load_adapter(model, tmp / ADAPTER)
        accs, counts = evaluate_prepared(
            model, model.backbone, PREPARED_DIR, range(task + 1), cfg, device
        )
        records.append(
            {
                "task": task,
                "num_classes": int(manifest["tasks"][task]["num_classes"]),
                "rank": cfg.rank_for_task(task),
                "accuracy": accs,
                "counts": counts,
                "epochs": result.epochs,
                "storage": model.storage(),
                "magnitudes": model.magnitudes.alpha.detach().cpu().tolist(),
            }
        )
        with _open_run(cfg, records, backfill=task) as tracker:
            tracker.log_task(task, {**task_metrics(records, task), "train_seconds": train_seconds})
            run_id = tracker.run_id
            if task < len(plan) - 1:
                tracker.close("RUNNING")  # the sequence goes on in the next stage
        payload = {"key": sequence_key(cfg), "mlflow_run_id": run_id, "tasks": records}
        write_json(tmp / RECORD, payload)
    return payload


def evaluate_stage(cfg: Config) -> dict[str, Any]:
    """Stage ``evaluate``: the accuracy matrix, ``metrics.json``, the curve and the plots."""
    plan = require_plan(cfg)
    assert cfg.final_task is not None  # the config validator pairs it with tasks
    rec = read_record(cfg.final_task)
    records = rec["tasks"]
    if len(records) != len(plan):
        raise StageError(f"{cfg.final_task}/{RECORD} holds {len(records)} tasks, not {len(plan)}")
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
    with atomic_directory(EVAL_DIR, marker=METRICS) as tmp:
        metrics.write_matrix_csv(tmp / "accuracy_matrix.csv", R, counts)
        write_json(tmp / METRICS, final)
        rows = "".join(f"{i},{a:.4f}\n" for i, a in enumerate(summary["anytime_accuracy"]))
        (tmp / CURVE).write_text("task,accuracy\n" + rows)
        plots.accuracy_heatmap(R, tmp / "accuracy_matrix.png")
        plots.accuracy_curve(summary["anytime_accuracy"], tmp / "accuracy_curve.png")
        plots.magnitude_trajectories(
            [np.asarray(r["magnitudes"]) for r in records], tmp / "magnitudes.png"
        )
        write_json(
            tmp / "results.json",
            {"summary": summary, "counts": counts, "key": rec["key"], "tasks": records},
        )
    return final


def _cell(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _format_report(cfg: Config, final: dict[str, Any], records: list[dict], run_id: str) -> str:
    R = accuracy_matrix(records)
    lines = [
        f"# {cfg.model.method} on {cfg.data.dataset}: {len(records)} tasks, seed {cfg.seed}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in final.items()),
        "",
        "## Accuracy after each task (%)",
        "",
        "| after | " + " | ".join(f"task {j}" for j in range(len(records))) + " |",
        "|---" * (len(records) + 1) + "|",
    ]
    for i in range(len(records)):
        cells = ["" if np.isnan(v) else f"{v:.2f}" for v in R[i]]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training",
        "",
        "| task | classes | rank | train loss | s/epoch | samples/s | stored params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = task_metrics(records, r["task"])
        lines.append(
            f"| {r['task']} | {r['num_classes']} | {r['rank']} | {m['train_loss']:.4f} | "
            f"{m['epoch_seconds']:.2f} | {m['samples_per_second']:.0f} | "
            f"{r['storage']['stored_params']:,} |"
        )
    lines += ["", f"MLflow run `{run_id}` in experiment `{cfg.mlflow.experiment}`.", ""]
    return "\n".join(lines)


def report_stage(cfg: Config) -> dict[str, Any]:
    """Stage ``report``: final metrics, plots and the merged model into the MLflow run; a summary.

    The merged model is a plain timm ViT (every adapter folded into the weights) logged as an
    MLflow PyTorch model with an input example from task 0's test split.
    """
    from sdlora.data.stream import open_task
    from sdlora.evaluate import stream_norm

    require_plan(cfg)
    assert cfg.final_task is not None
    records = read_record(cfg.final_task)["tasks"]
    eval_dir = Path(EVAL_DIR)
    final = _read_json(eval_dir / METRICS, "the evaluate stage's output", "run `dvc repro`")
    model = build_model(cfg, torch.device("cpu"))
    load_adapter(model, Path(cfg.final_task) / ADAPTER)
    merged = model.merge().eval()
    mean, std = stream_norm(cfg, model.backbone)
    size = cfg.data.image_size
    stream = open_task(PREPARED_DIR, 0, "test", size, mean, std, rank=0, world_size=1)
    example = next(iter(torch.utils.data.DataLoader(stream, batch_size=2)))[0]
    with (
        atomic_directory(REPORT_DIR, marker="run.json") as tmp,
        _open_run(cfg, records, backfill=len(records)) as tracker,
    ):
        tracker.log_task(len(records) - 1, final)
        tracker.log_artifacts(sorted(p for p in eval_dir.iterdir() if p.is_file()), "evaluate")
        info = tracker.log_model(merged, example, name="merged_model")
        payload = {
            "mlflow_run_id": tracker.run_id,
            "experiment": cfg.mlflow.experiment,
            "model_uri": info.model_uri,
            "metrics": final,
        }
        (tmp / "report.md").write_text(_format_report(cfg, final, records, tracker.run_id))
        write_json(tmp / "run.json", payload)
    return payload


# ---- command line (pipelines/*.py) ---------------------------------------------------------------

STAGES = {
    "prepare": prepare_stage,
    "pretrain": pretrain_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "report": report_stage,
}


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``pipelines/<stage>.py``: ``--params`` (and ``--task K`` for train).

    Bad input (config, missing or foreign inputs, corrupt data) exits with code 2 and one clear
    message on stderr; anything else (a crashed worker, say) keeps its traceback.
    """
    import argparse
    import sys

    from sdlora.checkpoint import AdapterMismatchError
    from sdlora.config import load_config
    from sdlora.data.source import DataError
    from sdlora.tracking import TrackingError

    parser = argparse.ArgumentParser(prog=f"pipelines/{stage}.py", description=f"DVC stage {stage}")
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    if stage == "train":
        parser.add_argument("--task", type=int, required=True, help="the task index k")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        kwargs = {"task": args.task} if stage == "train" else {}
        result = STAGES[stage](cfg, **kwargs)
    except (
        ConfigError,
        StageError,
        DataError,
        TrackingError,
        AdapterMismatchError,
        FileExistsError,
    ) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 2
    if stage in ("evaluate", "report"):
        print(json.dumps(result if stage == "evaluate" else result["metrics"], indent=2))
    return 0
