"""End to end on the embedded default: pre-train a tiny backbone, run a sequence, CLI outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdlora.__main__ import main
from sdlora.checkpoint import load_adapter, read_header
from sdlora.config import parse_config
from sdlora.metrics import read_matrix_csv
from sdlora.pretrain import pretrain_backbone
from sdlora.train import build_model, evaluate, images_to_tensor, resolve_device, run_sequence

TINY = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "global_pool": "avg",
}


def _raw(weights: str | None, **model: object) -> dict:
    return {
        "seed": 0,
        "progress": False,
        "data": {"dataset": "digits", "init_cls": 4, "increment": 3, "image_size": 16},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": weights, "kwargs": TINY},
        "pretrain": {"per_class": 6, "epochs": 1, "batch_size": 64},
        "model": {"rank": 4, **model},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny backbone pre-trained by the real pre-training code (seconds)."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    report = pretrain_backbone(parse_config(_raw(None)), path, progress=False)
    assert report.num_classes == 52 and report.train_images == 52 * 6
    assert json.loads(path.with_suffix(".json").read_text())["val_accuracy"] >= 0
    return str(path)


def test_pretraining_is_deterministic_per_seed(weights: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = tmp_path / "again.safetensors"
    pretrain_backbone(parse_config(_raw(None)), again, progress=False)
    a, b = load_file(weights), load_file(str(again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["sdlora", "seq_lora", "frozen"])
def test_run_sequence_on_the_default(weights: str, method: str) -> None:
    cfg = parse_config(_raw(weights, method=method))
    result = run_sequence(cfg, ncm=True)
    m = result.matrix
    assert m.shape == (3, 3)  # 10 digits: 4 + 3 + 3 classes
    assert np.isfinite(m[np.tril_indices(3)]).all() and np.isnan(m[np.triu_indices(3, 1)]).all()
    assert len(result.counts) == 3 and sum(result.counts) == 360  # 20 % of 1,797 digits
    assert result.ncm_matrix is not None and np.isfinite(np.diag(result.ncm_matrix)).all()
    if method != "frozen":  # a barely pre-trained tiny ViT: only adaptation learns quickly
        assert m[0, 0] > 45  # 4 classes: chance is 25 %
    assert set(result.summary) >= {"final_accuracy", "average_anytime_accuracy", "forgetting"}
    grows = [s["stored_params"] for s in result.storage]
    assert grows == sorted(grows) and len(result.tasks) == 3
    assert all(t.samples_per_second > 0 and len(t.epoch_seconds) == 4 for t in result.tasks)


def test_sequence_is_reproducible_and_merges(weights: str) -> None:
    cfg = parse_config(_raw(weights))
    seen: dict[int, object] = {}

    def keep(task: int, model: object, result: object) -> None:
        seen["model"] = model

    a = run_sequence(cfg, on_task_end=keep)
    b = run_sequence(cfg)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    model = seen["model"]
    merged = model.merge()
    from sdlora.data.benchmarks import load_task_splits
    from sdlora.train import to_tensors

    tasks = to_tensors(load_task_splits(cfg.data, cfg.seed), 16, (0.5,) * 3, (0.5,) * 3)
    device = resolve_device("cpu")
    assert evaluate(merged, tasks, device, 256) == pytest.approx(list(a.matrix[-1]), abs=0.5)


def test_cli_run_writes_matrix_metrics_and_adapters(
    weights: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_raw(weights)))
    out = tmp_path / "run"
    assert main(["run", "--params", str(params), "--out", str(out)]) == 0
    matrix, counts = read_matrix_csv(out / "accuracy_matrix.csv")
    saved = json.loads((out / "metrics.json").read_text())
    assert matrix.shape == (3, 3) and counts is not None and counts.sum() == 360
    assert saved["summary"]["final_accuracy"] == pytest.approx(
        float(np.average(matrix[-1], weights=counts))
    )
    assert sorted(p.name for p in out.glob("adapter_task_*")) == [
        "adapter_task_00.safetensors",
        "adapter_task_01.safetensors",
        "adapter_task_02.safetensors",
    ]
    assert read_header(out / "adapter_task_02.safetensors")["task_classes"] == [4, 3, 3]
    assert (out / "accuracy_matrix.png").stat().st_size > 1000
    assert (out / "accuracy_curve.png").stat().st_size > 1000
    model = build_model(parse_config(_raw(weights)), torch.device("cpu"))
    load_adapter(model, out / "adapter_task_02.safetensors")
    assert model.head.num_classes == 10
    assert "final_accuracy" in capsys.readouterr().out


def test_cli_reports_bad_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_raw(None, rank=0)))
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "model.rank = 0" in capsys.readouterr().err
    params.write_text(yaml.safe_dump(_raw(str(tmp_path / "missing.safetensors"))))
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_images_to_tensor_resizes_and_normalises() -> None:
    imgs = np.full((2, 8, 8), 255, dtype=np.uint8)
    x = images_to_tensor(imgs, 16, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))


def test_cuda_request_without_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
