"""The command line, the only place that parses argv: ``sdlora`` (``python -m sdlora``) and the
DVC stages' entry scripts (``pipelines/<stage>.py`` call :func:`stage_main`), with click.

Every command parses its options, loads what it needs and calls one library function. A
command imports its library module when it runs, so starting one loads only what it uses.
Failures are reported by class (:mod:`sdlora.errors`): bad input exits 2 with one line naming
what is wrong and the fix, a failure whose message says it all exits 1; anything else keeps
its traceback. Usage errors exit 2, as click reports them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sdlora.config import load_compare, load_config, load_tune
from sdlora.errors import BadInput, Failed
from sdlora.progress import VERBOSE_ENV

PARAMS = "params.yaml"


def _params_option(f: Callable) -> Callable:
    return click.option(
        "--params", default=PARAMS, show_default=True, metavar="FILE", help="params file"
    )(f)


def _folder(
    flag: str, what: str, default: str | None, shown: str | None = None, dest: str | None = None
) -> Callable:
    """A folder option of a stage, ``flag DIR``; its help names the default (or ``shown``)."""
    decls = [flag] if dest is None else [flag, dest]
    return click.option(
        *decls, metavar="DIR", default=default, help=f"{what} (default: {shown or default})"
    )


def _file(flag: str, what: str, default: str, dest: str | None = None) -> Callable:
    """A file option of a stage, ``flag FILE``, with its default in the help."""
    decls = [flag] if dest is None else [flag, dest]
    return click.option(
        *decls, metavar="FILE", default=default, help=f"{what} (default: {default})"
    )


def _show(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2))


# ---- sdlora ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sdlora() -> None:
    """SD-LoRA continual-learning tools."""


@sdlora.command(
    short_help="summarize an accuracy matrix (sdlora's CSV or a public log's): final accuracy,"
    " AAA, forgetting, BWT",
    help="Read an accuracy matrix in percent and print the metric summary (final accuracy, "
    "AAA, forgetting, BWT) as JSON. Two formats are read: sdlora's CSV (header "
    "'after_task,task_0,...', one row per task, optional last 'count' row) and the "
    "lower-triangular matrix as the public code's logs print it (no header, row i = after "
    "task i, cells separated by commas or whitespace, cells above the diagonal empty or "
    "absent).",
)
@click.argument("matrix", metavar="MATRIX")
@click.option(
    "--counts",
    metavar="N0,N1,...",
    default=None,
    help="per-task test sample counts for sample weighting; overrides a 'count' row",
)
def metrics(matrix: str, counts: str | None) -> None:
    from sdlora.core.metrics import parse_counts_arg, read_matrix_csv, summarize

    weights = None
    if counts is not None:
        try:
            weights = parse_counts_arg(counts)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--counts'") from None
    R, file_counts = read_matrix_csv(matrix)
    try:
        summary = summarize(R, weights if weights is not None else file_counts)
    except ValueError as err:
        source = "--counts" if weights is not None else matrix
        raise ValueError(f"{source}: {err}") from None
    _show(summary)


@sdlora.command(
    "pretrain", help="pre-train the embedded default backbone offline (rendered letters)"
)
@_params_option
@click.option(
    "--out", default=None, metavar="PATH", help="weights file (default: backbone.weights)"
)
def pretrain_command(params: str, out: str | None) -> None:
    from dataclasses import asdict

    from sdlora.core.pretrain import pretrain_backbone

    cfg = load_config(params)
    out = out or cfg.backbone.weights
    if out is None or out == "timm":
        raise ValueError(f"{params}: backbone.weights must be a file path to pre-train into")
    report = pretrain_backbone(cfg, out, progress=cfg.progress)
    _show(asdict(report))


@sdlora.command(
    short_help="train a whole task sequence in one process (no Ray, no DVC)",
    help="Train every task of a sequence in this process (no Ray, no DVC) with the pipeline's "
    "own training and evaluation functions: for the same params it gives the accuracy matrix "
    "`dvc repro` gives.",
)
@_params_option
@click.option(
    "--out", default="runs/default", show_default=True, metavar="DIR", help="output folder"
)
@click.option(
    "--prepared",
    default=None,
    metavar="DIR",
    help="use these prepared task splits (e.g. data/prepared from `dvc repro "
    "prepare`) instead of preparing data.* into OUT/prepared",
)
@click.option("--ncm", is_flag=True, help="also record the task-known NCM drift diagnostic")
def run(params: str, out: str, prepared: str | None, ncm: bool) -> None:
    from sdlora.core.checkpoint import save_adapter
    from sdlora.core.loop import run_sequence
    from sdlora.core.train import check_settings
    from sdlora.data.prepare import prepare
    from sdlora.report.sequence import format_matrix, write_sequence_outputs

    cfg = load_config(params)
    check_settings(cfg)  # a bad backbone.kwargs or device before preparing anything
    folder = Path(out)
    splits = Path(prepared) if prepared else folder / "prepared"
    if not prepared:  # the prepare stage's own function, into the run's folder
        prepare(cfg.data, seed=cfg.seed, out=splits, progress=cfg.progress)

    def save(task: int, model: Any, result: Any) -> None:
        save_adapter(model, folder / f"adapter_task_{task:02d}.safetensors")
        write_sequence_outputs(result, folder)

    result = run_sequence(cfg, splits, ncm=ncm, on_task_end=save)
    click.echo(format_matrix(result.matrix))
    _show(result.summary)


@sdlora.command(
    short_help="print or write params.yaml's tasks section for data.*",
    help="Compute the tasks section dvc.yaml's prepare@k and train@k stages iterate over from "
    "data.* (data.tasks, or dataset, init_cls and increment). Without --write, print it; with "
    "--write, replace the section in the params file, keeping per-task overrides (rank, "
    "epochs, lr), and say which stages `dvc repro` then runs.",
)
@_params_option
@click.option("--write", is_flag=True, help="rewrite the params file's section")
def tasks(params: str, write: bool) -> None:
    from sdlora.config import parse_config, read_params
    from sdlora.pipeline.layout import (
        plan_changes,
        plan_tasks,
        task_spans,
        tasks_block,
        write_tasks,
    )
    from sdlora.pipeline.prepare import num_tasks_of

    path = Path(params)
    raw = read_params(path)
    old = raw.pop("tasks", None) or {}
    old = old if isinstance(old, dict) else {}
    raw.pop("final_task", None)
    cfg = parse_config(raw, str(path))  # the section itself may be stale: not checked
    n = num_tasks_of(cfg)
    if write:
        new = write_tasks(path, n)
        click.echo(f"{path}: tasks section lists {n} task(s) (was {len(old)}): "
                   f"prepare@0, train@0 .. prepare@{n - 1}, train@{n - 1}")  # fmt: skip
        for line in plan_changes(old, new):
            click.echo(f"  {line}")
    else:
        overrides = {int(k): v for k, v in old.items() if isinstance(v, dict)}
        click.echo(tasks_block(plan_tasks(n, overrides, task_spans(cfg, n))), nl=False)


@sdlora.command(
    short_help="dvc plots show / diff as a page that renders offline",
    help="Run `dvc plots show` (or `dvc plots diff`) with an HTML template that holds Vega, "
    "Vega-Lite and Vega-Embed inline, so OUT/index.html renders without internet. Run it in "
    "the project (dvc.yaml's folder).",
)
@click.option(
    "--diff",
    is_flag=True,
    help="compare revisions (git commits, branches, experiments) with `dvc plots "
    "diff`; no REV: the workspace against HEAD (the committed baseline)",
)
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option("--out", default="dvc_plots", show_default=True, help="output folder")
@click.option("--open", "open_page", is_flag=True, help="open the page in a browser")
def plots(diff: bool, revs: tuple[str, ...], out: str, open_page: bool) -> None:
    from sdlora.ops.dvc import render

    if revs and not diff:
        raise click.UsageError("revisions are compared with --diff: plots --diff REV ...")
    code = render(list(revs) if diff else None, out=out, open_page=open_page)
    if code:
        raise SystemExit(code)


@sdlora.command(
    "exp-run",
    short_help="apply a best-params file to the pipeline as a DVC experiment",
    context_settings={"ignore_unknown_options": True},
    help="Run `dvc exp run` with one `-S key=value` per entry of FILE (dotted params keys, as "
    "the tune stage writes them in results/tune/best_params.yaml), so the pipeline runs with "
    "those params in an experiment; params.yaml in git is left alone. Arguments after `--` go "
    "to `dvc exp run` (e.g. -- --name best-trial).",
)
@click.argument("file")
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def exp_run(file: str, dvc_args: tuple[str, ...]) -> None:
    import shlex
    import subprocess

    from sdlora.report.tune import exp_run_args, read_best

    command = ["dvc", "exp", "run", *exp_run_args(read_best(file)), *dvc_args]
    click.echo(f"sdlora exp-run: {shlex.join(command)}", err=True)
    code = subprocess.run([sys.executable, "-m", *command], check=False).returncode
    if code:
        raise SystemExit(code)


@sdlora.command(
    short_help="print a prepared split's identity: file-list hash, class order, counts per task",
    help="Print the identity of a prepared folder (default data/prepared, the prepare stage's "
    "output): per task its classes in label order, its train and test counts and the SHA-256 of "
    "its sorted file list (split, path relative to the dataset's root, class name), and one "
    "hash over the tasks. Two users with equal hashes trained on the same files in the same "
    "tasks; where the dataset lies and the row order do not count. The split files are "
    "checked against their recorded SHA-256 first.",
)
@click.argument("prepared", default="data/prepared", metavar="[PREPARED]")
@click.option("--json", "as_json", is_flag=True, help="print it as JSON")
def identity(prepared: str, as_json: bool) -> None:
    from sdlora.data.identity import format_identity, split_identity

    ident = split_identity(prepared)
    if as_json:
        _show(ident)
    else:
        click.echo(format_identity(ident, prepared), nl=False)


@sdlora.command(
    short_help="run a published protocol (a preset) and compare it with the published figures",
    help="Run PRESET (BENCHMARK/FLAVOUR, see --list: presets/*.yaml over presets/protocol.yaml) "
    "over its seeds and variants through the pipeline's functions, each task on Ray Train (one "
    "worker per GPU; a cluster by ray.address in --params), and write the reproduced-vs-"
    "published table to results/reproduce/ and MLflow. From --params only ray, mlflow and "
    "progress are used. Without a GPU the full protocol is refused; --smoke runs the same code "
    "path on CPU on generated data in the dataset's layout (2 tasks, a tiny random ViT).",
)
@click.argument("preset", required=False, metavar="PRESET")
@click.option("--list", "list_presets", is_flag=True, help="list the presets, one per line")
@click.option("--show", is_flag=True, help="print the preset's params of each variant and exit")
@click.option("--smoke", is_flag=True, help="the same code path at toy size, on CPU, no data")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="Ray Train workers, one GPU each (default: every GPU Ray sees)")  # fmt: skip
@click.option("--root", default=None, metavar="DIR", help="the dataset's folder (default: the "
              "preset's data.root)")  # fmt: skip
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="LABEL",
    help="run only this variant (repeatable; default: every variant of the preset)",
)
@_params_option
@click.option("--out", default=None, metavar="DIR",
              help="work folder (default: runs/reproduce/BENCHMARK-FLAVOUR[-smoke])")  # fmt: skip
def reproduce(
    preset: str | None,
    variants: tuple[str, ...],
    list_presets: bool,
    show: bool,
    smoke: bool,
    gpus: int | None,
    root: str | None,
    params: str,
    out: str | None,
) -> None:
    from sdlora.reproduce.presets import all_presets, load_preset

    if list_presets:
        for p in all_presets():
            runs = f"{len(p.variants)} variant(s) x {len(p.seeds)} seed(s)"
            click.echo(f"{p.name:<22} {p.title:<36} {runs:<24} ~{p.gpu_hours():.1f} GPU h "
                       "(estimate)")  # fmt: skip
        return
    if preset is None:
        raise click.UsageError("name a preset (reproduce --list shows them)")
    if show:
        import yaml

        chosen = load_preset(preset)
        for label in chosen.variants:
            click.echo(f"# {chosen.name}, variant {label} (seed: one of {list(chosen.seeds)})")
            click.echo(yaml.safe_dump(chosen.raw(label, chosen.seeds[0]), sort_keys=False))
        return
    from sdlora.reproduce.run import reproduce as run_preset

    run_preset(preset, params=params, smoke=smoke, gpus=gpus, root=root, out=out,
               variants=variants)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``sdlora`` / ``python -m sdlora``: run the command; bad input exits 2 with one line."""
    name = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "")
    return _invoke(
        sdlora, argv, "sdlora", f"sdlora {name}".strip(), (BadInput, ValueError, OSError)
    )


