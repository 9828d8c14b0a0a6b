"""Shared fixtures: a tiny random-init timm ViT (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _tiny_backbone(seed: int = 1) -> nn.Module:
    """A 2-block, 32-wide ViT on 16x16 inputs, frozen, identical for a given seed."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    return model.requires_grad_(False).eval()


@pytest.fixture
def tiny_backbone() -> Callable[..., nn.Module]:
    """Factory for the tiny backbone (call it for a fresh, identical copy)."""
    return _tiny_backbone


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of random 16x16 RGB inputs."""
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
