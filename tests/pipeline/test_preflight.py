"""Stage train@k fails before launch: a bad input exits 2 with one line, and nothing is written.

Each test builds a tiny project (two prepared tasks of noise images, a 2-block backbone file,
task 0's output), damages one input and runs the stage's ``main`` as DVC would. The checks fail
on the driver before Ray starts, so no test here starts Ray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm

from sdlora.cli import stage_main
from sdlora.config import Config, DataConfig, load_config
from sdlora.core.backbone import save_backbone
from sdlora.core.checkpoint import save_adapter
from sdlora.core.train import begin_task, build_model
from sdlora.data.prepare import prepare
from sdlora.data.source import imageset_source
from sdlora.data.tasks import ImageSet
from sdlora.pipeline.preflight import check_task_inputs

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
WEIGHTS = "artifacts/backbone/tiny.safetensors"
PARAMS = f"""\
data: {{image_size: 16, augment: none, init_cls: 2, increment: 2}}
backbone: {{name: vit_tiny_patch16_224, weights: {WEIGHTS}, kwargs: {TINY}}}
model: {{rank: 2}}
"""
REPREPARE = "re-create the prepared splits (the pipeline: `dvc repro -f prepare@{task}`)"
RERUN_0 = "re-run the previous task's stage with `dvc repro -f train@0`"
PRETRAIN = "re-create it with `dvc repro -f pretrain` or fix `backbone.weights` in params.yaml"


def _adapter(cfg: Config, tasks: int, path: Path) -> None:
    """The adapter after ``tasks`` tasks of 2 classes each, as train@k saves it."""
    model = build_model(cfg)
    for t in range(tasks):
        begin_task(model, cfg, t, 2)
        model.end_task()
    save_adapter(model, path, extra={"task": tasks - 1})


@pytest.fixture
def project(write_params: Callable[..., Path]) -> Config:
    """The inputs of train@1 in this folder, all valid; returns the config."""
    cfg = load_config(write_params(PARAMS, 2))
    rng = np.random.default_rng(0)

    def images(n: int) -> ImageSet:
        pixels = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        return ImageSet(pixels, np.arange(n) % 4, ("a", "b", "c", "d"))

    source = imageset_source("noise", images(16), images(8), "test noise")
    data = DataConfig(init_cls=2, increment=2, row_group_size=4)
    prepare(data, seed=0, out="data/prepared", source=source)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    save_backbone(backbone, Path(WEIGHTS), "vit_tiny_patch16_224", TINY)
    Path("runs/pipeline/task_0").mkdir(parents=True)
    entry = {"task": 0, "num_classes": 2, "rank": 2, "accuracy": [90.0], "counts": [4],
             "epochs": [], "storage": {"stored_params": 10, "stored_bytes": 40}}  # fmt: skip
    record = {"key": None, "mlflow_run_id": None, "tasks": [entry]}
    Path("runs/pipeline/task_0/record.json").write_text(json.dumps(record))
    _adapter(cfg, 1, Path("runs/pipeline/task_0/adapter.safetensors"))
    return cfg


def _files() -> set[str]:
    return {str(p) for p in Path().rglob("*")}


def _fails(capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    """train@1 exits 2 with one stderr line holding ``expected``, having written nothing."""
    before = _files()
    capsys.readouterr()
    assert stage_main("train", ["--task", "1", "--out", "out"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("train: error: ") and err.count("\n") == 1 and not out, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert _files() == before  # no output folder, runs/ray, runs/logs or mlflow.db
    assert not Path("out").exists() and not Path("runs/ray").exists()
    assert not Path("mlflow.db").exists()


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_valid_inputs_pass(project: Config) -> None:
    check_task_inputs(project, 1, "data/prepared", "runs/pipeline/task_0/adapter.safetensors")
    check_task_inputs(project, 0, "data/prepared", None)


@pytest.mark.parametrize("split", ["task_01/train.parquet", "task_00/test.parquet"])
def test_truncated_split(project: Config, capsys: pytest.CaptureFixture[str], split: str) -> None:
    _truncate(f"data/prepared/{split}")
    _fails(
        capsys,
        f"data/prepared/{split} is not a readable Parquet file (Parquet magic bytes not found",
        f"it was truncated or overwritten; {REPREPARE.format(task=int(split[5:7]))}",
    )


def test_missing_split(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    Path("data/prepared/task_01/test.parquet").unlink()
    _fails(capsys, "data/prepared/task_01/test.parquet not found", REPREPARE.format(task=1))


def test_split_with_another_schema(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    path = "data/prepared/task_01/train.parquet"
    table = pq.read_table(path)
    table = table.set_column(1, "label", table.column("label").cast(pa.string()))
    pq.write_table(table.drop_columns(["path"]), path)
    _fails(
        capsys,
        f"{path} does not have the prepare stage's columns (no column 'path'; column 'label' is "
        "string, not int64)",
        REPREPARE.format(task=1),
    )


def test_split_with_other_rows(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    path = "data/prepared/task_00/test.parquet"
    pq.write_table(pq.read_table(path).slice(0, 1), path)
    listed = "data/prepared/task_00/task.json"
    _fails(capsys, f"{path} holds 1 rows but {listed} lists 4", REPREPARE.format(task=0))


def test_truncated_previous_adapter(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    path = "runs/pipeline/task_0/adapter.safetensors"
    _truncate(path)
    _fails(capsys, f"{path} is not a readable adapter file (", RERUN_0)


def test_previous_adapter_of_other_tasks(
    project: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path("runs/pipeline/task_0/adapter.safetensors")
    _adapter(project, 2, path)
    _fails(
        capsys, f"{path} holds the adapter of 2 task(s), but task 1 starts from tasks 0..0", RERUN_0
    )


def test_previous_adapter_of_other_settings(
    project: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path("runs/pipeline/task_0/adapter.safetensors")
    model = project.model.model_copy(update={"targets": ["q"]})
    _adapter(project.model_copy(update={"model": model}), 1, path)
    _fails(
        capsys,
        f"{path} was trained with other settings (targets: file has ['q'], model has ['q', 'v'])",
        "re-run it with `dvc repro train@0` or restore the params it was trained with",
    )


def test_missing_backbone(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    Path(WEIGHTS).unlink()
    _fails(capsys, f"{WEIGHTS} not found (backbone.weights); {PRETRAIN}")


def test_corrupt_backbone(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    _truncate(WEIGHTS)
    _fails(
        capsys,
        f"{WEIGHTS} cannot be loaded into 'vit_tiny_patch16_224' with backbone.kwargs",
        PRETRAIN,
    )


def test_broken_params(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    Path("params.yaml").write_text("data:\n  image_size: 16\n   augment: none\n")
    _fails(capsys, "params.yaml: not valid YAML at line 3, column 11: mapping values are not")


def test_batch_that_does_not_split_over_the_workers(
    project: Config, capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params(PARAMS + "train: {batch_size: 8}\nray: {num_workers: 3}\n", 2)
    _fails(capsys, "params: train.batch_size = 8 does not divide over 3 workers; use a multiple")


def _overwrite_inside(path: str, at: int, size: int) -> None:
    """``size`` bytes from ``at`` set to 0x7f: the file keeps its length, header and footer."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\x7f" * size)


def test_previous_adapter_damaged_inside(
    project: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 bytes inside the tensors, header intact: the checksum stops the stage before Ray."""
    path = "runs/pipeline/task_0/adapter.safetensors"
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    _overwrite_inside(path, start + 16, 400)
    _fails(capsys, f"{path} is a corrupt adapter", "damaged adapter", "dvc repro -f train@0")


def test_split_damaged_inside(project: Config, capsys: pytest.CaptureFixture[str]) -> None:
    path = "data/prepared/task_01/train.parquet"
    _overwrite_inside(path, 100, 200)
    _fails(capsys, f"{path} is not the file the prepare stage wrote", "dvc repro -f prepare")


def test_blocks_the_backbone_lacks(
    project: Config, capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params(PARAMS.replace("model: {rank: 2}", "model: {rank: 2, blocks: [0, 5]}"), 2)
    _fails(capsys, "model.blocks = [0, 5]: use distinct indices in 0..1 (the backbone has 2")
