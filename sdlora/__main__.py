"""Command-line interface: ``python -m sdlora <subcommand> ...`` (also the ``sdlora`` script).

Each subcommand is registered by a small ``_add_<name>(subparsers)`` function that sets its
handler with ``set_defaults(func=...)``; a handler takes the parsed namespace and returns the
exit code. Bad input is reported on stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

EXIT_OK = 0
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]


def _counts_type(text: str) -> list[int]:
    """Parse ``--counts`` for argparse, turning bad values into a usage error (exit 2)."""
    from sdlora.core.metrics import parse_counts_arg

    try:
        return parse_counts_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_metrics(args: argparse.Namespace) -> int:
    """Print the section-5 metric summary of an accuracy matrix file as JSON on stdout.

    The file is sdlora's CSV or the headerless lower-triangular matrix of the public logs.
    """
    from sdlora.core.metrics import read_matrix_csv, summarize

    matrix, file_counts = read_matrix_csv(args.matrix)
    counts = args.counts if args.counts is not None else file_counts
    try:
        summary = summarize(matrix, counts)
    except ValueError as exc:
        source = "--counts" if args.counts is not None else str(args.matrix)
        raise ValueError(f"{source}: {exc}") from None
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _add_metrics(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``metrics MATRIX.csv [--counts ...]``."""
    parser = subparsers.add_parser(
        "metrics",
        help=(
            "summarize an accuracy matrix (final accuracy, AAA, forgetting, BWT) from sdlora's "
            "CSV or a public log's lower-triangular matrix"
        ),
        description=(
            "Read an accuracy matrix in percent and print the metric summary as JSON. Two "
            "formats are read: sdlora's CSV (header 'after_task,task_0,...', one row per task, "
            "optional last 'count' row) and the lower-triangular matrix as the public code's "
            "logs print it (no header, row i = after task i, cells separated by commas or "
            "whitespace, cells above the diagonal empty or absent)."
        ),
    )
    parser.add_argument(
        "matrix", help="accuracy matrix file (percent): sdlora's CSV or a headerless log matrix"
    )
    parser.add_argument(
        "--counts",
        type=_counts_type,
        default=None,
        metavar="N0,N1,...",
        help="per-task test sample counts for sample weighting; overrides a 'count' row",
    )
    parser.set_defaults(func=_run_metrics)


def _run_pretrain(args: argparse.Namespace) -> int:
    """Pre-train the embedded backbone to ``backbone.weights`` (or ``--out``)."""
    from sdlora.config import load_config
    from sdlora.core.pretrain import pretrain_backbone

    cfg = load_config(args.params)
    out = args.out or cfg.backbone.weights
    if out is None or out == "timm":
        raise ValueError(f"{args.params}: backbone.weights must be a file path to pre-train into")
    report = pretrain_backbone(cfg, out, progress=cfg.progress)
    print(json.dumps(asdict(report), indent=2))
    return EXIT_OK


