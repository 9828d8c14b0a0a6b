"""A 100-task sequence on a small synthetic benchmark: training cost per task and numerical health.

Generates ``--tasks`` x 2 classes of 16 px images (each class a smooth random pattern; each
image that pattern shifted, with noise), prepares them as an ImageFolder benchmark of 2 classes
per task and runs the whole sequence with ``sdlora run``'s function (:func:`run_sequence`) on
the embedded backbone of ``params.yaml`` (``dvc repro pretrain`` first). After each task it
records the task's training time per epoch, the forward path the adapters took, the
magnitudes (max |alpha|, and the smallest), the last epoch's loss and the accuracy on the
task just learnt and on every task seen. Printed: a table at chosen tasks.

    python benchmarks/long_sequence.py                  # 100 tasks, 3 epochs each
    python benchmarks/long_sequence.py --tasks 20 --epochs 1 --json /tmp/long.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sdlora.config import load_config
from sdlora.core.loop import run_sequence
from sdlora.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, classes: int, train: int, test: int, seed: int = 0) -> None:
    """``root/{train,test}/cNNN/*.png``: each class a smooth pattern, each image shifted + noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        small = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        pattern = np.asarray(Image.fromarray(small).resize((20, 20), Image.BICUBIC), np.float32)
        for split, n in (("train", train), ("test", test)):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True)
            for i in range(n):
                dy, dx = rng.integers(0, 5, 2)
                img = pattern[dy : dy + 16, dx : dx + 16] + rng.normal(0, 25, (16, 16, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--test-per-class", type=int, default=8)
    parser.add_argument("--json", help="also write every task's figures here")
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sdlora-long-") as tmp:
        root, prepared = Path(tmp) / "images", Path(tmp) / "prepared"
        write_images(root, 2 * args.tasks, args.train_per_class, args.test_per_class)
        cfg = load_config(args.params, {
            "data.dataset": "imagefolder", "data.root": str(root), "data.init_cls": 2,
            "data.increment": 2, "data.augment": "none", "train.epochs": args.epochs,
            "train.batch_size": args.batch,
            "progress": False,
        })  # fmt: skip
        prepare(cfg.data, seed=cfg.seed, out=prepared)
        last = time.perf_counter()

        def record(task: int, model, result) -> None:
            nonlocal last
            now = time.perf_counter()
            rec = result.records[-1]
            alpha = model.magnitudes.alpha.detach().abs()
            m = model.matrices()[0]
            vit = model.backbone
            tokens = cfg.train.batch_size * (vit.patch_embed.num_patches + vit.num_prefix_tokens)
            rows.append({
                "task": task + 1,
                "epoch_s": float(np.mean([e["epoch_seconds"] for e in rec["epochs"]])),
                "task_s": now - last,  # training, evaluation of every task seen, bookkeeping
                "stored_rank": m.stored_rank,
                "path": "dense" if m.dense_is_cheaper(tokens, weight_grad=True) else "low-rank",
                "alpha_max": float(alpha.max()), "alpha_min": float(alpha.min()),
                "loss": rec["epochs"][-1]["train_loss"],
                "acc_new": rec["accuracy"][-1],
                "acc_all": float(np.average(rec["accuracy"], weights=rec["counts"])),
            })  # fmt: skip
            last = now

        run_sequence(cfg, prepared, on_task_end=record)
    show = sorted({1, 2, 5, 10, 25, 50, 75, args.tasks} & set(range(1, args.tasks + 1)))
    print(f"\n{args.tasks} tasks of 2 synthetic classes, {args.epochs} epochs each, "
          f"{cfg.backbone.name} at {cfg.data.image_size} px, rank {cfg.model.rank}, "
          f"batch {cfg.train.batch_size}, {cfg.train.threads} thread(s)\n")  # fmt: skip
    print(
        "| task | stored rank after | path | s / epoch | task s (with eval) | max abs alpha | "
        "min abs alpha | last-epoch loss | acc. new task % | acc. all seen % |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row["task"] in show:
            print(f"| {row['task']} | {row['stored_rank']} | {row['path']} | "
                  f"{row['epoch_s']:.3f} | {row['task_s']:.2f} | {row['alpha_max']:.3f} | "
                  f"{row['alpha_min']:.3f} | {row['loss']:.4f} | {row['acc_new']:.1f} | "
                  f"{row['acc_all']:.1f} |")  # fmt: skip
    firsts = [r["epoch_s"] for r in rows[1:11]]
    lasts = [r["epoch_s"] for r in rows[-10:]]
    a, b = np.median(firsts), np.median(lasts)
    print(f"\nseconds per epoch: tasks 2-11 median {a:.3f}, last 10 tasks {b:.3f} ({b / a:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
