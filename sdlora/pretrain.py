"""Pre-train the embedded default's backbone offline, so SD-LoRA has a pre-trained ViT to adapt.

The method assumes a backbone pre-trained on classes other than the downstream ones, and nothing
can be downloaded, so a small timm ViT learns to read Latin letters rendered from fonts matplotlib
ships (``sdlora.data.glyphs``). The downstream benchmarks (handwritten digits; Greek and Cyrillic
letters in held-out fonts) share no class with it. The file it writes loads through timm like any
pretrained weights file (``backbone.weights: PATH``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdlora.backbone import data_config, save_backbone
from sdlora.config import Config
from sdlora.data.glyphs import LATIN, load_pretrain_letters
from sdlora.train import images_to_tensor, predict, resolve_device


@dataclass
class PretrainReport:
    """What pre-training reached and cost."""

    path: str
    num_classes: int
    train_images: int
    val_accuracy: float
    seconds: float


def pretrain_backbone(cfg: Config, output: str | Path, progress: bool = True) -> PretrainReport:
    """Train ``cfg.backbone`` (name + kwargs) on rendered Latin letters; save it headless."""
    p, size = cfg.pretrain, cfg.data.image_size
    output = Path(output)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(p.seed)
    model = timm.create_model(
        cfg.backbone.name, pretrained=False, num_classes=len(LATIN), **cfg.backbone.kwargs
    ).to(device)
    dc = data_config(model)
    train = load_pretrain_letters(p.per_class, size, seed=p.seed)
    val = load_pretrain_letters(max(p.per_class // 10, 5), size, seed=p.seed + 10_000)
    x = images_to_tensor(train.images, size, dc["mean"], dc["std"])
    y = torch.from_numpy(train.labels).long()
    vx = images_to_tensor(val.images, size, dc["mean"], dc["std"])
    vy = torch.from_numpy(val.labels).long()
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = -(-x.shape[0] // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=p.lr, pct_start=0.1, total_steps=p.epochs * steps_per_epoch
    )
    gen = torch.Generator().manual_seed(p.seed)
    bar = tqdm(range(p.epochs), desc="pretrain", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], p.batch_size):
            idx = perm[i : i + p.batch_size]
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = 100.0 * (predict(model, vx, device, 512) == vy).float().mean().item()
        bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{acc:.1f}")
    report = PretrainReport(
        path=str(output),
        num_classes=len(LATIN),
        train_images=x.shape[0],
        val_accuracy=acc,
        seconds=time.perf_counter() - start,
    )
    save_backbone(model.cpu(), output, cfg.backbone.name, dict(cfg.backbone.kwargs))
    output.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