def _add_pretrain(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pretrain [--params params.yaml] [--out PATH]``."""
    parser = subparsers.add_parser(
        "pretrain", help="pre-train the embedded default backbone offline (rendered letters)"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    parser.add_argument("--out", default=None, help="weights file (default: backbone.weights)")
    parser.set_defaults(func=_run_pretrain)


def _run_sequence(args: argparse.Namespace) -> int:
    """Train the whole task sequence in this process; write the matrix, metrics and adapters."""
    from pathlib import Path

    from sdlora.config import load_config
    from sdlora.core.checkpoint import save_adapter
    from sdlora.core.loop import run_sequence
    from sdlora.data.prepare import prepare
    from sdlora.report.sequence import format_matrix, write_sequence_outputs

    cfg = load_config(args.params)
    out = Path(args.out)
    prepared = Path(args.prepared) if args.prepared else out / "prepared"
    if not args.prepared:  # the prepare stage's own function, into the run's folder
        prepare(cfg.data, seed=cfg.seed, out=prepared, progress=cfg.progress)

    def save(task: int, model: object, result: object) -> None:
        save_adapter(model, out / f"adapter_task_{task:02d}.safetensors")
        write_sequence_outputs(result, out)

    result = run_sequence(cfg, prepared, ncm=args.ncm, on_task_end=save)
    print(format_matrix(result.matrix))
    print(json.dumps(result.summary, indent=2))
    return EXIT_OK


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run [--params params.yaml] [--out DIR] [--prepared DIR] [--ncm]``."""
    parser = subparsers.add_parser(
        "run",
        help="train a whole task sequence in one process (no Ray, no DVC) and report its metrics",
        description=(
            "Train every task in this process with the pipeline's own training and evaluation "
            "functions: for the same params it gives the accuracy matrix `dvc repro` gives."
        ),
    )
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    parser.add_argument("--out", default="runs/default", help="output folder (runs/default)")
    parser.add_argument(
        "--prepared",
        default=None,
        metavar="DIR",
        help="use these prepared task splits (e.g. data/prepared from `dvc repro prepare`) "
        "instead of preparing data.* into OUT/prepared",
    )
    parser.add_argument(
        "--ncm",
        action="store_true",
        help="also record the task-known nearest-class-mean drift diagnostic",
    )
    parser.set_defaults(func=_run_sequence)


def _run_tasks(args: argparse.Namespace) -> int:
    """Print (or write into the params file) the pipeline's ``tasks`` section for ``data.*``."""
    from pathlib import Path

    from sdlora.config import parse_config, read_params
    from sdlora.pipeline.layout import plan_tasks, tasks_block, write_tasks
    from sdlora.pipeline.prepare import num_tasks_of

    path = Path(args.params)
    raw = read_params(path)
    old = raw.pop("tasks", None) or {}
    raw.pop("final_task", None)
    n = num_tasks_of(parse_config(raw, str(path)))  # the section itself may be stale: not checked
    if args.write:
        write_tasks(path, n)
        print(f"{path}: tasks section lists {n} task(s) (was {len(old)}): train@0 .. train@{n - 1}")
    else:
        overrides = {int(k): v for k, v in old.items() if isinstance(v, dict)}
        sys.stdout.write(tasks_block(plan_tasks(n, overrides)))
    return EXIT_OK


def _add_tasks(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tasks [--params params.yaml] [--write]``."""
    parser = subparsers.add_parser(
        "tasks",
        help="the pipeline's per-task stage list (params.yaml's tasks section) for data.*",
        description=(
            "Compute the tasks section dvc.yaml's train@k stages iterate over from data.* "
            "(dataset, init_cls, increment). Without --write, print it; with --write, replace "
            "the section in the params file, keeping per-task overrides (rank, epochs, lr)."
        ),
    )
    parser.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
    parser.add_argument("--write", action="store_true", help="rewrite the params file's section")
    parser.set_defaults(func=_run_tasks)


def _run_plots(args: argparse.Namespace) -> int:
    """Run ``dvc plots show`` (or ``diff``) with a template that needs no network."""
    from sdlora.ops.dvc import render

    return render(args.diff, out=args.out, open_page=args.open)


def _add_plots(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plots [--diff [REV ...]] [--out DIR] [--open]``."""
    from sdlora.ops.dvc import OUT_DIR

    parser = subparsers.add_parser(
        "plots",
        help="dvc plots show / diff as a page that renders offline (no CDN)",
        description=(
            "Run `dvc plots show` (or `dvc plots diff`) with an HTML template that holds Vega, "
            "Vega-Lite and Vega-Embed inline, so OUT/index.html renders without internet. Run "
            "it in the project (dvc.yaml's folder)."
        ),
    )
    parser.add_argument(
        "--diff",
        nargs="*",
        default=None,
        metavar="REV",
        help="compare revisions (git commits, branches, experiments) with `dvc plots diff`; "
        "no REV: the workspace against HEAD (the committed baseline)",
    )
    parser.add_argument("--out", default=OUT_DIR, help=f"output folder ({OUT_DIR})")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.set_defaults(func=_run_plots)


def _run_exp_run(args: argparse.Namespace) -> int:
    """Run ``dvc exp run -S key=value ...`` with the changes in a best-params file."""
    import shlex
    import subprocess

    from sdlora.report.tune import exp_run_args, read_best

    extra = [a for a in args.dvc_args if a != "--"]
    command = ["dvc", "exp", "run", *exp_run_args(read_best(args.file)), *extra]
    print(f"sdlora exp-run: {shlex.join(command)}", file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", *command], check=False).returncode


def _add_exp_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``exp-run FILE [-- DVC_ARGS ...]``."""
    parser = subparsers.add_parser(
        "exp-run",
        help="apply a params file of dotted keys (the tune stage's best_params.yaml) to the "
        "pipeline as a DVC experiment",
        description=(
            "Run `dvc exp run` with one `-S key=value` per entry of FILE (dotted params keys, "
            "as the tune stage writes them in results/tune/best_params.yaml), so the pipeline "
            "runs with those params in an experiment; params.yaml in git is left alone. "
            "Arguments after `--` go to `dvc exp run` (e.g. -- --name best-trial)."
        ),
    )
    parser.add_argument("file", help="params changes: a YAML mapping of dotted keys")
    parser.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc exp run` options")
    parser.set_defaults(func=_run_exp_run)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="sdlora", description="SD-LoRA continual-learning tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_metrics(subparsers)
    _add_pretrain(subparsers)
    _add_run(subparsers)
    _add_tasks(subparsers)
    _add_plots(subparsers)
    _add_exp_run(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse usage errors and --help
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    handler: Handler = args.func
    try:
        return handler(args)
    except (ValueError, OSError) as exc:
        print(f"sdlora {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
