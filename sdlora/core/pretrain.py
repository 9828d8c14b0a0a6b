"""Pre-train the embedded default's backbone offline, so SD-LoRA has a pre-trained ViT to adapt.

The method assumes a backbone pre-trained on classes other than the downstream ones, and nothing
can be downloaded, so a small timm ViT learns to read Latin letters rendered from fonts matplotlib
ships (``sdlora.data.glyphs``). The downstream benchmarks (handwritten digits; Greek and Cyrillic
letters in held-out fonts) share no class with it. The file it writes loads through timm like any
pretrained weights file (``backbone.weights: PATH``).

It uses the runtime every task uses: the letters are written as a prepared split by the prepare
stage's own function, streamed with the same preprocessing, and trained epoch by epoch with
:func:`sdlora.core.train.run_epoch` (here on every weight, with AdamW, a one-cycle schedule and
label smoothing), validated with :func:`sdlora.core.evaluate.evaluate`, all under
``pretrain.threads`` torch threads (default: ``train.threads``, as a task trains;
:func:`sdlora.core.train.torch_threads`).
Within an epoch it shows training's bar on a terminal, and elsewhere (a log) a line each tenth
of the epoch.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.config import Config, DataConfig
from sdlora.core.backbone import create_architecture, save_backbone
from sdlora.core.evaluate import evaluate
from sdlora.core.train import (
    World,
    resolve_device,
    run_epoch,
    task_loader,
    task_stream,
    torch_threads,
)
from sdlora.data.glyphs import LATIN, load_pretrain_letters
from sdlora.data.prepare import prepare
from sdlora.data.source import imageset_source
from sdlora.progress import ConsoleProgress, EpochBar, Progress


@dataclass
class PretrainReport:
    """What pre-training reached and cost."""

    path: str
    num_classes: int
    train_images: int
    val_accuracy: float
    seconds: float


def prepare_letters(cfg: Config, out: Path) -> dict:
    """The Latin letters (train and a held-out validation render) as one prepared task."""
    p = cfg.pretrain
    size = cfg.data.image_size
    train = load_pretrain_letters(p.per_class, size, seed=p.seed)
    val = load_pretrain_letters(max(p.per_class // 10, 5), size, seed=p.seed + 10_000)
    source = imageset_source("latin", train, val, "embedded: rendered Latin letters")
    split = DataConfig(init_cls=len(LATIN), increment=len(LATIN))
    return prepare(split, seed=p.seed, out=out, source=source)


class _TenthLines:
    """Off a terminal, a line at each tenth of an epoch: a long epoch is not silent until its end
    (the epoch's own line, with its validation accuracy, follows it)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.desc, self.total, self.every = stream, "", 0, 1

    def epoch(self, desc: str, total: int) -> EpochBar:
        self.desc, self.total, self.every = desc, total, max(1, math.ceil(total / 10))
        return self

    def update(self, batches: int, loss: float, samples: int, seconds: float) -> None:
        if batches % self.every == 0 and batches < self.total:
            rate = samples / seconds if seconds > 0 else 0.0
            print(
                f"{self.desc}: batch {batches}/{self.total}, loss {loss:.4f}, "
                f"{rate:.0f} images/s, {seconds:.1f} s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        pass


def pretrain_backbone(cfg: Config, output: str | Path, progress: bool = True) -> PretrainReport:
    """Train ``cfg.backbone`` (name + kwargs) on rendered Latin letters; save it headless.

    It runs with ``pretrain.threads`` torch threads (null: ``train.threads``). ``progress``
    (``cfg.progress``): a bar within each epoch on a terminal, a line each tenth of it
    elsewhere, a line per epoch (loss, images/s, validation accuracy) on both; False shows
    nothing.
    """
    p = cfg.pretrain
    output = Path(output)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    # pre-training is one task of its own: its seed and batch, the data section's preprocessing
    run_cfg = cfg.model_copy(
        update={"seed": p.seed, "train": cfg.train.model_copy(update={"batch_size": p.batch_size})}
    )
    console = ConsoleProgress(progress)
    shown: Progress | None = None
    if progress:  # training's bar on a terminal; elsewhere a line each tenth of an epoch
        shown = console if console.live else _TenthLines(console.stream)
    with (
        torch_threads(p.thread_count(cfg.train.threads)),
        tempfile.TemporaryDirectory(prefix="sdlora-letters-") as tmp,
    ):
        torch.manual_seed(p.seed)
        model = create_architecture(
            cfg.backbone.name, num_classes=len(LATIN), **cfg.backbone.kwargs
        ).to(device)
        prepared = Path(tmp) / "letters"
        manifest = prepare_letters(cfg, prepared)
        stream = task_stream(prepared, 0, "train", run_cfg, model)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=p.lr, pct_start=0.1, total_steps=p.epochs * stream.num_batches()
        )

        def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(logits, y, label_smoothing=0.1, reduction="sum")

        world = World(device=device)
        loader = task_loader(stream, run_cfg, world, p.batch_size)  # workers persist
        for epoch in range(p.epochs):
            stream.set_epoch(epoch)
            stats = run_epoch(
                model, stream, opt, loss_fn, world, scheduler=sched,
                desc=f"pretrain epoch {epoch + 1}/{p.epochs}", progress=shown, loader=loader,
                precision=run_cfg.train.precision,
            )  # fmt: skip
            acc = evaluate(model, prepared, [0], run_cfg, device)[0][0]
            if progress:
                print(
                    f"pretrain epoch {epoch + 1}/{p.epochs}: loss {stats.train_loss:.4f}, "
                    f"{stats.samples_per_second:.0f} images/s, {stats.epoch_seconds:.1f} s, "
                    f"validation accuracy {acc:.1f}%",
                    file=console.stream,
                    flush=True,
                )
    report = PretrainReport(
        path=str(output),
        num_classes=len(LATIN),
        train_images=int(manifest["totals"]["train"]),
        val_accuracy=acc,
        seconds=time.perf_counter() - start,
    )
    save_backbone(model.cpu(), output, cfg.backbone.name, dict(cfg.backbone.kwargs))
    output.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
