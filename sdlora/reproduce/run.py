"""``python -m sdlora reproduce PRESET``: a preset's variants over its seeds, through the pipeline.

Each seed's splits are prepared once by the prepare stage's function; the backbone is recorded
by the pretrain stage's; every (variant, seed) runs the compare stage's loop
(:func:`sdlora.report.compare.run_variant`) with each task trained as a ``train@k`` stage trains
it, on Ray Train (:func:`sdlora.ops.ray_train.ray_learner`: one worker per GPU, checkpoints
named by the task's identity, so a re-run resumes), and gets its MLflow run. The table puts
each variant's mean ± std next to SPEC §6's published figures (:mod:`sdlora.reproduce.table`).

Params come from the preset; from ``params.yaml`` only where and how it runs: ``ray`` (address,
CPUs per worker, retries), ``mlflow`` and ``progress``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sdlora.config import (
    Config,
    ConfigError,
    identity_key,
    load_config,
    parse_config,
    with_overrides,
)
from sdlora.errors import Failed
from sdlora.files import write_json, write_text
from sdlora.reproduce.presets import Preset, load_preset
from sdlora.reproduce.table import markdown, rows_against_published

WORK = Path("runs/reproduce")
RESULTS = Path("results/reproduce")


def runtime_changes(runtime: Config) -> dict[str, Any]:
    """The dotted keys ``params.yaml`` contributes: where and how the runs execute."""
    r, m = runtime.ray, runtime.mlflow
    return {
        "progress": runtime.progress,
        "ray.address": r.address,
        "ray.cpus_per_worker": r.cpus_per_worker,
        "ray.max_failures": r.max_failures,
        "ray.poll_interval_s": r.poll_interval_s,
        "mlflow.tracking_uri": m.tracking_uri,
        "mlflow.experiment": m.experiment,
    }


def visible_gpus(address: str | None) -> int:
    """GPUs the Ray cluster has (an in-process start counts this machine's)."""
    import ray

    from sdlora.ops.ray_session import ensure_ray

    ensure_ray(address)
    return int(ray.cluster_resources().get("GPU", 0))


def gpu_changes(preset: Preset, runtime: Config, gpus: int | None) -> dict[str, Any]:
    """One Ray Train worker per GPU; refuse a machine without one, saying what the run costs."""
    have = visible_gpus(runtime.ray.address) if gpus is None else gpus
    if have < 1:
        runs = len(preset.seeds) * len(preset.variants)
        raise Failed(
            f"reproduce {preset.name}: the full protocol needs a GPU (about "
            f"{preset.gpu_hours():.1f} GPU hours: {runs} runs of {preset.num_tasks} tasks, "
            f"{preset.epochs} epochs, ViT-B/16 at 224 px) and Ray sees none here; run it where "
            "Ray sees GPUs (ray.address in params.yaml for a cluster), or add --smoke to check "
            "the same code path on CPU in a minute"
        )
    return {"device": "cuda", "ray.use_gpu": True, "ray.num_workers": have}


def plan(
    preset: Preset,
    runtime: Config,
    work: Path,
    *,
    smoke: bool,
    gpus: int | None,
    root: str | None,
    only: tuple[str, ...] = (),
) -> list[Any]:
    """Every (variant, seed) of the run as a validated :class:`~sdlora.report.compare.Variant`;
    ``only``: these variants (default: all the preset's)."""
    from sdlora.report.compare import Variant
    from sdlora.reproduce import smoke as toy

    unknown = [v for v in only if v not in preset.variants]
    if unknown:
        raise ConfigError(
            f"--variant {unknown[0]}: {preset.name} has the variants {list(preset.variants)}"
        )
    labels = [v for v in preset.variants if not only or v in only]
    base = runtime_changes(runtime)
    seeds = preset.seeds[:1] if smoke else preset.seeds
    if smoke:
        data = toy.write_standin(preset, work / "standin")
    else:
        data = {} if root is None else {"data.root": root}
        base.update(gpu_changes(preset, runtime, gpus))
    variants = []
    for seed in seeds:
        changes = {**base, **(toy.smoke_changes(preset, data, seed) if smoke else data)}
        for label in labels:
            own = preset.variants[label]
            own = toy.trim_schedule(own) if smoke else own
            raw = with_overrides(preset.raw(label, seed), {**changes, **own})
            cfg = parse_config(raw, f"preset {preset.name}, variant {label}, seed {seed}")
            variants.append(Variant(label, seed, cfg))
    return variants


def reproduce(
    name: str,
    *,
    params: str | Path = "params.yaml",
    smoke: bool = False,
    gpus: int | None = None,
    root: str | None = None,
    out: str | Path | None = None,
    results: str | Path | None = None,
    track: bool = True,
    variants: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run preset ``name`` (``benchmark/flavour``); write and return the table against SPEC §6.

    ``smoke``: the same path at toy size on CPU (:mod:`sdlora.reproduce.smoke`). ``gpus``:
    Ray Train workers (default: every GPU Ray sees). ``root``: the dataset's folder (default:
    the preset's ``data.root``). ``out``: the work folder; ``results``: where the table goes
    (default ``results/reproduce``; a smoke run's stays in ``out``). ``variants``: run only
    these (default: every variant of the preset).
    """
    from sdlora.core.train import check_settings
    from sdlora.data.prepare import open_prepared
    from sdlora.ops.ray_train import ray_learner
    from sdlora.pipeline.compare import prepared_for_seed, summary_key, track_run, track_summary
    from sdlora.pipeline.layout import read_inputs
    from sdlora.pipeline.mlflow_run import command_tag
    from sdlora.pipeline.preflight import check_backbone
    from sdlora.pipeline.pretrain import pretrain_stage
    from sdlora.report import compare

    preset = load_preset(name)
    runtime = load_config(params)
    tag = f"{preset.benchmark}-{preset.flavour}" + ("-smoke" if smoke else "")
    work = Path(out) if out is not None else WORK / tag
    planned = plan(preset, runtime, work, smoke=smoke, gpus=gpus, root=root, only=variants)
    first = planned[0].cfg
    check_settings(first)
    check_backbone(first)  # timm's weights load (or a smoke's random ViT builds) before any work
    backbone = work / "backbone"
    pretrain_stage(first, out=backbone)  # the pipeline's record of the backbone
    seeds = list(dict.fromkeys(v.seed for v in planned))
    labels = compare.labels_of(planned)
    print(
        f"reproduce {preset.name}{' (smoke)' if smoke else ''}: {len(planned)} runs "
        f"({len(labels)} variants x {len(seeds)} seed{'s' * (len(seeds) != 1)}) of "
        f"{preset.title}; work in {work}/ (Ray's output: {work}/logs/<run>.log)",
        flush=True,
    )
    start = time.perf_counter()

    def prepared(seed: int) -> Path:
        cfg = next(v.cfg for v in planned if v.seed == seed)
        return prepared_for_seed(work, cfg, seed)

    def learner(variant: Any, folder: Path) -> Any:
        inputs = read_inputs(open_prepared(folder), backbone)
        return ray_learner(variant.cfg, work / "runs" / variant.name,
                           lambda t: identity_key(variant.cfg, inputs, upto=t),
                           variant.cfg.ray, work / "logs" / f"{variant.name}.log")  # fmt: skip

    def on_run(i: int, variant: Any, run: dict[str, Any]) -> None:
        write_json(work / "runs" / f"{variant.name}.json", run)
        if track:
            track_run(variant, run, work / "prepared" / f"seed{variant.seed}", backbone,
                      stage="reproduce", tags={"sdlora.reproduce": preset.name,
                                               "sdlora.variant": variant.label})  # fmt: skip
        s = run["summary"]
        print(
            f"reproduce [{i + 1}/{len(planned)}] {variant.label} seed {variant.seed}: final "
            f"{s['final_accuracy']:.2f}, AAA {s['average_anytime_accuracy']:.2f} "
            f"({run['seconds']:.0f} s)",
            flush=True,
        )

    runs = compare.run_comparison(planned, prepared, on_run, learner, diagnostics=False)
    rows = rows_against_published(compare.summarize_runs(runs, labels), preset)
    folder = Path(results) if results is not None else (work if smoke else RESULTS)
    table = markdown(preset, rows, smoke=smoke)
    payload = {"preset": preset.name, "smoke": smoke, "rows": rows}
    paths = {"table": folder / f"{tag}.md", "json": folder / f"{tag}.json"}
    write_text(paths["table"], table)
    write_json(paths["json"], payload)
    if track:
        inputs = {s: read_inputs(open_prepared(prepared(s)), backbone) for s in seeds}
        key = summary_key(planned, inputs)
        track_summary(
            first, paths, rows, key, run_name=f"reproduce-{tag}-{key[:8]}",
            tags={"sdlora.reproduce": preset.name, "sdlora.smoke": smoke,
                  command_tag("reproduce"): "python -m sdlora reproduce"},
        )  # fmt: skip
    print(table, end="")
    print(f"reproduce: {len(planned)} runs in {(time.perf_counter() - start) / 60:.1f} min; "
          f"table in {paths['table']}")  # fmt: skip
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}}
