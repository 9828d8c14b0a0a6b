"""Shared fixtures: a tiny random-init timm ViT (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

# Ray 2.60 fixes a process's token-auth mode at its first ray.init (and an in-process start turns
# token auth on), so tests that start Ray in this process and tests that start their own
# clusters must agree: without auth, inside CI's loopback-only namespace. Set before any init.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

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


@pytest.fixture(scope="module")
def ray_session():
    """Ray in this process for one test module (2 CPUs: workers of 0.5 CPU fit twice)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
