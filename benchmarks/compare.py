"""SD-LoRA vs sequential LoRA, frozen backbone and prototype classifier on the embedded benchmarks.

Prints, per benchmark and method, mean ± std over seeds of final accuracy, average anytime
accuracy (AAA), forgetting and stored parameters, plus the drift diagnostic of
``sdlora.diagnostics``: task-known nearest-class-mean (NCM) accuracy on the earlier tasks at the
end, and how far it fell from right after each task was learned (feature drift, head excluded).

    python benchmarks/compare.py                       # digits + glyphs, 4 methods, seeds 0 1 2
    python benchmarks/compare.py --datasets glyphs --seeds 0 --set train.epochs=3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from sdlora.atomic import write_json
from sdlora.config import load_config
from sdlora.data.prepare import prepare
from sdlora.metrics import lower_triangular
from sdlora.plots import accuracy_curve
from sdlora.report import result_payload
from sdlora.sequence import run_sequence

# Task splits per benchmark: digits 5 x 2 classes, glyphs (40 letters) 5 x 8 classes.
BENCHMARKS = {
    "digits": {"data.dataset": "digits", "data.init_cls": 2, "data.increment": 2},
    "glyphs": {"data.dataset": "glyphs", "data.init_cls": 8, "data.increment": 8},
}
METHODS = ("sdlora", "seq_lora", "frozen", "prototype")


def old_tasks(m: np.ndarray) -> tuple[float, float]:
    """(mean over earlier tasks of the last row, mean drop from the diagonal to the last row)."""
    m = np.asarray(m)
    last = m.shape[0] - 1
    if last == 0:
        return float("nan"), float("nan")
    end, learned = m[last, :last], np.diag(m)[:last]
    return float(end.mean()), float((learned - end).mean())


def storage(s: dict[str, int]) -> str:
    """Stored parameters and their share of the backbone's."""
    share = 100 * s["stored_params"] / s["backbone_params"]
    return f"{s['stored_params']:,} ({share:.1f}%)"


def fmt(values: list[float], digits: int = 2) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--datasets", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="params overrides for every run, e.g. train.epochs=3",
    )
    ap.add_argument("--out", default="runs/compare", help="folder for per-run JSON and plots")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets:
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                cfg = load_config(
                    args.params,
                    {
                        **BENCHMARKS[dataset],
                        **overrides,
                        "model.method": method,
                        "seed": seed,
                        "progress": False,
                    },
                )
                prepared = out / "prepared" / f"{dataset}-seed{seed}"
                if not (prepared / "manifest.json").is_file():
                    prepare(cfg.data, seed=seed, out=prepared)
                start = time.perf_counter()
                res = run_sequence(cfg, prepared, ncm=True)
                seconds = time.perf_counter() - start
                write_json(
                    out / f"{dataset}_{method}_seed{seed}.json",
                    result_payload(res) | {"seconds": seconds, "overrides": overrides},
                )
                ncm_end, ncm_drop = old_tasks(lower_triangular(res.ncm_rows))
                runs.append(
                    {
                        **res.summary,
                        "storage": res.records[-1]["storage"],
                        "seconds": seconds,
                        "ncm_drop": ncm_drop,
                        "ncm_old": ncm_end,
                        "head_old": old_tasks(lower_triangular(res.head_known_rows))[0],
                        "cil_old": old_tasks(res.matrix)[0],
                    }
                )
                print(
                    f"{dataset:7s} {method:9s} seed {seed}: final "
                    f"{res.summary['final_accuracy']:.2f}  AAA "
                    f"{res.summary['average_anytime_accuracy']:.2f}  forgetting "
                    f"{res.summary['forgetting']:.2f}  NCM drop {ncm_drop:.2f}  "
                    f"({seconds:.0f} s)",
                    flush=True,
                )
            rows.append((dataset, method, runs))
        curves = {
            m: np.mean([r["anytime_accuracy"] for r in rs], axis=0).tolist()
            for d, m, rs in rows
            if d == dataset
        }
        accuracy_curve(
            curves,
            out / f"{dataset}_curve.png",
            title=f"{dataset}: anytime accuracy, mean of seeds {args.seeds}",
        )
    print_table(rows)
    print(
        f"\nseeds {args.seeds}; percent, top-1; stored params (share of the backbone's). "
        "NCM drop: task-known nearest-class-mean accuracy on current features (no head), mean "
        "drop from just learned to the end = backbone drift. Old tasks at end, task id given: "
        "NCM, and the head restricted to the task's classes; CIL: the ordinary accuracy."
    )
    (out / "table.json").write_text(
        json.dumps(
            [{"benchmark": d, "method": m, "runs": r} for d, m, r in rows], indent=2, default=str
        )
    )


COLUMNS = (  # header, run key (None: special)
    ("final acc", "final_accuracy"),
    ("AAA", "average_anytime_accuracy"),
    ("forgetting", "forgetting"),
    ("NCM drop", "ncm_drop"),
    ("old: NCM known", "ncm_old"),
    ("old: head known", "head_old"),
    ("old: CIL", "cil_old"),
)


def print_table(rows: list[tuple[str, str, list[dict]]]) -> None:
    """One line per benchmark and method, mean ± std over seeds."""
    table = [("benchmark", "method", *(h for h, _ in COLUMNS), "stored params", "s/run")]
    for dataset, method, runs in rows:
        table.append(
            (
                dataset,
                method,
                *(fmt([r[k] for r in runs]) for _, k in COLUMNS),
                storage(runs[0]["storage"]),
                f"{np.mean([r['seconds'] for r in runs]):.0f}",
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    print()
    for i, r in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
