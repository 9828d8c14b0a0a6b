"""What Ray Train costs per pipeline stage, with 1 and 2 workers, against a plain process.

Each measurement is a fresh Python process, as a ``train@k`` stage is: imports, ``ray.init``
(in-process Ray), ``TorchTrainer.fit`` on task 0 of the configured benchmark streamed from
Parquet, and the same task trained by the same loop in a plain process
(``sdlora.core.train.fit_task`` at world size 1, no Ray) as the floor. The fixed overhead is the
stage's wall time minus the time its epochs took (the workers' own ``epoch_seconds``).

    python benchmarks/ray_overhead.py                       # params.yaml, workers 1 and 2
    python benchmarks/ray_overhead.py --workers 1 2 --epochs 1 10

Needs the backbone of ``params.yaml`` (``dvc repro pretrain`` for the embedded default).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(params: str, prepared: str, workers: int, epochs: int) -> dict:
    """Run in a child process: one Ray stage (workers > 0) or one plain task (workers == 0)."""
    start = time.perf_counter()
    from sdlora.config import load_config
    from sdlora.ops.ray_train import train_task_distributed

    cfg = load_config(params, {"train.epochs": epochs, "progress": False})
    imported = time.perf_counter()
    if workers == 0:
        from sdlora.core.train import (
            World,
            begin_task,
            build_model,
            fit_task,
            torch_threads,
        )  # fmt: skip
        from sdlora.data.prepare import open_prepared

        model = build_model(cfg)
        begin_task(model, cfg, 0, open_prepared(prepared).task_classes(0)[1])
        t0 = time.perf_counter()
        with torch_threads(cfg.train.threads):  # as the Ray worker: train.threads
            epochs_log = fit_task(model, prepared, 0, cfg, World())
        return {"workers": 0, "epochs": epochs, "import_s": imported - start, "init_s": 0.0,
                "fit_s": time.perf_counter() - t0,
                "epoch_s": sum(e["epoch_seconds"] for e in epochs_log),
                "wall_s": time.perf_counter() - start}  # fmt: skip
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    inited = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_task_distributed(
            cfg, 0, None, prepared, tmp, num_workers=workers, storage_path=Path(tmp) / "ray",
            poll_interval_s=cfg.ray.poll_interval_s, identity="benchmark",
        )  # fmt: skip
    done = time.perf_counter()
    ray.shutdown()
    return {
        "workers": workers,
        "epochs": epochs,
        "import_s": imported - start,
        "init_s": inited - imported,
        "fit_s": done - inited,
        "epoch_s": sum(e["epoch_seconds"] for e in result.epochs),
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--child", nargs=3, metavar=("PREPARED", "WORKERS", "EPOCHS"))
    args = parser.parse_args()
    if args.child:
        prepared, workers, epochs = args.child
        print(json.dumps(one(args.params, prepared, int(workers), int(epochs))))
        return

    from sdlora.config import load_config
    from sdlora.data.prepare import prepare

    cfg = load_config(args.params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = str(Path(tmp) / "prepared")
        prepare(cfg.data, seed=cfg.seed, out=prepared)
        for epochs in args.epochs:
            for workers in [0, *args.workers]:
                done = subprocess.run(
                    [sys.executable, __file__, "--params", args.params,
                     "--child", prepared, str(workers), str(epochs)],
                    capture_output=True, text=True, check=True, cwd=REPO,
                )  # fmt: skip
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"measured workers={workers} epochs={epochs}", file=sys.stderr)
    print(f"task 0 of {cfg.data.dataset} ({cfg.data.init_cls} classes), "
          f"batch {cfg.train.batch_size}, {cfg.backbone.name}")  # fmt: skip
    head = "| workers | epochs | process wall s | imports s | ray.init s | fit s | epochs s "
    print(head + "| fixed overhead s |")
    print("|---" * 8 + "|")
    for r in rows:
        overhead = r["wall_s"] - r["epoch_s"]
        who = "plain process" if r["workers"] == 0 else str(r["workers"])
        cells = [r["wall_s"], r["import_s"], r["init_s"], r["fit_s"], r["epoch_s"], overhead]
        print(f"| {who} | {r['epochs']} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
