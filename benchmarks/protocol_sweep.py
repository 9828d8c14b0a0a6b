"""Protocol sweep: which settings of the shared protocol decide SD-LoRA against its baselines.

Every setting is a protocol applied to *every* method alike (never a per-method tweak). Runs go
through the project's one runtime (``prepare`` + ``run_sequence``); each (setting, method, seed)
is cached as JSON under ``--cache``, so a rerun skips finished runs and only prints the table.

    python benchmarks/protocol_sweep.py [--setting "KEY=VALUE ..."]... [--grid KEY=V1,V2]...
        [--base KEY=VALUE ...] [--methods sdlora frozen ...] [--seeds 0 1 2] [--cache /tmp/sweep]

``--setting`` (repeatable): one setting, its overrides separated by spaces; "" is the default.
``--grid`` (repeatable): the cartesian product of the listed values is added to the settings.
``--base``: overrides under every setting. ``--report``: print the table of cached runs only.
Keys are dotted params keys (``train.lr``), plus the pseudo-key ``head_init`` (``torch`` or
``kaiming_linear``): a params key ``model.head_init`` if the config has one, otherwise the class
attribute ``sdlora.core.methods.Method.head_init`` for the run (restored afterwards).

Per run it also records, after the last task: the share of test images predicted into each
task's classes, each task's mean head bias, row norm and winning logit, and the mean feature norm
(the head's cross-task calibration), plus task-known NCM and head accuracy on the old tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sdlora.config import Config, ModelConfig, load_config
from sdlora.core.loop import run_sequence
from sdlora.data.prepare import open_prepared, prepare

Setting = dict[str, Any]
PSEUDO_KEYS = ("head_init",)


def parse_pairs(items: list[str]) -> Setting:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values read as YAML)."""
    out: Setting = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def settings_from_args(args: argparse.Namespace) -> list[Setting]:
    """The explicit ``--setting`` list, then the ``--grid`` product (default alone if neither)."""
    settings = [parse_pairs(s.split()) for s in args.setting]
    if args.grid:
        axes = []
        for g in args.grid:
            key, values = g.split("=", 1)
            axes.append([(key, yaml.safe_load(v)) for v in values.split(",")])
        settings += [dict(combo) for combo in itertools.product(*axes)]
    return settings or [{}]


def setting_name(setting: Setting) -> str:
    """Stable, readable name of a setting: sorted ``key=value`` pairs, ``default`` if empty."""
    if not setting:
        return "default"
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(setting.items()))


def run_file(cache: Path, name: str, method: str, seed: int) -> Path:
    slug = hashlib.sha256(name.encode()).hexdigest()[:12]
    return cache / "runs" / f"{slug}_{method}_seed{seed}.json"


@contextmanager
def head_init(value: str | None, overrides: Setting) -> Iterator[Setting]:
    """Apply the ``head_init`` pseudo-key: a params key if one exists, else the class attribute."""
    if value is None:
        yield overrides
        return
    if "head_init" in ModelConfig.model_fields:
        yield {**overrides, "model.head_init": value}
        return
    import sdlora.core.methods.base as M

    before = M.Method.head_init
    M.Method.head_init = value
    try:
        yield overrides
    finally:
        M.Method.head_init = before


