"""Shared fixtures: a tiny random-init timm ViT (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import HealthCheck, settings
from torch import nn

# Ray 2.60 fixes a process's token-auth mode at its first ray.init (and an in-process start turns
# token auth on), so tests that start Ray in this process and tests that start their own
# clusters must agree: without auth, inside CI's loopback-only namespace. Set before any init.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}

# The files that take longest (pytest --durations=0 -m "not smoke", 2026-12-07), longest first.
# `make test` hands whole files to its two processes in collection order (`--dist loadfile
# --no-loadscope-reorder`), so these go first and the short files fill in at the end: the
# processes finish together rather than one running a long end-to-end test alone. xdist's own
# order (most tests first) put the one-test appending story last.
LONGEST_FIRST = (
    "tests/pipeline/test_dvc_pipeline.py",  # 411 s
    "tests/pipeline/test_dvc_append.py",  # 153 s
    "tests/pipeline/test_kills.py",  # 151 s
    "tests/ops/test_ray_train.py",  # 125 s
    "tests/pipeline/test_tune.py",  # 114 s
    "tests/test_docs.py",  # 94 s
    "tests/reproduce/test_smoke.py",  # 82 s: two presets' smokes (make smoke runs all 14)
    "tests/ops/test_ray_session.py",  # 75 s
    "tests/ops/test_ray_tune.py",  # 73 s
    "tests/core/test_train.py",  # 70 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`LONGEST_FIRST`'s files first, in that order; within a file, and for every
    other file, the collection's order holds (the sort is stable). A name that is no file
    stops the run: a renamed file would silently lose its place."""
    root = Path(__file__).resolve().parents[1]
    gone = [name for name in LONGEST_FIRST if not (root / name).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST: no such file {gone}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
    from sdlora.ops.ray_session import IN_PROCESS_ENV

    with pytest.MonkeyPatch.context() as env:  # as ensure_ray sets them; restored after the module
        for key, value in IN_PROCESS_ENV.items():
            env.setenv(key, os.environ.get(key, value))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def _tiny_sweep_params(weights: str | None) -> dict:
    """Params of a tiny sequence for sweeps: digits in 3 tasks (4 + 3 + 3 classes) on a 2-block
    ViT, one epoch a task."""
    return {
        "progress": False,
        "data": {"dataset": "digits", "init_cls": 4, "increment": 3, "image_size": 16,
                 "augment": "none"},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": weights,
                     "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                "num_heads": 2}},
        "pretrain": {"per_class": 6, "epochs": 1, "batch_size": 64},
        "model": {"rank": 4},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
    }  # fmt: skip


@pytest.fixture
def tiny_sweep_params() -> Callable[[str | None], dict]:
    """``tiny_sweep_params(weights)``: the params mapping of a tiny sequence for sweeps."""
    return _tiny_sweep_params


@pytest.fixture
def sweep_project(tmp_path):
    """``(params.yaml, prepared folder)`` of :func:`_tiny_sweep_params` in 2 tasks (5 + 5
    classes), with its backbone pre-trained for one epoch (a few seconds), in ``tmp_path``."""
    import yaml

    from sdlora.config import parse_config
    from sdlora.core.pretrain import pretrain_backbone
    from sdlora.data.prepare import prepare

    weights = tmp_path / "tiny.safetensors"
    pretrain_backbone(parse_config(_tiny_sweep_params(None)), weights, progress=False)
    raw = _tiny_sweep_params(str(weights))
    raw["data"].update(init_cls=5, increment=5)  # 2 tasks: what these tests need, sooner
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    prepared = tmp_path / "prepared"
    prepare(parse_config(raw).data, seed=0, out=prepared)
    return params, prepared


# The property tests' settings: the same cases on every run (CI stays reproducible);
# SDLORA_HYPOTHESIS_EXAMPLES=20000 hunts further, with fresh random cases.
_HUNT = os.environ.get("SDLORA_HYPOTHESIS_EXAMPLES")
settings.register_profile(
    "sdlora",
    max_examples=int(_HUNT or 200),
    derandomize=_HUNT is None,
    deadline=None,
    database=None,  # nothing written under .hypothesis/ examples
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("sdlora")
