"""Backbone building: timm names, local weights files, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from sdlora.config import BackboneConfig
from sdlora.core.backbone import BackboneError, check_fused_qkv, create_backbone, save_backbone
from sdlora.core.model import SDLoRAViT

KW = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=7, **KW)
    path = tmp_path / "w.safetensors"
    save_backbone(src, path, "vit_tiny_patch16_224", KW)
    model = create_backbone(
        BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), kwargs=KW)
    )
    x = torch.randn(2, 3, 16, 16)
    assert model.num_classes == 0 and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.forward_features(x), src.eval().forward_features(x))


def test_weights_saved_for_another_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_backbone(
        timm.create_model("vit_tiny_patch16_224", num_classes=0, **KW),
        path,
        "vit_tiny_patch16_224",
        KW,
    )
    with pytest.raises(BackboneError, match="was saved for 'vit_tiny_patch16_224' with kwargs"):
        create_backbone(
            BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), kwargs=KW | {"depth": 3})
        )


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "w.safetensors"
    with pytest.raises(BackboneError, match=f"file not found: {missing}"):
        create_backbone(BackboneConfig(weights=str(missing), kwargs=KW))


def test_unreadable_weights_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(BackboneError, match=f"cannot load {bad}"):
        create_backbone(BackboneConfig(weights=str(bad), kwargs=KW))


def test_backbone_without_fused_qkv_is_refused() -> None:
    with pytest.raises(BackboneError, match="'resnet10t' has no `blocks`"):
        create_backbone(BackboneConfig(name="resnet10t", weights=None))
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **KW)
    vit.blocks[1].attn.qkv = torch.nn.Linear(32, 64)  # not d -> 3d
    with pytest.raises(BackboneError, match=r"block 1 has no fused `attn\.qkv`"):
        check_fused_qkv(vit, "custom")


def test_unknown_timm_name() -> None:
    with pytest.raises(BackboneError, match="unknown timm model 'vit_nonexistent'"):
        create_backbone(BackboneConfig(name="vit_nonexistent", weights=None))


def test_published_backbone_name_is_accepted_without_download() -> None:
    """The name of the published backbone resolves in timm (weights: null builds it offline)."""
    model = create_backbone(
        BackboneConfig(
            name="vit_base_patch16_224.augreg2_in21k_ft_in1k", weights=None, kwargs={"depth": 1}
        )
    )
    assert model.num_features == 768
    SDLoRAViT(model, "vit_base").begin_task(10, 10)


def test_weights_holding_nan_are_refused(tmp_path: Path) -> None:
    """A file damaged into NaN loads without complaint in timm: the check names the tensor."""
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, **KW)
    with torch.no_grad():
        src.blocks[1].attn.qkv.weight[3, :5] = float("nan")
    path = tmp_path / "w.safetensors"
    save_backbone(src, path, "vit_tiny_patch16_224", KW)
    cfg = BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), kwargs=KW)
    with pytest.raises(BackboneError, match=r"blocks\.1\.attn\.qkv\.weight holds NaN"):
        create_backbone(cfg)


def test_a_truncated_safetensors_file_is_one_backbone_error(tmp_path: Path) -> None:
    """Its header is read first (the saved name and kwargs): a cut file fails there, by name."""
    path = tmp_path / "w.safetensors"
    save_backbone(timm.create_model("vit_tiny_patch16_224", num_classes=0, **KW), path,
                  "vit_tiny_patch16_224", KW)  # fmt: skip
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BackboneError, match=f"cannot read {path}.*truncated or overwritten"):
        create_backbone(BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), kwargs=KW))
