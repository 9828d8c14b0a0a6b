"""Adapter save/load: safetensors + JSON header; identical logits; clear mismatch errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from sdlora.core.checkpoint import (
    AdapterDamagedError,
    AdapterMismatchError,
    load_adapter,
    read_header,
    save_adapter,
)
from sdlora.core.model import SDLoRAViT


def _trained(backbone: nn.Module, in_progress: bool, **kw: object) -> SDLoRAViT:
    model = SDLoRAViT(backbone, "tiny", **kw)
    g = torch.Generator().manual_seed(0)
    for t, rank in enumerate([3, 2]):
        model.begin_task(2 + t, rank)
        with torch.no_grad():
            for m in model.matrices():
                m.B_cur.copy_(torch.randn(m.B_cur.shape, generator=g))
            model.head.weight.add_(torch.randn(model.head.weight.shape, generator=g))
            model.magnitudes.alpha.add_(0.1 * (t + 1))
        if not in_progress or t == 0:
            model.end_task()
    return model


@pytest.mark.parametrize("in_progress", [False, True])
@pytest.mark.parametrize("scope", ["task", "matrix"])
def test_save_load_gives_identical_logits(
    tiny_backbone: Callable[..., nn.Module],
    images: torch.Tensor,
    tmp_path: Path,
    in_progress: bool,
    scope: str,
) -> None:
    model = _trained(tiny_backbone(), in_progress, magnitude_scope=scope)
    path = save_adapter(model, tmp_path / "a" / "adapter.safetensors", extra={"task": 1})
    fresh = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope=scope)
    head = load_adapter(fresh, path)
    assert torch.equal(fresh(images), model(images))
    assert head["task_classes"] == [2, 3] and head["task_ranks"] == [3, 2]
    assert head["extra"] == {"task": 1} and fresh.task_classes == [2, 3]
    # The loaded model continues like the original: same trainable set.
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    assert not list(tmp_path.glob("a/.*tmp*"))  # nothing half-written left behind


def test_loaded_tensors_live_in_aligned_memory(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    """Not views into the file at its offsets: MKL rounds by alignment, and end_task on a
    restored pair must give the bytes it gave on the trained one (pipeline/test_sequence.py)."""
    path = save_adapter(_trained(tiny_backbone(), True), tmp_path / "adapter.safetensors")
    fresh = SDLoRAViT(tiny_backbone(), "tiny")
    load_adapter(fresh, path)
    state = {k: v for k, v in fresh.state_dict().items() if ".lora." in k or "head." in k}
    offsets = {k: v.data_ptr() % 64 for k, v in state.items() if v.numel()}
    assert offsets and not {k: o for k, o in offsets.items() if o}


def test_file_holds_no_backbone_weights(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    path = save_adapter(_trained(tiny_backbone(), False), tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith("backbone.") and ".lora." not in k]
    header = read_header(path)
    assert header["format_version"] == 2 and header["backbone"] == "tiny"
    assert header["magnitude_scope"] == "task" and header["compat"] == "paper"
    assert header["num_classes"] == 5


def test_load_onto_other_config_names_both(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    path = save_adapter(_trained(tiny_backbone(), False), tmp_path / "adapter.safetensors")
    other = SDLoRAViT(tiny_backbone(), "vit_other", magnitude_scope="matrix")
    with pytest.raises(AdapterMismatchError) as err:
        load_adapter(other, path)
    msg = str(err.value)
    assert "backbone: file has 'tiny', model has 'vit_other'" in msg
    assert "magnitude_scope: file has 'task', model has 'matrix'" in msg


def test_load_onto_other_backbone_shape(
    tmp_path: Path, tiny_backbone: Callable[..., nn.Module]
) -> None:
    import timm

    path = save_adapter(_trained(tiny_backbone(), False), tmp_path / "adapter.safetensors")
    wider = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        img_size=16,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=2,
    )
    with pytest.raises(AdapterMismatchError, match=r"backbone_shape: file has .*'embed_dim': 32"):
        load_adapter(SDLoRAViT(wider, "tiny"), path)


def test_missing_and_foreign_files_are_clear_errors(
    tmp_path: Path, tiny_backbone: Callable[..., nn.Module]
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    with pytest.raises(FileNotFoundError, match="adapter file not found"):
        load_adapter(model, tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors adapter"):
        load_adapter(model, junk)


def _overwrite_data(path: Path, at: int, data: bytes) -> None:
    """Overwrite bytes inside the tensor data of a safetensors file, leaving its header whole."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, then the JSON header
    raw[start + at : start + at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_damage_inside_the_tensors_is_refused(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    """The header still parses and every tensor has its shape: only the checksum tells."""
    path = save_adapter(_trained(tiny_backbone(), False), tmp_path / "adapter.safetensors")
    read_header(path)
    _overwrite_data(path, 40, b"\x7f" * 400)
    read_header(path)  # intact: the damage is in the data
    with pytest.raises(AdapterDamagedError, match="damaged adapter") as err:
        load_adapter(SDLoRAViT(tiny_backbone(), "tiny"), path)
    assert "\n" not in str(err.value)