# ---- the DVC stages (pipelines/<stage>.py) -------------------------------------------------------


@click.group()
def stage() -> None:
    """The DVC pipeline's stages; dvc.yaml runs them as ``python pipelines/<stage>.py``."""


@stage.command(
    "validate",
    help="Check every key and value of the params file; record an outside weights file's hash.",
)
@_params_option
@_file("--out", "output file", "runs/pipeline/params_valid.json")
@_file("--weights", "the weights record", "runs/pipeline/weights.json")
@_file("--data", "the data settings every task shares", "runs/pipeline/data.json")
def validate_stage(params: str, out: str, weights: str, data: str) -> None:
    from sdlora.pipeline.validate import validate_stage

    validate_stage(load_config(params), params=params, out=out, weights=weights, data=data)


@stage.command("prepare", help="Task K of the configured benchmark into its Parquet splits.")
@_params_option
@click.option("--task", type=int, required=True, help="the task index K")
@_folder("--out", "output folder", None, "tasks.K.split")
def prepare_stage(params: str, task: int, out: str | None) -> None:
    from sdlora.pipeline.prepare import prepare_stage

    prepare_stage(load_config(params), task, out=out)


@stage.command("pretrain", help="The backbone record, and the embedded backbone.")
@_params_option
@_folder("--out", "output folder", "artifacts/backbone")
def pretrain_stage(params: str, out: str) -> None:
    from sdlora.pipeline.pretrain import pretrain_stage

    pretrain_stage(load_config(params), out=out)


