"""What one SD-LoRA training step costs after t tasks, against the frozen backbone (SPEC §2).

For each backbone it builds the model after ``t`` tasks of rank ``--rank`` (t - 1 stored
directions plus the training pair; every direction random and non-zero) and times the
training step every entry point takes (:func:`sdlora.core.train.train_step`: forward,
cross-entropy on the task's logits, backward, Adam) on random images. The floor is the frozen
backbone with gradients flowing through every block (only ``pos_embed`` and the head train,
so no Linear computes a weight gradient). Each figure is the median of interleaved rounds after
warm-up: every round times every row once, so drifts in the host's speed hit every row alike.

Memory: on CUDA the peak allocated bytes of the step; on CPU the peak resident set of a fresh
process that builds the row's model and takes the steps (so it includes torch itself).
Inference: the merged model (a plain timm ViT with everything folded in) against the plain
backbone, eval mode, same batch.

    python benchmarks/step_cost.py                          # ViT-S/16 and ViT-B/16, CPU
    python benchmarks/step_cost.py --models vit_small_patch16_224 --rounds 5 --paths auto stacked
    python benchmarks/step_cost.py --device cuda --batch 64 --rounds 20 --precision bf16

Nothing is downloaded: the backbones are timm's architectures with random weights, which
cost what trained ones cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdlora.core.model import SDLoRAViT
from sdlora.core.train import World, train_step

CLASSES = 10  # per task


def build(model_name: str, tasks: int, rank: int, path: str, device: torch.device) -> nn.Module:
    """The SD-LoRA model training task ``tasks`` (0: the floor, the bare frozen backbone)."""
    torch.manual_seed(0)
    backbone = timm.create_model(model_name, pretrained=False, num_classes=0)
    if tasks == 0:
        backbone.requires_grad_(False)
        backbone.pos_embed.requires_grad_(True)  # gradients flow through every block
        return nn.Sequential(backbone, nn.Linear(backbone.num_features, CLASSES)).to(device)
    model = SDLoRAViT(backbone, model_name)
    for t in range(tasks):
        model.begin_task(CLASSES, rank)
        with torch.no_grad():
            for m in model.matrices():
                m.B_cur.normal_(std=0.02)  # as after training: a non-zero direction
        if t < tasks - 1:
            model.end_task()
    model.set_forward_path(path)
    return model.to(device)


def stepper(
    model: nn.Module, batch: int, device: torch.device, precision: str = "fp32"
) -> Callable[[], None]:
    """One training step of ``model`` on a fixed random batch (loss on the last task's logits)."""
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    world = World(device=device)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits[:, -CLASSES:], y, reduction="sum")

    return lambda: train_step(model, x, y, batch, optimizer, loss_fn, world, precision)


