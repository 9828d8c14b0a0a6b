"""Stage ``report``: final metrics, plots and the merged model into MLflow; a summary.

The merged model goes out as a plain timm checkpoint (:data:`TIMM_DIR`: ``model.safetensors`` +
``config.json`` with the class names and the preprocessing, :mod:`sdlora.core.export`) in the
report folder and in the run's artifacts, which ``timm.create_model`` turns back into a timm ViT;
and as the MLflow model :data:`MODEL_NAME`, that checkpoint served as a classifier (encoded images
in, class names out: :mod:`sdlora.ops.classifier_model`), ready for ``mlflow models serve``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora.config import Config
from sdlora.core.checkpoint import load_adapter
from sdlora.core.export import WEIGHTS, export_timm
from sdlora.core.records import accuracy_matrix, task_metrics
from sdlora.core.train import build_model, input_norm
from sdlora.data.prepare import Prepared, open_tasks
from sdlora.files import atomic_directory, write_json
from sdlora.ops.ray_train import ADAPTER
from sdlora.ops.tracking import git_commit, portable_uri, ui_path, ui_url
from sdlora.pipeline.layout import (
    BACKBONE_DIR,
    CURVE_FILE,
    EVAL_DIR,
    HEATMAP_FILE,
    MAGNITUDES_FILE,
    METRICS_FILE,
    PREPARED_DIR,
    REPORT_DIR,
    read_inputs,
    read_json,
    read_record,
    require_plan,
)
from sdlora.pipeline.mlflow_run import open_run
from sdlora.pipeline.registry import DECISION_TAG, VersionFacts, register_and_gate

TIMM_DIR = "merged_model_timm"  # in the report folder and the run's artifacts
MODEL_NAME = "merged_model"  # the MLflow logged model
WEIGHTS_TAG = "sdlora.weights_sha256"  # on the logged model: the timm weights file's hash


def _num(v: float, digits: int) -> str:
    """A training figure, or "-" for a task trained without epochs (NaN)."""
    return "-" if v != v else f"{v:.{digits}f}"


def _cell(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _format_report(
    cfg: Config, final: dict[str, Any], records: list[dict], run: dict[str, Any]
) -> str:
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
            f"| {r['task']} | {r['num_classes']} | {r['rank']} | {_num(m['train_loss'], 4)} | "
            f"{_num(m['epoch_seconds'], 2)} | {_num(m['samples_per_second'], 0)} | "
            f"{r['storage']['stored_params']:,} |"
        )
    lines += [
        "",
        "## Where things are",
        "",
        f"- MLflow run `{run['mlflow_run_id']}` in experiment `{run['experiment']}` "
        f"({run['tracking_uri']}); in the UI: `{run['ui']}`",
        f"- the merged model, MLflow: `{run['model_uri']}`, a classifier of encoded images "
        f"(`mlflow models serve -m {run['model_uri']} --env-manager local`, or "
        "`mlflow.pyfunc.load_model`)",
        f'- the merged model, timm: `{run["timm_model"]}` (`timm.create_model("local-dir:'
        f"{run['timm_model']}\", pretrained=True)`), also in the run's artifacts",
        "",
        *_format_registry(run["registry"]),
    ]
    return "\n".join(lines)


def _format_registry(reg: dict[str, Any]) -> list[str]:
    """The report's section on the registered version and the gate's decision."""
    name, version, alias = reg["registered_model"], reg["version"], reg["alias"]
    verdict = "promoted to `champion`" if alias == "champion" else "not promoted: `candidate`"
    lines = [
        "## Model registry",
        "",
        f"`{name}` version {version}: {verdict}. {reg['reason'][:1].upper()}{reg['reason'][1:]}.",
        "",
    ]
    if reg["figures"]:
        lines += ["| gate figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in reg["figures"].items()]
        lines.append("")
    lines += [
        f'Serve the champion: `mlflow models serve -m "models:/{name}@champion" --env-manager '
        'local --host 127.0.0.1`. Roll back or promote by moving the alias: `python -c "from '
        f"mlflow import MlflowClient; MlflowClient().set_registered_model_alias('{name}', "
        "'champion', 'VERSION')\"`.",
        "",
    ]
    return lines


def report_stage(
    cfg: Config,
    *,
    eval_dir: str | Path = EVAL_DIR,
    metrics_file: str | Path = METRICS_FILE,
    record: str | Path | None = None,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    out: str | Path = REPORT_DIR,
) -> dict[str, Any]:
    """Stage ``report``: final metrics, plots and the merged model into the MLflow run; a summary.

    The merged model is a plain timm ViT (every adapter folded into the weights) written as a
    timm checkpoint (:data:`TIMM_DIR`) and logged as a served classifier with two images of task
    0's test split as its input example, carrying the final metrics. Inputs: the evaluate
    stage's outputs ``eval_dir`` and ``metrics_file``, the last task's output ``record`` (default
    ``final_task``), the prepare and pretrain stages' outputs; ``out``: ``runs/pipeline/report``.
    """
    import pyarrow.parquet as pq

    require_plan(cfg)
    assert cfg.final_task is not None
    final_task = Path(cfg.final_task if record is None else record)
    records = read_record(final_task)["tasks"]
    eval_dir = Path(eval_dir)
    final = read_json(Path(metrics_file), "the evaluate stage's output", "run `dvc repro`")
    model = build_model(cfg, torch.device("cpu"))
    load_adapter(model, final_task / ADAPTER)
    merged = model.merge().eval()
    opened = open_tasks(cfg, len(records), prepared)  # the tasks' files, read once
    first = opened.files(0, "test")[0]
    examples = pq.read_table(first, columns=["image"]).column("image").to_pylist()[:2]  # encoded
    last = len(records) - 1
    with (
        atomic_directory(out, marker="run.json") as tmp,
        open_run(
            cfg, records, backfill=len(records), stage="report",
            inputs=read_inputs(opened, backbone),
        ) as tracker,
    ):  # fmt: skip
        tracker.log_task(last, final)
        kept = [Path(f) for f in (metrics_file, CURVE_FILE, HEATMAP_FILE, MAGNITUDES_FILE)]
        evaluated = [*(p for p in eval_dir.iterdir() if p.is_file()), *kept]  # git keeps `kept`
        timm_files = _export_merged(cfg, merged, model.backbone, opened, tmp / TIMM_DIR)
        with (tmp / TIMM_DIR / WEIGHTS).open("rb") as f:
            weights = {WEIGHTS_TAG: hashlib.file_digest(f, "sha256").hexdigest()}
        model_id = tracker.find_model(MODEL_NAME, weights)  # a re-run: the model logged before
        if model_id is None:
            # step = the last task: the logged model carries the final metrics, not task 0's
            model_id = tracker.log_classifier(
                tmp / TIMM_DIR, examples, name=MODEL_NAME, step=last, tags=weights
            ).model_id
        facts = VersionFacts(
            tasks=[t["class_names"] for t in opened.tasks],
            accuracy=[float(a) for a in accuracy_matrix(records)[-1]],
            counts=[int(c) for c in records[-1]["counts"]],
        )
        shown = ("final_accuracy", "average_anytime_accuracy", "forgetting", "stored_params",
                 "num_tasks")  # fmt: skip
        about = {f"sdlora.{k}": f"{final[k]:.2f}" if isinstance(final[k], float) else
                 str(final[k]) for k in shown if k in final}  # fmt: skip
        about |= {"sdlora.num_classes": str(sum(map(len, facts.tasks))),
                  "sdlora.run_id": tracker.run_id}  # fmt: skip
        if commit := git_commit(Path(__file__).parent):  # the code's, as the run's git_commit
            about["sdlora.git_commit"] = commit
        registry = register_and_gate(
            tracker, cfg.mlflow.model_name(cfg.data.dataset), model_id, facts, cfg.mlflow.gate,
            about,
        )  # fmt: skip
        tracker.set_tags({"sdlora.registered_version": registry["version"],
                          DECISION_TAG: registry["alias"]})  # fmt: skip
        payload = {
            "mlflow_run_id": tracker.run_id,
            "experiment": cfg.mlflow.experiment,
            "experiment_id": tracker.experiment_id,
            "tracking_uri": portable_uri(tracker.tracking_uri),
            "ui": ui_url(tracker.tracking_uri, tracker.experiment_id, tracker.run_id)
            or ui_path(tracker.experiment_id, tracker.run_id),
            "model_uri": f"models:/{model_id}",
            "model_id": model_id,
            "timm_model": f"{Path(out) / TIMM_DIR}",
            "timm_model_artifacts": f"runs:/{tracker.run_id}/{TIMM_DIR}",
            "metrics": final,
            "registry": registry,
        }
        (tmp / "report.md").write_text(_format_report(cfg, final, records, payload))
        # at the artifact root: MLflow's Compare lists only the top-level files runs share
        tracker.log_artifacts([*sorted(evaluated), tmp / "report.md"])
        tracker.log_artifacts(timm_files, TIMM_DIR)
        write_json(tmp / "run.json", payload)
    return payload


def _export_merged(
    cfg: Config,
    merged: torch.nn.Module,
    backbone: torch.nn.Module,
    prepared: Prepared,
    folder: Path,
) -> list[Path]:
    """The merged model as a timm checkpoint with the preprocessing evaluation applies."""
    mean, std = input_norm(cfg, backbone)
    if mean is None:  # input_norm none: raw pixels in [0, 1]
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # the test transform (SPEC §6): bicubic resize to size * 256 / 224, centre crop to size
    data_config = {"mean": mean, "std": std, "crop_pct": 224 / 256, "interpolation": "bicubic"}
    names = [n for task in prepared.tasks for n in task["class_names"]]
    return export_timm(merged, folder, data_config=data_config, label_names=names)