@stage.command("train", help="Task K on Ray Train, evaluated on every task seen, tracked.")
@_params_option
@click.option("--task", type=int, required=True, help="the task index K")
@_folder("--prepared", "the prepare stage's output", "data/prepared")
@_folder("--backbone", "the pretrain stage's output (its record)", "artifacts/backbone")
@_folder(
    "--prev",
    "what task K starts from: the backbone folder (K = 0) or task K-1's output",
    None,
    "tasks.K.prev",
)
@_folder("--out", "output folder", None, "runs/pipeline/task_K")
@click.option(
    "--verbose",
    is_flag=True,
    default=os.environ.get(VERBOSE_ENV, "") not in ("", "0"),
    help=f"Ray's output on the console, not in runs/logs/train@K.log ({VERBOSE_ENV}=1)",
)
def train_stage(
    params: str,
    task: int,
    prepared: str,
    backbone: str,
    prev: str | None,
    out: str | None,
    verbose: bool,
) -> None:
    from sdlora.pipeline.train import train_stage

    train_stage(
        load_config(params),
        task,
        prepared=prepared,
        backbone=backbone,
        prev=prev,
        out=out,
        verbose=verbose,
    )


@stage.command("evaluate", help="Accuracy matrix, metrics.json and plots of the sequence.")
@_params_option
@_folder("--record", "the last task's output", None, "final_task")
@_folder("--out", "output folder (matrix, images, records)", "runs/pipeline/eval")
@_file("--metrics", "the final metrics, JSON", "results/metrics.json")
@_file("--curve", "accuracy on all seen classes after each task, CSV", "results/accuracy_curve.csv")
@_file("--heatmap", "accuracy on each task after each task, PNG", "results/accuracy_matrix.png")
@_file("--magnitudes", "the magnitudes after each task, PNG", "results/magnitudes.png")
def evaluate_stage(
    params: str,
    record: str | None,
    out: str,
    metrics: str,
    curve: str,
    heatmap: str,
    magnitudes: str,
) -> None:
    from sdlora.pipeline.evaluate import evaluate_stage

    _show(
        evaluate_stage(
            load_config(params),
            record=record,
            out=out,
            metrics_file=metrics,
            curve_file=curve,
            heatmap_file=heatmap,
            magnitudes_file=magnitudes,
        )
    )


