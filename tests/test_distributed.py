"""Ray Train task training: DDP equals one process, and a rerun resumes from its checkpoint.

The Ray tests share one in-process Ray (2 CPUs, workers take 0.5 CPU each) and a tiny random ViT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sdlora.config import parse_config
from sdlora.distributed import (
    ADAPTER,
    _build,
    epoch_permutation,
    local_batch_size,
    stream_batches,
    tensor_batches,
    train_task_distributed,
)
from sdlora.train import TaskTensors, make_optimizer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train V2's controller takes reports (and notices start and end) once per health-check
# poll, 2 s by default: ~2 s per epoch and ~9 s per run on these tiny runs. Set before ray.init.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _cfg(epochs: int = 1, batch: int = 8, momentum: float = 0.0):
    return parse_config(
        {
            "seed": 3,
            "progress": False,
            "backbone": {"name": "vit_tiny_patch16_224", "weights": None, "kwargs": TINY},
            "model": {"rank": 2},
            "train": {"optimizer": "sgd", "lr": 0.5, "momentum": momentum, "epochs": epochs,
                      "batch_size": batch},
        }
    )  # fmt: skip


def _data(n: int = 8, task: int = 0) -> TaskTensors:
    g = torch.Generator().manual_seed(7)
    return TaskTensors(
        task=task,
        label_offset=0,
        num_classes=3,
        train_x=torch.randn(n, 3, 16, 16, generator=g),
        train_y=torch.randint(0, 3, (n,), generator=g),
        test_x=torch.zeros(0, 3, 16, 16),
        test_y=torch.zeros(0, dtype=torch.long),
    )


def _reference(cfg, data: TaskTensors):
    """The same task trained in this process (one rank), as the worker loop does it."""
    model = _build(cfg, 0, None)
    torch.manual_seed(cfg.seed * 1000 + 0)
    model.begin_task(data.num_classes, cfg.model.rank)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    for epoch in range(cfg.train.epochs):
        perm = epoch_permutation(data.train_x.shape[0], cfg.seed, 0, epoch)
        for x, y, count in tensor_batches(data, cfg.train.batch_size, 0, 1, perm):
            loss = F.cross_entropy(model(x)[:, 0:3], y, reduction="sum") / count
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def _assert_same(file: Path, state: dict[str, torch.Tensor]) -> None:
    saved = load_file(str(file))
    assert set(saved) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(saved[key], value.detach().cpu(), atol=1e-5, rtol=1e-5)


def test_local_batch_size_must_divide() -> None:
    assert local_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="multiple of 3"):
        local_batch_size(8, 3)


def test_tensor_batches_cover_the_global_batches() -> None:
    data, perm = _data(10), torch.arange(10)
    parts = [list(tensor_batches(data, 4, r, 3, perm)) for r in range(3)]
    # global batches [0:4], [4:8], [8:10]; rank r takes its shard_bounds slice of each
    # every rank takes every step; rank 0 gets none of the 2-sample last batch
    assert [[x.shape[0] for x, _, _ in p] for p in parts] == [[1, 1, 0], [1, 1, 1], [2, 2, 1]]
    assert torch.cat([x for p in parts for x, _, _ in p]).shape[0] == 10
    assert [c for _, _, c in parts[0]] == [4, 4, 2]


def test_stream_batches_global_count() -> None:
    short = [(torch.zeros(4), [0] * 4)]  # a rank with 4 rows, beside one with 5
    out = [(x.shape[0], c) for x, _, c in stream_batches(short, [5, 4], 4)]
    assert out == [(4, 8), (0, 1)]  # it pads the step it lacks with an empty batch


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_equal_one_process(ray_session, tmp_path: Path) -> None:
    cfg, data = _cfg(), _data(8)
    result = train_task_distributed(
        cfg, 0, None, data, tmp_path / "out", num_workers=2, cpus_per_worker=0.5,
        storage_path=tmp_path / "ray",
    )  # fmt: skip
    assert result.metrics["epoch"] == 0 and result.metrics["world_size"] == 2
    ref = _reference(cfg, data)
    from sdlora.checkpoint import adapter_state

    # the reported checkpoint holds the trained current pair, alpha and head rows
    _assert_same(result.checkpoint / ADAPTER, adapter_state(ref))
    ref.end_task()
    _assert_same(result.adapter, adapter_state(ref))


@pytest.mark.slow
def test_rerun_resumes_at_next_epoch(ray_session, tmp_path: Path) -> None:
    data = _data(13)  # batch 4: the last global batch is 1 sample, rank 0's part is empty
    kw = dict(num_workers=2, cpus_per_worker=0.5, storage_path=tmp_path / "ray", name="t0")
    first = train_task_distributed(_cfg(1, 4, 0.9), 0, None, data, tmp_path / "a", **kw)
    assert first.metrics["epoch"] == 0
    cfg = _cfg(2, 4, 0.9)  # momentum: the optimizer state must be restored too
    second = train_task_distributed(cfg, 0, None, data, tmp_path / "b", **kw)
    assert second.metrics["start_epoch"] == 1 and second.metrics["epoch"] == 1
    from sdlora.checkpoint import adapter_state

    ref = _reference(cfg, data)  # an uninterrupted 2-epoch run
    _assert_same(second.checkpoint / ADAPTER, adapter_state(ref))


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    from sdlora.distributed import STATE, _fingerprint, _read_state

    mine = _fingerprint(_cfg(epochs=1), 0)
    (tmp_path / STATE).write_text(json.dumps({"epoch": 0, **mine}))
    assert "epochs" not in mine["cfg"]["train"]
    assert _read_state(tmp_path, _fingerprint(_cfg(epochs=3), 0))[0] == 0  # more epochs: resumes
    with pytest.raises(ValueError, match="another configuration"):
        _read_state(tmp_path, _fingerprint(_cfg(epochs=1), 1))
    with pytest.raises(ValueError, match="another configuration"):
        _read_state(tmp_path, _fingerprint(_cfg(epochs=1, momentum=0.9), 0))


def test_ray_address_from_params_then_env_else_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from sdlora.distributed import _ensure_ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    _ensure_ray("auto")  # params win
    _ensure_ray(None)  # then the environment
    monkeypatch.delenv("RAY_ADDRESS")
    _ensure_ray(None)  # else Ray starts in this process
    assert [c.get("address") for c in calls] == ["auto", "10.0.0.9:6379", None]
