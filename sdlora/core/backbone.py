"""Build the frozen backbone: any timm ViT by name, with timm's weights, a local file or none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sdlora.config import BackboneConfig
from sdlora.errors import BadInput
from sdlora.files import atomic_path


class BackboneError(BadInput, ValueError):
    """A backbone that cannot be built, loaded or adapted."""


def check_finite(model: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or infinity (a damaged file), naming the first such tensor."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BackboneError(
                f"backbone.weights {path}: tensor {name} holds NaN or infinite values: the file "
                "is damaged; re-create it (`dvc repro -f pretrain`, `dvc checkout`) or replace it"
            )


def check_fused_qkv(model: nn.Module, name: str) -> None:
    """Fail unless every block has a fused ``attn.qkv`` Linear (d -> 3d), as SD-LoRA adapts."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        raise BackboneError(
            f"backbone {name!r} has no `blocks`; sdlora supports timm VisionTransformer-style "
            "models whose blocks have a fused `attn.qkv` Linear (vit_*, deit_*, eva-free ViTs)"
        )
    for i, blk in enumerate(blocks):
        qkv = getattr(getattr(blk, "attn", None), "qkv", None)
        if not (isinstance(qkv, nn.Linear) and qkv.out_features == 3 * qkv.in_features):
            raise BackboneError(
                f"backbone {name!r}: block {i} has no fused `attn.qkv` Linear (d -> 3d) "
                f"(found {type(qkv).__name__}); sdlora supports timm VisionTransformer-style "
                "models such as vit_base_patch16_224 or vit_tiny_patch16_224"
            )


def read_weights_metadata(path: Path) -> dict[str, Any]:
    """The ``sdlora`` JSON metadata of a safetensors weights file ({} if absent)."""
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("sdlora", "{}"))
    except (SafetensorError, OSError, ValueError) as err:  # truncated, overwritten, not JSON
        reason = " ".join(str(err).split())[:400]
        raise BackboneError(
            f"backbone.weights: cannot read {path.resolve()} ({reason}): it was truncated or "
            "overwritten; re-create it (`dvc repro -f pretrain`) or replace it"
        ) from None


def create_backbone(cfg: BackboneConfig) -> nn.Module:
    """Create the configured timm ViT without its classifier (num_classes=0), frozen, in eval.

    ``weights``: ``"timm"`` loads the name's pretrained weights through timm (may download);
    a path loads a local .pth/.safetensors file through timm's ``pretrained_cfg_overlay``;
    ``None`` leaves the random initialisation (tests).
    """
    kwargs = dict(cfg.kwargs)
    if cfg.weights is None:
        model = create_architecture(cfg.name, pretrained=False, **kwargs)
    elif cfg.weights == "timm":
        model = create_architecture(cfg.name, pretrained=True, **kwargs)
    else:
        path = Path(cfg.weights)
        if not path.is_file():
            raise BackboneError(
                f"backbone.weights: file not found: {path.resolve()} (for the embedded default run "
                "`dvc repro pretrain` first, or set a timm name with weights: timm)"
            )
        meta = read_weights_metadata(path)
        saved = meta.get("kwargs")
        if saved is not None and (meta.get("name") != cfg.name or saved != kwargs):
            raise BackboneError(
                f"backbone.weights {path} was saved for {meta.get('name')!r} with kwargs {saved}, "
                f"but params ask for {cfg.name!r} with kwargs {kwargs}; make them match"
            )
        overlay = {"file": str(path), "num_classes": 0, "custom_load": False}
        try:
            model = create_architecture(
                cfg.name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except (RuntimeError, OSError, ValueError) as err:
            reason = " ".join(str(err).split())[:400]  # a state_dict error lists every key
            where = f"backbone.weights: cannot load {path.resolve()}"
            raise BackboneError(f"{where}: {reason}") from err
        check_finite(model, path)
    check_fused_qkv(model, cfg.name)
    model.requires_grad_(False)
    return model.eval()


def create_architecture(
    name: str, pretrained: bool = False, num_classes: int = 0, **kwargs: Any
) -> nn.Module:
    """``timm.create_model``, with a name timm lacks or kwargs its model refuses (a misspelt
    key, ``num_heads`` that do not divide ``embed_dim``) as one BackboneError naming the key."""
    if name not in timm.list_models(pretrained=False) and not timm.is_model(name):
        raise BackboneError(f"backbone.name: unknown timm model {name!r}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except (TypeError, AssertionError) as err:  # raised by the model's constructor
        reason = " ".join(str(err).split())[:400] or type(err).__name__
        raise BackboneError(
            f"backbone.kwargs = {kwargs}: timm cannot build {name!r} with them ({reason}); "
            "fix or drop the key"
        ) from None


def check_architecture(cfg: BackboneConfig) -> nn.Module:
    """The configured ViT built on the meta device (no memory, no weights read): what params
    alone decide about the backbone, checked in a fraction of a second before any heavy work."""
    with torch.device("meta"):
        model = create_architecture(cfg.name, **cfg.kwargs)
    check_fused_qkv(model, cfg.name)
    return model


def save_backbone(model: nn.Module, path: Path, name: str, kwargs: dict[str, Any]) -> None:
    """Save a headless backbone as safetensors that :func:`create_backbone` loads by path."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.startswith("head.")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sdlora": json.dumps({"name": name, "kwargs": kwargs})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


@torch.no_grad()
def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config (mean, std, ...) of the backbone."""
    return timm.data.resolve_data_config({}, model=model)
