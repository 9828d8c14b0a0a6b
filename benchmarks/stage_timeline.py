"""Where a ``train@k`` stage's time goes: a timeline of the driver and of every Ray process.

Runs the stage function (:func:`sdlora.pipeline.train.train_stage`) for task 0 in this process
as the pipeline does, with Ray started here and this module as Ray's
``worker_process_setup_hook``: each Ray worker process notes when it came up, and the one that
trains notes its import of sdlora, model set-up, ``fit_task`` (the epochs with their per-epoch
checkpoint reports) and ``finish_task``. The driver notes its imports, ``ray.init``,
``TorchTrainer.fit``, the evaluation, MLflow and ``ray.shutdown``. Ray's run folder, MLflow and
the stage's output go to a temporary folder.

    python benchmarks/stage_timeline.py    # needs data/prepared and artifacts/backbone
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_ENV = "SDLORA_TIMELINE_LOG"


def mark(name: str) -> None:
    """Append ``name`` with this process's id and the time to the timeline file."""
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps({"t": time.time(), "pid": os.getpid(), "name": name}) + "\n")


def timed(owner: Any, attr: str, label: str) -> None:
    """Replace ``owner.attr`` by a wrapper that marks its start and end."""
    fn: Callable = getattr(owner, attr)

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} starts")
        try:
            return fn(*args, **kwargs)
        finally:
            mark(f"{label} ends")

    setattr(owner, attr, inner)


def _watch() -> None:
    """In a Ray worker: wrap the training functions once the worker has imported them."""
    while "sdlora.ops.ray_train" not in sys.modules or not hasattr(
        sys.modules["sdlora.ops.ray_train"], "fit_task"
    ):
        time.sleep(0.002)
    mark("worker: sdlora imported")
    d = sys.modules["sdlora.ops.ray_train"]
    for attr in ("load_task_model", "begin_task", "fit_task", "finish_task"):
        timed(d, attr, f"worker: {attr}")


def hook() -> None:
    """Ray's ``worker_process_setup_hook``: runs first in every Ray worker process."""
    mark("ray worker process up")
    threading.Thread(target=_watch, daemon=True).start()


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sdlora-timeline-"))
    os.environ[LOG_ENV] = str(tmp / "timeline.jsonl")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    with open("/proc/self/stat") as f:  # when this process started, for the imports' share
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    stat = Path("/proc/stat").read_text().splitlines()
    boot = next(float(x.split()[1]) for x in stat if x.startswith("btime"))
    t0 = boot + ticks / os.sysconf("SC_CLK_TCK")
    mark("driver: imports start")
    import ray
    import ray.train.torch

    import sdlora.pipeline.train as stage
    from sdlora.config import load_config

    mark("driver: imports end")
    cfg = load_config(args.params, {"ray.storage_path": str(tmp / "ray"), "progress": False})
    timed(stage, "assess_task", "driver: evaluation")
    timed(stage, "open_run", "driver: MLflow")
    timed(ray.train.torch.TorchTrainer, "fit", "driver: TorchTrainer.fit")
    here = str(Path(__file__).resolve().parent)
    mark("driver: ray.init starts")
    ray.init(
        address="local", include_dashboard=False,
        runtime_env={"worker_process_setup_hook": f"{Path(__file__).stem}.hook",
                     "env_vars": {"PYTHONPATH": os.pathsep.join([here, *sys.path[1:]])}},
    )  # fmt: skip
    mark("driver: ray.init ends")
    stage.train_stage(cfg, 0, out=tmp / "task_0")
    mark("driver: ray.shutdown starts")
    ray.shutdown()
    mark("driver: ray.shutdown ends")
    events = [json.loads(x) for x in Path(os.environ[LOG_ENV]).read_text().splitlines()]
    driver = os.getpid()
    print(f"\ntrain@0, seconds since the driver process started ({tmp})\n")
    print("| s | process | event |")
    print("|---:|---|---|")
    print("| 0.00 | driver | process starts |")
    for e in events:
        who = "driver" if e["pid"] == driver else f"Ray pid {e['pid']}"
        print(f"| {e['t'] - t0:.2f} | {who} | {e['name'].split(': ', 1)[-1]} |")


if __name__ == "__main__":
    main()
