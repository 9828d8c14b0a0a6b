"""What appending a task costs: `dvc repro` after one task is appended to ``data.tasks``,
against `dvc repro` of the whole longer sequence from scratch, on the embedded default.

Two copies of the repository (git's files) in a temporary folder, the default params with the
first ``--tasks`` tasks of the default's seeded class order named in ``data.tasks``:

- ``append``: `dvc repro` of T tasks (not timed), then task T appended (the next classes of the
  same order), `python -m sdlora tasks --write`, and `dvc repro` timed: it runs validate,
  prepare@T, train@T, evaluate and report;
- ``full``: the T + 1 tasks named from the start; `dvc repro pretrain` (not timed: DVC caches
  the backbone either way), then `dvc repro` timed: every prepare@k and train@k, evaluate and
  report.

Prints one table: wall seconds, the stages that ran, and whether the appended sequence's final
accuracy equals the full run's (the same tasks, the same seeds: it should, to the bit).

    python benchmarks/append_task.py              # the default: 4 named tasks, then a 5th
    python benchmarks/append_task.py --tasks 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _copy(dst: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1",
               RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    return env


def _run(root: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(list(args), cwd=root, env=_env(), capture_output=True, text=True,
                          check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    out = done.stdout + done.stderr
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed in {root}:\n{out[-4000:]}")
    return seconds, out


def _dvc(root: Path, *args: str) -> tuple[float, list[str]]:
    seconds, out = _run(root, sys.executable, "-m", "dvc", *args)
    return seconds, re.findall(r"Running stage '([^']+)'", out)


def _project(root: Path, tasks: list[list[str]]) -> None:
    """A copy of the repository whose params name ``tasks``, its tasks section written."""
    _copy(root)
    params = root / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["data"]["tasks"] = tasks
    raw["progress"] = False
    params.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    _run(root, sys.executable, "-m", "sdlora", "tasks", "--write")
    _run(root, "git", "init", "-q")


def _stages(ran: list[str]) -> str:
    """``ran`` with the prepare@k and train@k stages counted."""
    counts = {s: sum(r.startswith(f"{s}@") for r in ran) for s in ("prepare", "train")}
    others = [r for r in ran if "@" not in r]
    return ", ".join([*others, *(f"{n} {s}@k" for s, n in counts.items() if n)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4, help="T: tasks before the append")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from sdlora.config import load_config
    from sdlora.data.benchmarks import class_names
    from sdlora.data.tasks import class_order, split_classes

    cfg = load_config(REPO / "params.yaml")
    names = class_names(cfg.data)
    order = class_order(len(names), cfg.seed)
    cut = split_classes(order, cfg.data.init_cls, cfg.data.increment)
    named = [[names[c] for c in task] for task in cut]
    if not 1 <= args.tasks < len(named):
        sys.exit(f"--tasks: 1 .. {len(named) - 1} (the default makes {len(named)} tasks)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdlora-append-") as tmp:
        grown, full = Path(tmp) / "append", Path(tmp) / "full"
        _project(grown, named[: args.tasks])
        print(f"append: dvc repro of {args.tasks} tasks (not timed) ...", file=sys.stderr)
        _dvc(grown, "repro")
        params = grown / "params.yaml"
        raw = yaml.safe_load(params.read_text())
        raw["data"]["tasks"] = named[: args.tasks + 1]
        params.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        _run(grown, sys.executable, "-m", "sdlora", "tasks", "--write")
        print("append: dvc repro after appending a task ...", file=sys.stderr)
        seconds, ran = _dvc(grown, "repro")
        rows.append((f"append task {args.tasks} to {args.tasks} done", seconds, _stages(ran)))
        _project(full, named[: args.tasks + 1])
        print("full: dvc repro pretrain (not timed), then dvc repro ...", file=sys.stderr)
        _dvc(full, "repro", "pretrain")
        seconds, ran = _dvc(full, "repro")
        rows.append((f"all {args.tasks + 1} tasks from scratch", seconds, _stages(ran)))
        finals = [json.loads((p / "results" / "metrics.json").read_text()) for p in (grown, full)]
    print("| run | dvc repro wall s | stages that ran |\n|---|---:|---|")
    for name, seconds, stages in rows:
        print(f"| {name} | {seconds:.1f} | {stages} |")
    same = finals[0]["final_accuracy"] == finals[1]["final_accuracy"]
    print(f"\nfinal accuracy: appended {finals[0]['final_accuracy']:.2f}%, full "
          f"{finals[1]['final_accuracy']:.2f}% ({'equal' if same else 'DIFFERENT'}); "
          f"speed-up {rows[1][1] / rows[0][1]:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