@stage.command("report", help="Final metrics, plots and the merged model to MLflow.")
@_params_option
@_folder("--eval", "the evaluate stage's output", "runs/pipeline/eval", dest="eval_dir")
@_file("--metrics", "the evaluate stage's metrics", "results/metrics.json")
@_folder("--record", "the last task's output", None, "final_task")
@_folder("--prepared", "the prepare stage's output", "data/prepared")
@_folder("--backbone", "the pretrain stage's output", "artifacts/backbone")
@_folder("--out", "output folder", "runs/pipeline/report")
def report_stage(
    params: str,
    eval_dir: str,
    metrics: str,
    record: str | None,
    prepared: str,
    backbone: str,
    out: str,
) -> None:
    from sdlora.pipeline.report import report_stage

    payload = report_stage(
        load_config(params),
        eval_dir=eval_dir,
        metrics_file=metrics,
        record=record,
        prepared=prepared,
        backbone=backbone,
        out=out,
    )
    keys = ("mlflow_run_id", "experiment", "tracking_uri", "ui", "model_uri", "timm_model",
            "registry")  # fmt: skip
    _show({k: payload[k] for k in keys})


@stage.command("compare", help="Every method of compare/params.yaml over its seeds: one table.")
@_params_option
@_file("--compare", "the comparison's settings", "compare/params.yaml", dest="settings")
@_folder("--backbone", "the pretrain stage's output", "artifacts/backbone")
@_folder("--out", "each seed's splits and each run's JSON", "runs/compare")
@_folder("--results", "table, CSV and plots (kept in git)", "results/compare")
@click.option(
    "--no-track", "track", is_flag=True, flag_value=False, default=True, help="do not log to MLflow"
)
def compare_stage(
    params: str, settings: str, backbone: str, out: str, results: str, track: bool
) -> None:
    from sdlora.pipeline.compare import compare_stage

    compare_stage(
        load_config(params),
        load_compare(settings),
        params=params,
        backbone=backbone,
        out=out,
        results=results,
        track=track,
    )


