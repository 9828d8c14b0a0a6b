"""Stage validate: the whole params file checked; its output the same bytes for any valid file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.cli import stage_main
from sdlora.pipeline.layout import VALIDATED


def test_valid_params_give_the_same_output_whatever_their_values(
    write_params: Callable[..., Path],
) -> None:
    write_params("seed: 1\ntrain: {lr: 0.01}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    first = Path(VALIDATED).read_bytes()
    write_params("seed: 7\ntrain: {lr: 0.5, epochs: 3}\n", tasks=3)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    assert Path(VALIDATED).read_bytes() == first  # nothing downstream re-runs for a valid edit
    assert b'"valid": true' in first


def test_a_misspelt_key_exits_2_naming_it_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("progres: true\n", tasks=None)
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("validate: error: params.yaml: invalid configuration\n")
    assert "progres: unknown key (check the spelling" in err
    assert not Path("out").exists()


def test_joint_training_is_refused_by_the_per_task_pipeline(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("model: {method: joint}\n", tasks=None)
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 2
    err = capsys.readouterr().err
    assert "model.method = 'joint' trains every task at once" in err
    assert "python -m sdlora run" in err and not Path("out").exists()


def test_the_weights_record_hashes_only_a_file_outside_the_backbone_folder(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    """DVC tracks artifacts/backbone (the pretrain stage's output), not a file elsewhere: the
    record holds that file's SHA-256, so replacing it changes the record pretrain depends on."""
    import hashlib
    import json

    from sdlora.config import load_config
    from sdlora.pipeline.layout import WEIGHTS_RECORD
    from sdlora.pipeline.validate import weights_record

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"w" * 64)
    write_params(f"backbone: {{weights: {outside}}}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    record = json.loads(Path(WEIGHTS_RECORD).read_text())
    assert record == {"weights": str(outside), "sha256": hashlib.sha256(b"w" * 64).hexdigest()}
    write_params("backbone: {weights: artifacts/backbone/tiny.safetensors}\n", tasks=2)
    assert weights_record(load_config("params.yaml"))["sha256"] is None  # DVC tracks it
    write_params("backbone: {weights: timm}\n", tasks=2)
    assert weights_record(load_config("params.yaml")) == {"weights": "timm", "sha256": None}


def test_a_missing_dataset_folder_is_named_before_the_task_count(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    """CIFAR-100 in 10 tasks with a 5-task list and no folder: the folder is what is wrong."""
    data = "data: {dataset: cifar100, root: /nonexistent/cifar, init_cls: 10, increment: 10}\n"
    write_params(data, tasks=5)
    assert stage_main("validate", ["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("validate: error: data.root = '/nonexistent/cifar': no such folder")
    assert "task" not in err
