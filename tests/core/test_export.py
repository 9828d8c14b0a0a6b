"""sdlora.core.export: the merged model written as a timm checkpoint loads back as a plain timm
ViT."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sdlora.core.export import CONFIG, WEIGHTS, ExportError, export_timm
from sdlora.core.model import SDLoRAViT

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _merged(backbone: nn.Module) -> nn.Module:
    """Two tasks of SD-LoRA with non-zero adapters, merged: a timm ViT with a 5-class head."""
    torch.manual_seed(3)  # the head's new rows: nn.Linear's random init
    model = SDLoRAViT(backbone, "vit_tiny_patch16_224")
    for classes in (2, 3):
        model.begin_task(classes, 2)
        with torch.no_grad():
            for m in model.matrices():
                m.B_cur.normal_()  # stands in for training: B starts at zero
        model.end_task()
    return model.merge()


def test_merged_model_round_trips_through_timm(
    tiny_backbone: Callable[..., nn.Module], images: torch.Tensor, tmp_path: Path
) -> None:
    merged = _merged(tiny_backbone())
    names = ["alpha", "beta", "gamma", "delta", "omega"]
    data = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "crop_pct": 0.875}
    paths = export_timm(merged, tmp_path / "timm", data_config=data, label_names=names)
    assert paths == [tmp_path / "timm" / WEIGHTS, tmp_path / "timm" / CONFIG]
    cfg = json.loads(paths[1].read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["num_classes"] == 5
    assert {k: cfg["model_args"][k] for k in ("patch_size", "embed_dim", "depth", "num_heads")} == {
        k: TINY[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")
    }
    assert cfg["label_names"] == names and cfg["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0]
    with torch.no_grad():
        want = merged(images)
    # the two documented ways: the name and kwargs with the weights file, or timm's folder
    by_name = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(paths[0]), num_classes=cfg["num_classes"]),
        **cfg["model_args"],
    )
    by_params = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(paths[0]), num_classes=5),
        **TINY,
    )
    by_folder = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    for model in (by_name, by_params, by_folder):
        assert type(model) is VisionTransformer and model.num_classes == 5
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), want, rtol=0, atol=0)
    assert by_folder.pretrained_cfg["label_names"] == names
    resolved = timm.data.resolve_data_config(model=by_folder)
    assert tuple(resolved["mean"]) == (0.0, 0.0, 0.0) and resolved["crop_pct"] == 0.875
    # the adapters were folded in: the file holds other attention weights than the backbone's
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.equal(by_folder.state_dict()[qkv], tiny_backbone().state_dict()[qkv])


def test_export_refuses_what_timm_cannot_load_back(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match=r"not a model built by timm\.create_model"):
        export_timm(nn.Linear(2, 2), tmp_path / "a")
    with pytest.raises(ExportError, match="no classifier head"):
        export_timm(tiny_backbone(), tmp_path / "b")  # the backbone alone: num_classes = 0
    with pytest.raises(ExportError, match="2 label names for a head of 5 outputs"):
        export_timm(_merged(tiny_backbone()), tmp_path / "c", label_names=["a", "b"])
    assert not any(tmp_path.iterdir())  # nothing written