@stage.command("tune", help="A Ray Tune sweep of whole task sequences (tune/params.yaml).")
@_params_option
@_file("--tune", "the sweep's settings", "tune/params.yaml", dest="settings")
@_folder("--prepared", "the prepare stage's output", "data/prepared")
@_folder("--backbone", "the pretrain stage's output", "artifacts/backbone")
@_folder("--results", "trials table, Pareto front, best params (in git)", "results/tune")
@click.option(
    "--no-track", "track", is_flag=True, flag_value=False, default=True, help="do not log to MLflow"
)
def tune_stage(
    params: str, settings: str, prepared: str, backbone: str, results: str, track: bool
) -> None:
    from sdlora.pipeline.tune import tune_stage

    tune_stage(
        load_config(params),
        load_tune(settings),
        params=params,
        prepared=prepared,
        backbone=backbone,
        results=results,
        track=track,
    )


def stage_main(name: str, argv: list[str] | None = None) -> int:
    """``pipelines/<name>.py [OPTIONS]``: run stage ``name``; its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow's informational lines
    command = stage.commands[name]  # usage reads "pipelines/<name>.py [OPTIONS]", as DVC runs it
    bad = (BadInput, FileExistsError)
    return _invoke(command, args, f"pipelines/{name}.py", name, bad, "re-run `dvc repro` to resume")


def _invoke(
    group: click.Command,
    argv: list[str] | None,
    prog: str,
    who: str,
    bad: tuple[type[BaseException], ...],
    resume: str = "run it again",
) -> int:
    """Run ``group`` on ``argv``: 0, or 2 with one line for ``bad`` input and usage errors, 1
    with its message for :class:`sdlora.errors.Failed`; other errors keep their traceback."""
    try:
        code = group.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.UsageError as err:  # a bad option or argument: one line, like any bad input
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        message = " ".join(err.format_message().split())
        click.echo(f"{who}: error: {message}{hint}", err=True)
        return err.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C: no traceback, and how to go on
        click.echo(f"{who}: interrupted: {resume}", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Failed as err:
        click.echo(f"{who}: failed: {err}", err=True)
        return 1
    except bad as err:
        click.echo(f"{who}: error: {err}", err=True)
        return 2
    return code if isinstance(code, int) else 0