def inferer(model: nn.Module, batch: int, device: torch.device) -> Callable[[], None]:
    x = torch.randn(batch, 3, 224, 224, device=device)
    model.eval()

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds, each round running all once."""
    for _ in range(warmup):
        for fn in fns.values():
            timed(fn, device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def chosen_path(model: nn.Module, batch: int) -> str:
    """What the ``auto`` path picks for this model's stored rank at this batch's tokens."""
    if not isinstance(model, SDLoRAViT):
        return "-"
    m = model.matrices()[0]
    tokens = batch * (model.backbone.patch_embed.num_patches + model.backbone.num_prefix_tokens)
    adapter = model.adapters()[0]
    if adapter.path != "auto":
        return adapter.path
    return "dense" if m.dense_is_cheaper(tokens, weight_grad=True) else "stacked"


def child_peak(args: argparse.Namespace, model_name: str, tasks: int, path: str) -> float:
    """Peak RSS (MiB) of a fresh process that builds the row's model and takes the steps."""
    cmd = [sys.executable, __file__, "--child", model_name, str(tasks), path, "--rank",
           str(args.rank), "--batch", str(args.batch), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def run_child(model_name: str, tasks: int, path: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    step = stepper(build(model_name, tasks, args.rank, path, torch.device("cpu")), args.batch,
                   torch.device("cpu"))  # fmt: skip
    for _ in range(2):
        step()
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into a child's ru_maxrss
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mib": peak_kib / 1024}))


def cuda_peak(fn: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench(model_name: str, args: argparse.Namespace, rounds: int) -> list[dict]:
    device = torch.device(args.device)
    rows: list[tuple[str, int, str]] = [("floor", 0, "-")]
    for path in args.paths:
        rows += [(f"t={t}" + ("" if path == "auto" else f" {path}"), t, path) for t in args.tasks]
    models = {label: build(model_name, t, args.rank, path, device) for label, t, path in rows}
    steps = {label: stepper(m, args.batch, device, args.precision) for label, m in models.items()}
    print(f"{model_name}: timing {len(steps)} training rows", file=sys.stderr, flush=True)
    medians = interleaved(steps, rounds, args.warmup, device)
    out = []
    for label, t, path in rows:
        if device.type == "cuda":
            peak = cuda_peak(steps[label], device)
        else:
            peak = child_peak(args, model_name, t, path)
        out.append({"model": model_name, "row": label, "tasks": t,
                    "path": chosen_path(models[label], args.batch),
                    "seconds": medians[label], "peak_mib": peak})  # fmt: skip
    # inference: the merged model after the most tasks against the plain backbone
    last = max(args.tasks)
    merged = models[f"t={last}"].merge() if "auto" in args.paths else None
    del models, steps
    if merged is not None:
        torch.manual_seed(0)
        plain = timm.create_model(model_name, pretrained=False, num_classes=merged.num_classes)
        plain = plain.to(device).requires_grad_(False)
        runs = {"backbone": inferer(plain, args.batch, device),
                f"merged t={last}": inferer(merged.to(device), args.batch, device)}  # fmt: skip
        print(f"{model_name}: timing inference", file=sys.stderr, flush=True)
        inf = interleaved(runs, rounds, args.warmup, device)
        out += [{"model": model_name, "row": k, "tasks": -1, "path": "merged" if "merged" in k
                 else "-", "seconds": v, "peak_mib": None} for k, v in inf.items()]  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | row | path | ms | / t=1 | / floor | peak MiB | peak / t=1 |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        same = [x for x in rows if x["model"] == r["model"]]
        floor = next(x for x in same if x["row"] == "floor")
        one = next(x for x in same if x["row"] == "t=1")
        ms = f"{1000 * r['seconds']:.0f}"
        if r["tasks"] < 0:  # inference: throughput against the plain backbone's
            base = next(x for x in same if x["row"] == "backbone")
            speed = base["seconds"] / r["seconds"]
            lines.append(f"| {r['model']} | {r['row']} (inference) | {r['path']} | {ms} | | "
                         f"{speed:.2f}x backbone speed | | |")  # fmt: skip
            continue
        rel1 = f"{r['seconds'] / one['seconds']:.2f}" if r["tasks"] else ""
        relf = f"{r['seconds'] / floor['seconds']:.2f}"
        mem = f"{r['peak_mib']:.0f}"
        mem1 = f"{r['peak_mib'] / one['peak_mib']:.2f}" if r["tasks"] else ""
        lines.append(f"| {r['model']} | {r['row']} | {r['path']} | {ms} | {rel1} | {relf} | "
                     f"{mem} | {mem1} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["vit_small_patch16_224", "vit_base_patch16_224"])  # fmt: skip
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 5, 10, 20, 50, 100])
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 2],
                        help="timed rounds per model (the last value for the rest)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="train.precision of the timed steps")  # fmt: skip
    parser.add_argument("--paths", nargs="+", default=["auto"],
                        choices=["auto", "stacked", "dense"])  # fmt: skip
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]), args.child[2], args)
        return
    if 1 not in args.tasks:
        parser.error("--tasks must include 1 (the ratios are against it)")
    torch.set_num_threads(args.threads)
    rows = []
    for i, name in enumerate(args.models):
        rows += bench(name, args, args.rounds[min(i, len(args.rounds) - 1)])
    print(f"\nbatch {args.batch}, rank {args.rank}, {args.device}, {args.precision}, "
          f"{args.threads} threads; "
          f"medians of interleaved rounds {args.rounds}\n")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
