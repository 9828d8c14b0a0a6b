"""Stage pretrain: a configured backbone is only recorded; the embedded one is trained."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sdlora.cli import stage_main
from sdlora.config import ConfigError, load_config
from sdlora.core.train import build_model
from sdlora.pipeline.layout import BACKBONE_DIR, BACKBONE_RECORD
from sdlora.pipeline.pretrain import pretrain_stage


def test_pretrain_records_a_configured_backbone_without_training(
    tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    for weights, source in (("null", "random initialisation"), ("timm", "timm pretrained")):
        record = pretrain_stage(load_config(write_params(f"backbone: {{weights: {weights}}}\n", 1)))
        assert record["source"].startswith(source) and record["sha256"] is None
        assert sorted(p.name for p in Path(BACKBONE_DIR).iterdir()) == [BACKBONE_RECORD]
    own = tmp_path / "mine.pth"
    own.write_bytes(b"weights")
    record = pretrain_stage(load_config(write_params(f"backbone: {{weights: {own}}}\n", 1)))
    assert record["sha256"] == hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(ConfigError, match=r"backbone.weights = '/nope.pth': no such file"):
        pretrain_stage(load_config(write_params("backbone: {weights: /nope.pth}\n", 1)))
    assert json.loads((Path(BACKBONE_DIR) / BACKBONE_RECORD).read_text())["sha256"]  # kept


def test_pretrain_trains_the_embedded_backbone(
    write_params: Callable[..., Path],
) -> None:
    cfg = load_config(
        write_params(
            "data: {image_size: 16}\n"
            f"backbone:\n  weights: {BACKBONE_DIR}/tiny.safetensors\n"
            "  kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}\n"
            "pretrain: {per_class: 2, epochs: 1, batch_size: 64}\n",
            1,
        )
    )
    record = pretrain_stage(cfg)
    weights = Path(BACKBONE_DIR) / "tiny.safetensors"
    assert record["source"] == "pre-trained by this stage" and weights.is_file()
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    report = json.loads(weights.with_suffix(".json").read_text())
    assert report["path"] == f"{BACKBONE_DIR}/tiny.safetensors" and report["num_classes"] == 52
    build_model(cfg, torch.device("cpu"))  # loads what the stage wrote


def test_pretrain_writes_where_it_is_told(write_params: Callable[..., Path]) -> None:
    write_params("backbone: {weights: null}\n", 1)
    assert stage_main("pretrain", ["--params", "params.yaml", "--out", "elsewhere/backbone"]) == 0
    assert json.loads(Path("elsewhere/backbone", BACKBONE_RECORD).read_text())["weights"] is None
    assert not Path(BACKBONE_DIR).exists()
