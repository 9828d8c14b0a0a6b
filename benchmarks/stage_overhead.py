"""What a pipeline ``train@k`` stage costs besides its epochs: each stage as DVC runs it.

Runs ``python pipelines/train.py --task k`` for tasks ``--tasks`` (each from the previous
one's output) in fresh processes, as ``dvc repro`` does, on the prepared splits and backbone
of the project (``dvc repro prepare pretrain`` first), with Ray's run folders and MLflow in a
temporary folder. For each stage: the process's wall time, the time its epochs took (the
workers' own ``epoch_seconds``) and the difference, the fixed overhead. Two ways to run Ray:

- ``in-process``: ``ray.address: null``, each stage starts and stops its own Ray (the default);
- ``cluster``: a Ray instance started once (``ray start --head``) that every stage attaches
  to (``ray.address: auto``), as on a cluster: no stage starts another.

    python benchmarks/stage_overhead.py                        # tasks 0-4, both ways
    python benchmarks/stage_overhead.py --tasks 0 --ray in-process --repeat 3
    python benchmarks/stage_overhead.py --repo ../old-checkout  # the same against older code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def stage(repo: Path, params: Path, task: int, out: Path, env: dict[str, str]) -> dict:
    """Run ``train@task`` in a fresh process; its wall time and its epochs' time."""
    cmd = [sys.executable, "pipelines/train.py", "--params", str(params), "--task", str(task),
           "--out", str(out / f"task_{task}")]  # fmt: skip
    if task > 0:
        cmd += ["--prev", str(out / f"task_{task - 1}")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"train@{task} failed:\n{done.stderr[-3000:]}")
    record = json.loads((out / f"task_{task}" / "record.json").read_text())["tasks"][-1]
    epochs = sum(e["epoch_seconds"] for e in record["epochs"])
    return {"task": task, "wall_s": wall, "epochs_s": epochs, "fixed_s": wall - epochs}


def run_chain(args: argparse.Namespace, mode: str, tmp: Path) -> list[dict]:
    """Every task of ``--tasks`` once, ``--repeat`` times, Ray started per stage or once."""
    repo = Path(args.repo).resolve()
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
    if mode == "cluster":
        raw["ray"]["address"] = "auto"
        subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head",
                        "--include-dashboard", "false", "--num-cpus", str(os.cpu_count())],
                       check=True, capture_output=True, env=env)  # fmt: skip
    rows = []
    try:
        for r in range(args.repeat):
            run_dir = tmp / f"{mode}-{r}"
            raw["ray"]["storage_path"] = str(run_dir / "ray")
            raw["mlflow"]["tracking_uri"] = f"sqlite:///{run_dir / 'mlflow.db'}"
            run_dir.mkdir(parents=True)
            params = run_dir / "params.yaml"
            params.write_text(yaml.safe_dump(raw))
            for task in args.tasks:
                rows.append({"mode": mode, **stage(repo, params, task, run_dir / "out", env)})
                print(f"{mode} run {r + 1}: train@{task} {rows[-1]['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if mode == "cluster":
            ray = str(Path(sys.executable).parent / "ray")
            subprocess.run([ray, "stop"], capture_output=True, env=env)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose stages run")
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ray", nargs="+", default=["in-process", "cluster"],
                        choices=["in-process", "cluster"])  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="chains run per way")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdlora-stages-") as tmp:
        for mode in args.ray:
            rows += run_chain(args, mode, Path(tmp))
    print(f"\n{Path(args.repo).resolve()}, {os.cpu_count()} CPUs; medians over {args.repeat} "
          "chain(s)\n")  # fmt: skip
    print("| Ray | task | stage wall s | epochs s | fixed overhead s |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.ray:
        mine = [r for r in rows if r["mode"] == mode]
        for task in args.tasks:
            cells = [r for r in mine if r["task"] == task]
            med = {k: statistics.median(c[k] for c in cells) for k in ("wall_s", "epochs_s",
                                                                       "fixed_s")}  # fmt: skip
            print(f"| {mode} | {task} | {med['wall_s']:.1f} | {med['epochs_s']:.1f} | "
                  f"{med['fixed_s']:.1f} |")  # fmt: skip
        total = sum(r["wall_s"] for r in mine) / args.repeat
        fixed = sum(r["fixed_s"] for r in mine) / args.repeat
        print(f"| {mode} | all {len(args.tasks)} | {total:.1f} | {total - fixed:.1f} | "
              f"{fixed:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
