"""How many times a ``train@k`` stage builds the model and reads the prepared tasks' files, in its
driver and in its Ray Train workers: ``python pipelines/train.py --task k`` as DVC runs it.

Every Python process of the stage (the driver and the Ray workers it starts) imports a
``sitecustomize`` module written here, which counts, per process, the calls of
``timm.create_model`` (each model build creates its backbone once) and the opens of
``task.json`` files for reading (an audit hook). Tasks 0 and 1 run from the project's prepared
splits and backbone (``dvc repro prepare pretrain`` first), with Ray's run folders, MLflow and
the outputs in a temporary folder. ``--repo`` runs another checkout (its code, params, prepared
splits and backbone: link them from this one to compare the code alone).

    python benchmarks/stage_probe.py
    python benchmarks/stage_probe.py --repo ../before   # the same against older code
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HOOK = """
import json, os, sys, threading, time
LOG = os.environ.get("SDLORA_PROBE_LOG")
if LOG:
    def _note(kind):
        with open(LOG, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "kind": kind}) + "\\n")
    def _audit(event, args):
        if event == "open" and str(args[0]).endswith("task.json"):
            mode = str(args[1] or "r")
            if "r" in mode and "w" not in mode and "+" not in mode:
                _note("task file read")
    sys.addaudithook(_audit)
    def _watch():
        while "timm" not in sys.modules or not hasattr(sys.modules["timm"], "create_model"):
            time.sleep(0.001)
        timm = sys.modules["timm"]
        original = timm.create_model
        def create_model(*args, **kwargs):
            _note("model build")
            return original(*args, **kwargs)
        timm.create_model = create_model
    threading.Thread(target=_watch, daemon=True).start()
"""


def run(repo: Path, params: Path, tmp: Path) -> dict[str, collections.Counter]:
    """Tasks 0 and 1 as stages of ``repo``; counts per stage and kind of process."""
    hook_dir = tmp / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    out = tmp / "out"
    counts: dict[str, collections.Counter] = {}
    for task in (0, 1):
        log = tmp / f"probe_{task}.jsonl"
        env = {**os.environ, "SDLORA_PROBE_LOG": str(log),
               "PYTHONPATH": os.pathsep.join([str(hook_dir), str(repo)]),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}  # fmt: skip
        cmd = [sys.executable, str(repo / "pipelines" / "train.py"), "--params", str(params),
               "--task", str(task),
               "--out", str(out / f"task_{task}")]  # fmt: skip
        if task > 0:
            cmd += ["--prev", str(out / f"task_{task - 1}")]
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{repo}: train@{task} failed:\n{err[-3000:]}")
        events = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        c: collections.Counter = collections.Counter()
        for e in events:
            c[("driver" if e["pid"] == proc.pid else "workers", e["kind"])] += 1
        counts[f"train@{task}"] = c
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose code runs")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per task (fewer: faster)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sdlora-probe-"))
    repo = Path(args.repo).resolve()  # its params, prepared splits and backbone are used
    raw = yaml.safe_load((repo / args.params).read_text())
    raw["train"]["epochs"] = args.epochs
    raw["progress"] = False
    raw.setdefault("ray", {})["storage_path"] = str(tmp / "ray")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    counts = run(repo, params, tmp)
    print(f"\n{args.repo}: per train@k stage (1 Ray Train worker, {args.epochs} epoch(s))\n")
    print(
        "| stage | model builds (driver) | model builds (workers) | task.json reads (driver) "
        "| task.json reads (workers) |"
    )
    print("|---|---:|---:|---:|---:|")
    for stage, c in counts.items():
        print(
            f"| {stage} | {c['driver', 'model build']} | {c['workers', 'model build']} | "
            f"{c['driver', 'task file read']} | {c['workers', 'task file read']} |"
        )


if __name__ == "__main__":
    main()
