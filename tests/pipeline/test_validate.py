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
    write_params("seed: 1\ntrain: {lr: 0.01}\n", tasks=5)  # digits in 2s: 5 tasks
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    first = Path(VALIDATED).read_bytes()
    write_params("seed: 7\ntrain: {lr: 0.5, epochs: 3}\ndata: {init_cls: 4}\n", tasks=4)
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

    from sdlora.config import ConfigError, load_config
    from sdlora.pipeline.layout import WEIGHTS_RECORD
    from sdlora.pipeline.validate import weights_record

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"w" * 64)
    write_params(f"backbone: {{weights: {outside}}}\n", tasks=5)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    record = json.loads(Path(WEIGHTS_RECORD).read_text())
    assert record == {"weights": str(outside), "sha256": hashlib.sha256(b"w" * 64).hexdigest()}
    write_params("backbone: {weights: artifacts/backbone/tiny.safetensors}\n", tasks=2)
    assert weights_record(load_config("params.yaml"))["sha256"] is None  # DVC tracks it
    write_params("backbone: {weights: timm}\n", tasks=2)
    assert weights_record(load_config("params.yaml")) == {"weights": "timm", "sha256": None}
    outside.unlink()  # an outside file that is not there: nothing would ever write it
    write_params(f"backbone: {{weights: {outside}}}\n", tasks=5)
    with pytest.raises(ConfigError, match=r"backbone.weights = '.*outside.safetensors': no such"):
        weights_record(load_config("params.yaml"))


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


def test_a_named_task_with_a_class_the_data_lacks_is_refused_before_prepare(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    """data.tasks is checked against the dataset's class names (glyphs: without rendering)."""
    write_params("data: {dataset: glyphs, tasks: [[Γ, Δ], [Θ, Σ, Sigma]]}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "validate: error: data.tasks: class 'Sigma' (task 1) is not in dataset 'glyphs'; its "
        "classes: ['Γ', 'Δ', 'Θ', 'Λ', 'Ξ', 'Π', 'Σ', 'Φ', 'Ψ', 'Ω', 'α', 'β'] ...\n"
    )
    assert not Path("out").exists()
    write_params("data: {dataset: glyphs, tasks: [[Γ, Δ], [Θ, Σ]]}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 0
    path = Path("params.yaml")  # a task dropped from data.tasks, the section not rewritten
    path.write_text(path.read_text().replace("[[Γ, Δ], [Θ, Σ]]", "[[Γ, Δ]]"))
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 2
    err = capsys.readouterr().err
    assert "tasks: params.yaml lists 2 task(s) but data.tasks lists 1; run `python -m sdlora" in err


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("backbone: {kwargs: {embed_dimm: 32}}\n",
         "backbone.kwargs = {'embed_dimm': 32}: timm cannot build .*unexpected keyword"),
        ("backbone: {kwargs: {embed_dim: 30, num_heads: 4}}\n",
         "timm cannot build .*divisible by num_heads"),
        ("model: {blocks: [0, 99]}\n", r"model.blocks = \[0, 99\]: use distinct indices in 0\.\."),
        ("train: {batch_size: 9}\nray: {num_workers: 2}\n",
         "train.batch_size = 9 does not divide over 2 workers"),
    ],
)  # fmt: skip
def test_what_params_alone_decide_is_refused_in_one_line_before_any_work(
    params: str, message: str, capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    """The backbone is built on the meta device (no weights read): a key timm refuses, blocks it
    lacks and a batch that does not split over the workers stop `dvc repro` at validate."""
    import re

    write_params(params, tasks=None)
    assert stage_main("validate", ["--params", "params.yaml", "--out", "out/ok.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("validate: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not Path("out").exists()


def test_the_data_record_holds_every_data_key_but_the_task_list(
    write_params: Callable[..., Path],
) -> None:
    """What prepare@k and train@k depend on instead of the data params: every key with its
    default filled in, and no data.tasks (a task appended to it changes nothing here)."""
    import json

    from sdlora.config import DataConfig
    from sdlora.pipeline.layout import DATA_RECORD

    write_params("data: {dataset: digits, tasks: [[1, 2], [3]]}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    record = Path(DATA_RECORD).read_bytes()
    assert sorted(json.loads(record)) == sorted(set(DataConfig.model_fields) - {"tasks"})
    write_params("data: {dataset: digits, tasks: [[1, 2], [3], [4]]}\n", tasks=3)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    assert Path(DATA_RECORD).read_bytes() == record  # the same bytes: no earlier task re-runs
    write_params("data: {dataset: digits, tasks: [[1, 2], [3]], split_seed: 4}\n", tasks=2)
    assert stage_main("validate", ["--params", "params.yaml"]) == 0
    assert json.loads(Path(DATA_RECORD).read_text())["split_seed"] == 4
