"""The sequence's identity and its MLflow run: one run per sequence, found again by its key."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlora.config import (
    Config,
    ConfigError,
    RunInputs,
    identity,
    identity_key,
    parse_config,
    read_yaml,
)
from sdlora.core.records import task_metrics
from sdlora.ops.dvc import baseline_params, experiment_name
from sdlora.ops.tracking import SequenceTracker, flatten_params

DATA_TAG = "sdlora.data_hash.{task}"  # on the run: each task's prepared data, by content


def run_key(cfg: Config, inputs: RunInputs) -> str:
    """The sequence's MLflow key (tag ``sdlora_key``): its identity, so a re-run stage reopens
    its run and a sequence that computes anything differently gets a run of its own. The data
    count by their params (each task's classes) here: ``train@0`` runs before a later task's
    data is prepared. Their content is in the tags :func:`data_tags` names, which a reopened
    run must agree with."""
    return identity_key(cfg, inputs.without_data())


def data_tags(inputs: RunInputs) -> dict[str, str]:
    """Each prepared task's content hash as a run tag (:data:`DATA_TAG`)."""
    return {DATA_TAG.format(task=t): h for t, h in enumerate(inputs.task_hashes)}


def run_params(cfg: Config, inputs: RunInputs) -> dict[str, str]:
    """The MLflow run's params: the sequence's identity (:func:`sdlora.config.identity`, the
    data by their params) as flat keys, so runs that differ in what decides the numbers differ
    in a param."""
    raw = identity(cfg, inputs.without_data())
    del raw["inputs"]["data_hash"]  # None here: the content is in the data tags
    tasks = raw.pop("tasks")
    params = flatten_params(raw)
    for k, entry in tasks.items():
        params.update({f"tasks.{k}.{n}": str(v) for n, v in entry.items() if v is not None})
    return params


NAME_CHANGES = 40  # characters of the changed params a run's name shows (the UI cuts ~50)


@dataclass(frozen=True)
class Baseline:
    """What a run is told apart from: the params at a commit, and the DVC experiment's name."""

    commit: str | None  # the params' commit (None: none found)
    changed: dict[str, tuple[str, str]]  # identity key -> (baseline value, this run's value)
    experiment: str | None = None  # `dvc exp run`'s name for this run


def find_baseline(cfg: Config, params_file: str | Path = "params.yaml") -> Baseline:
    """The params that differ from ``params_file`` at the baseline commit (what `dvc params
    diff` shows), among those that decide the numbers (:func:`sdlora.config.identity`)."""
    exp = experiment_name()
    found = baseline_params(params_file)
    if found is None:
        return Baseline(None, {}, exp)
    commit, text = found
    try:
        before = parse_config(read_yaml(text, f"{commit}:{params_file}"), f"{commit}:{params_file}")
    except ConfigError:  # the commit's params predate this version: nothing to compare
        return Baseline(None, {}, exp)
    inputs = RunInputs((), None)  # the data and weights: not params
    old, new = (flatten_params(identity(c, inputs)) for c in (before, cfg))
    unset = {None, "None"}  # absent on one side and null on the other: no change
    derived = re.compile(r"tasks\.\d+\.(label_offset|classes)")  # data.*'s, said there
    changed = {k: (old.get(k, "-"), new.get(k, "-")) for k in sorted({*old, *new})
               if old.get(k) != new.get(k) and not {old.get(k), new.get(k)} <= unset
               and not derived.fullmatch(k)}  # fmt: skip
    return Baseline(commit, changed, exp)


def _short(key: str, keys: Iterable[str]) -> str:
    """``train.lr`` as ``lr`` unless another changed key ends the same (``pretrain.lr``)."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(k.rsplit(".", 1)[-1] == leaf for k in keys) == 1 else key


def _clip(value: str, most: int = 16) -> str:
    """A value short enough for a name: a task list is no run's name."""
    return value if len(value) <= most else value[: most - 1] + "…"


def run_name(cfg: Config, key: str, baseline: Baseline | None = None) -> str:
    """What the run list shows, what tells runs apart first: the DVC experiment's name, the
    method, the tasks, then the params changed from the baseline (or dataset and seed when
    none changed), then the key's first 8 characters (it hashes everything the sequence
    depends on, :func:`sdlora.config.identity_key`)."""
    baseline = baseline or Baseline(None, {})
    tasks = len(cfg.tasks or {})
    parts = [baseline.experiment] if baseline.experiment else []
    parts.append(f"{cfg.model.method} {tasks}t")
    changes = baseline.changed
    if changes:
        entries = [f"{_short(k, changes)}={_clip(v)}" for k, (_, v) in changes.items()]
        fit = [e for i, e in enumerate(entries) if len(" ".join(entries[: i + 1])) <= NAME_CHANGES]
        shown = fit or entries[:1]  # at least one, however long
        parts += shown + (["…"] if len(shown) < len(entries) else [])
    else:
        parts.append(f"{cfg.data.dataset} s{cfg.seed}")
    return " ".join([*parts, key[:8]])


def run_description(cfg: Config, key: str, baseline: Baseline | None = None) -> str:
    """The run's description (MLflow's ``mlflow.note.content``, Markdown): what ran, what
    changed from the baseline commit, and the key."""
    baseline = baseline or Baseline(None, {})
    d, tasks = cfg.data, len(cfg.tasks or {})
    split = (f"{len(d.tasks)} tasks named in data.tasks" if d.tasks is not None else
             f"{tasks} tasks ({d.init_cls} classes, then {d.increment} each)")  # fmt: skip
    lines = [f"**{cfg.model.method}** on `{d.dataset}`: {split}, seed {cfg.seed}, backbone "
             f"`{cfg.backbone.name}`."]  # fmt: skip
    if baseline.experiment:
        lines.append(f"DVC experiment `{baseline.experiment}`.")
    if baseline.commit is not None:
        if baseline.changed:
            lines.append(f"Changed from the params at commit `{baseline.commit}`:\n")
            lines += [f"- `{k}`: {a} → {b}" for k, (a, b) in baseline.changed.items()]
            lines.append("")  # the list ends
        else:
            lines.append(f"The params at commit `{baseline.commit}`, unchanged.")
    lines.append(f"Sequence key `{key}` (tag `sdlora_key`).")
    return "\n".join(lines)


def command_tag(stage: str) -> str:
    """The run tag holding ``stage``'s command line, e.g. ``sdlora.command.train_3``."""
    return "sdlora.command." + re.sub(r"[^A-Za-z0-9_.-]+", "_", stage)


def open_run(
    cfg: Config,
    records: list[dict[str, Any]],
    backfill: int,
    *,
    stage: str,
    inputs: RunInputs,
    name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> SequenceTracker:
    """Open (or reopen) the sequence's MLflow run; a new run gets tasks ``0..backfill-1``.

    ``stage`` (``train@3``, ``report``): its command line (``sys.argv``, as DVC ran it) is
    recorded in the tag :func:`command_tag` names. ``inputs``: the data's and weights' hashes
    (the run's key is the sequence's identity). ``name``: the run's name when it is
    created (default :func:`run_name`); ``tags``: more tags.
    """
    key = run_key(cfg, inputs)
    baseline = find_baseline(cfg) if name is None else Baseline(None, {})
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=name or run_name(cfg, key, baseline),
        description=run_description(cfg, key, baseline),
        key=key,
        agree=data_tags(inputs),
        params=run_params(cfg, inputs),
        tags={
            "sdlora.method": cfg.model.method,
            "sdlora.dataset": cfg.data.dataset,
            "sdlora.backbone": cfg.backbone.name,
            "sdlora.backbone_weights": cfg.backbone.weights,
            "sdlora.num_tasks": len(cfg.tasks or {}),
            command_tag(stage): shlex.join(sys.argv),
            **(tags or {}),
        },
    )
    if tracker.created:
        for j in range(backfill):
            tracker.log_task(j, task_metrics(records, j))
    return tracker