def prepared_folder(cfg: Config, cache: Path) -> Path:
    """One prepared split per seed and data settings that prepare reads (not ``augment``)."""
    data = cfg.data.model_dump()
    data.pop("augment", None)
    key = hashlib.sha256(json.dumps([cfg.seed, data], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / "prepared" / f"{cfg.data.dataset}-seed{cfg.seed}-{key}"
    if not (folder / "task_00" / "task.json").is_file():
        prepare(cfg.data, seed=cfg.seed, out=folder)
    return folder


@torch.no_grad()
def head_diagnostics(model: Any, prepared: Path, cfg: Config) -> dict[str, Any]:
    """The head's cross-task calibration on every test image after the last task.

    ``pred_share``: percent of all test images predicted into each task's classes (a calibrated
    head gives each task its own share); ``bias``/``row_norm``: each task's mean head bias and
    weight-row norm; ``win_logit``: mean over test images of each task's highest logit;
    ``feat_norm``: mean feature norm. Uses internals, so a failure returns only the error.
    """
    try:
        from sdlora.core.evaluate import outputs
        from sdlora.core.train import resolve_device, task_stream
        from sdlora.data.prepare import open_prepared

        device = resolve_device(cfg.device)
        model.eval().to(device)
        num_tasks = open_prepared(prepared).num_tasks
        stream = task_stream(prepared, list(range(num_tasks)), "test", cfg, model.backbone)
        feats, labels = outputs(model.forward_features, stream, device, cfg.train.eval_batch_size)
        logits = model.forward_head(feats.to(device)).cpu()
        w, b = (x.detach().cpu() for x in model.head.full_weight())
        pred = logits.argmax(1)
        spans = [open_prepared(prepared).task_classes(t) for t in range(num_tasks)]
        true_share, pred_share, bias, row_norm, win = [], [], [], [], []
        for lo, n in spans:
            true_share.append(100.0 * ((labels >= lo) & (labels < lo + n)).float().mean().item())
            pred_share.append(100.0 * ((pred >= lo) & (pred < lo + n)).float().mean().item())
            bias.append(b[lo : lo + n].mean().item())
            row_norm.append(w[lo : lo + n].norm(dim=1).mean().item())
            win.append(logits[:, lo : lo + n].max(1).values.mean().item())
        return {
            "true_share": true_share,
            "pred_share": pred_share,
            "bias": bias,
            "row_norm": row_norm,
            "win_logit": win,
            "feat_norm": feats.norm(dim=1).mean().item(),
        }
    except Exception as err:  # diagnostics must never lose a finished run
        return {"error": repr(err)}


def old_mean(rows: list[list[float]]) -> float:
    """Mean over the earlier tasks of the last row (task-known diagnostics)."""
    if not rows or len(rows[-1]) < 2:
        return float("nan")
    return float(np.mean(rows[-1][:-1]))


def run_one(params: str, setting: Setting, method: str, seed: int, cache: Path) -> dict[str, Any]:
    """Train one (setting, method, seed) through ``run_sequence``; return its JSON record."""
    merged = dict(setting)
    plain = {k: v for k, v in merged.items() if k not in PSEUDO_KEYS}
    overrides = {**plain, "model.method": method, "seed": seed, "progress": False}
    with head_init(merged.get("head_init"), overrides) as ov:
        cfg = load_config(params, ov)
        prepared = prepared_folder(cfg, cache)
        diag: dict[str, Any] = {}
        mags: list[list[float]] = []  # magnitudes after each task (SD-LoRA)
        last = open_prepared(prepared).num_tasks - 1

        def on_task_end(t: int, model: Any, _res: Any) -> None:
            alpha = getattr(getattr(model, "magnitudes", None), "alpha", None)
            if alpha is not None and len(alpha):
                mags.append([float(a) for a in alpha.detach().cpu().reshape(-1)])
            if t == last:
                diag.update(head_diagnostics(model, prepared, cfg))

        start = time.perf_counter()
        res = run_sequence(cfg, prepared, ncm=True, on_task_end=on_task_end)
        seconds = time.perf_counter() - start
    return {
        "setting": setting_name(setting),
        "overrides": merged,
        "method": method,
        "seed": seed,
        "summary": res.summary,
        "matrix": [list(map(float, r)) for r in res.matrix.tolist()],
        "ncm_old": old_mean(res.ncm_rows),
        "head_known_old": old_mean(res.head_known_rows),
        "ncm_rows": res.ncm_rows,
        "head_known_rows": res.head_known_rows,
        "diagnostics": diag,
        "magnitudes": mags,
        "seconds": seconds,
        "params_sha256": hashlib.sha256(Path(params).read_bytes()).hexdigest()[:16],
    }


def fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def table(records: list[dict[str, Any]]) -> str:
    """One line per (setting, method): mean ± std over the seeds present."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    head = ("setting", "method", "seeds", "final", "AAA", "forgetting", "NCM old", "head-known old",
            "pred share last task", "s/run")  # fmt: skip
    rows = [head]
    for (name, method), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        share = [r["diagnostics"].get("pred_share", [np.nan])[-1] for r in runs]
        rows.append(
            (
                name,
                method,
                ",".join(str(r["seed"]) for r in runs),
                fmt([r["summary"]["final_accuracy"] for r in runs]),
                fmt([r["summary"]["average_anytime_accuracy"] for r in runs]),
                fmt([r["summary"]["forgetting"] for r in runs]),
                fmt([r["ncm_old"] for r in runs]),
                fmt([r["head_known_old"] for r in runs]),
                fmt(share),
                f"{np.mean([r['seconds'] for r in runs]):.0f}",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--setting", action="append", default=[], metavar='"KEY=VALUE ..."')
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    ap.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--methods", nargs="+", default=["sdlora", "frozen"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--cache", default="/tmp/sweep", help="per-run JSON and prepared splits")
    ap.add_argument("--report", action="store_true", help="only print the cached runs' table")
    args = ap.parse_args()
    cache = Path(args.cache)
    (cache / "runs").mkdir(parents=True, exist_ok=True)
    base = parse_pairs(args.base)
    records: list[dict[str, Any]] = []
    if args.report:
        records = [json.loads(p.read_text()) for p in sorted((cache / "runs").glob("*.json"))]
        records.sort(key=lambda r: (r["setting"], r["method"], r["seed"]))
    else:
        for setting in settings_from_args(args):
            name = setting_name({**base, **setting})
            for method in args.methods:
                for seed in args.seeds:
                    path = run_file(cache, name, method, seed)
                    if path.is_file():
                        rec = json.loads(path.read_text())
                    else:
                        rec = run_one(args.params, {**base, **setting}, method, seed, cache)
                        tmp = path.with_suffix(".tmp")
                        tmp.write_text(json.dumps(rec, indent=1, default=float))
                        tmp.replace(path)
                        s = rec["summary"]
                        print(
                            f"{name} | {method} seed {seed}: final {s['final_accuracy']:.2f} "
                            f"AAA {s['average_anytime_accuracy']:.2f} forgetting "
                            f"{s['forgetting']:.2f} ({rec['seconds']:.0f} s)",
                            flush=True,
                        )
                    records.append(rec)
    print()
    print(table(records))


if __name__ == "__main__":
    main()
