"""End to end on embedded data: pre-train a tiny backbone, run a sequence, CLI outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdlora.cli import main
from sdlora.config import parse_config
from sdlora.core.checkpoint import load_adapter, read_header
from sdlora.core.evaluate import evaluate, outputs
from sdlora.core.loop import run_sequence
from sdlora.core.metrics import read_matrix_csv
from sdlora.core.pretrain import pretrain_backbone
from sdlora.core.train import begin_task, build_model, resolve_device, task_stream
from sdlora.data.prepare import open_prepared, prepare

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
        "data": {"dataset": "digits", "init_cls": 4, "increment": 3, "image_size": 16,
                 "augment": "none"},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": weights, "kwargs": TINY},
        "pretrain": {"per_class": 6, "epochs": 1, "batch_size": 64},
        "model": {"rank": 4, **model},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny backbone pre-trained by the real pre-training code (seconds)."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    report = pretrain_backbone(parse_config(_raw(None)), path, progress=False)
    assert report.num_classes == 52 and report.train_images == 52 * 6
    assert json.loads(path.with_suffix(".json").read_text())["seconds"] == report.seconds
    return str(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits as the prepare stage writes them: 4 + 3 + 3 classes."""
    cfg = parse_config(_raw(None))
    out = tmp_path_factory.mktemp("prepared") / "digits"
    prepare(cfg.data, seed=cfg.seed, out=out)
    return out


def test_pretraining_is_deterministic_per_seed(weights: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = tmp_path / "again.safetensors"
    pretrain_backbone(parse_config(_raw(None)), again, progress=False)
    a, b = load_file(weights), load_file(str(again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["sdlora", "seq_lora", "frozen", "prototype"])
def test_run_sequence_on_the_default(weights: str, prepared: Path, method: str) -> None:
    cfg = parse_config(_raw(weights, method=method))
    result = run_sequence(cfg, prepared, ncm=True)
    m = result.matrix
    assert m.shape == (3, 3)  # 10 digits: 4 + 3 + 3 classes
    assert np.isfinite(m[np.tril_indices(3)]).all() and np.isnan(m[np.triu_indices(3, 1)]).all()
    assert len(result.counts) == 3 and sum(result.counts) == 360  # 20 % of 1,797 digits
    assert [len(r) for r in result.ncm_rows] == [1, 2, 3]
    if method not in ("frozen", "prototype"):  # a barely pre-trained tiny ViT: only
        assert m[0, 0] > 45  # adaptation learns quickly; 4 classes: chance is 25 %
    assert set(result.summary) >= {"final_accuracy", "average_anytime_accuracy", "forgetting"}
    ranks = {"sdlora": [4, 4, 4], "seq_lora": [4, 0, 0]}.get(method, [0, 0, 0])
    assert [r["rank"] for r in result.records] == ranks  # what each task added
    grows = [r["storage"]["stored_params"] for r in result.records]
    assert grows == sorted(grows) and len(result.records) == 3
    epochs = [r["epochs"] for r in result.records]
    if method == "prototype":  # no gradient training: no epochs, nothing stored but the head
        assert epochs == [[], [], []] and grows == [4 * 33, 7 * 33, 10 * 33]
    else:
        assert all(len(e) == 4 and e[-1]["samples_per_second"] > 0 for e in epochs)


def test_magnitude_only_keeps_task_0s_direction_and_trains_its_magnitude(
    weights: str, prepared: Path
) -> None:
    """SPEC §4 ablation: one component (task 0's); later tasks train its magnitude and head."""
    cfg = parse_config(_raw(weights, method="magnitude_only"))
    seen: list[dict] = []

    def keep(task: int, model, result) -> None:
        mats = model.matrices()
        seen.append({
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
            "A": [m.A.clone() for m in mats],
            "alpha": model.magnitudes.alpha.detach().clone(),
        })  # fmt: skip

    result = run_sequence(cfg, prepared, on_task_end=keep)
    assert [r["rank"] for r in result.records] == [4, 0, 0]
    assert seen[0]["A"][0].shape[0] == 4  # task 0's pair frozen as a stored direction
    for later in seen[1:]:
        assert all(torch.equal(a, b) for a, b in zip(later["A"], seen[0]["A"], strict=True))
        assert later["alpha"].shape == seen[0]["alpha"].shape  # no new magnitude
    assert not torch.equal(seen[1]["alpha"], seen[0]["alpha"])  # alpha_0 trained in task 1
    assert seen[2]["trainable"] == ["head.bias", "head.weight", "magnitudes.alpha"]
    stored = [r["storage"]["stored_params"] for r in result.records]
    assert [b - a for a, b in itertools.pairwise(stored)] == [3 * 33, 3 * 33]  # head rows only


def test_joint_trains_every_task_at_once_into_one_row(
    weights: str, prepared: Path, tmp_path: Path
) -> None:
    """SPEC §4 upper reference: one task of all 10 classes; the matrix is one row of 3 tasks."""
    cfg = parse_config(_raw(weights, method="joint"))
    result = run_sequence(cfg, prepared)
    (record,) = result.records
    assert record["num_classes"] == 10 and record["rank"] == 4 and len(record["epochs"]) == 4
    assert result.matrix.shape == (1, 3) and sum(result.counts) == 360
    s = result.summary
    weighted = np.average(result.matrix[0], weights=result.counts)
    assert s["final_accuracy"] == s["average_anytime_accuracy"] == pytest.approx(weighted)
    assert s["forgetting"] is None and s["backward_transfer"] is None
    # its data: every task's training rows, shuffled together (a batch mixes the tasks)
    from sdlora.core.train import task_stream

    model = build_model(cfg)
    stream = task_stream(prepared, [0, 1, 2], "train", cfg, model.backbone)
    singles = [task_stream(prepared, t, "train", cfg, model.backbone) for t in range(3)]
    assert stream.num_rows == sum(x.num_rows for x in singles) and open_prepared(
        prepared
    ).task_classes([1, 2])
    _, y = next(iter(torch.utils.data.DataLoader(stream, batch_size=64)))
    tasks_in_batch = {0 if c < 4 else 1 if c < 7 else 2 for c in y.tolist()}
    assert tasks_in_batch == {0, 1, 2}
    # `sdlora run`'s files: the one row with its counts, no square matrix
    from sdlora.report.sequence import write_sequence_outputs

    paths = write_sequence_outputs(result, tmp_path)
    lines = paths["row"].read_text().splitlines()
    assert lines[0] == "trained,task_0,task_1,task_2" and lines[2].startswith("count,")
    assert [float(v) for v in lines[1].split(",")[1:]] == list(result.matrix[0])
    assert not (tmp_path / "accuracy_matrix.csv").exists()


def test_sdlora_kd_records_the_current_tasks_accuracy_around_a_fold(
    weights: str, prepared: Path
) -> None:
    """tau 1 folds every task >= 1; each fold's record holds accuracy before and after it, and
    the accuracy after is the one the matrix reports for that task."""
    cfg = parse_config(_raw(weights, method="sdlora_kd", kd_tau=1.0))
    result = run_sequence(cfg, prepared)
    for t, rec in enumerate(result.records[1:], 1):
        kd = rec["kd"]
        assert kd["folded"] and 0 <= kd["accuracy_before_fold"] <= 100
        assert kd["accuracy_after_fold"] == pytest.approx(rec["accuracy"][t])
    stored = [r["storage"]["stored_params"] for r in result.records]
    assert [b - a for a, b in itertools.pairwise(stored)] == [3 * 33, 3 * 33]  # folds: head only
    none = run_sequence(parse_config(_raw(weights, method="sdlora_kd", kd_tau=0.0)), prepared)
    for r in none.records[1:]:  # nothing folded: the function is the one evaluated before
        assert not r["kd"]["folded"]
        assert r["kd"]["accuracy_before_fold"] == r["kd"]["accuracy_after_fold"]


def test_prototype_head_is_the_cosine_class_mean(weights: str, prepared: Path) -> None:
    from sdlora.core.evaluate import outputs
    from sdlora.core.train import World, begin_task, fit_task, task_stream

    cfg = parse_config(_raw(weights, method="prototype"))
    model = build_model(cfg)
    begin_task(model, cfg, 0, 4)
    assert fit_task(model, prepared, 0, cfg, World()) == []
    stream = task_stream(prepared, 0, "train", cfg, model.backbone, plain=True)
    f, y = outputs(model.forward_features, stream, torch.device("cpu"), 100)
    means = torch.stack([f[y == c].double().mean(0) for c in range(4)]).float()
    torch.testing.assert_close(model.head.weight, torch.nn.functional.normalize(means, dim=1))
    assert torch.equal(model.head.bias, torch.zeros(4))


def test_sequence_is_reproducible_and_merges(weights: str, prepared: Path) -> None:
    cfg = parse_config(_raw(weights))
    seen: dict[int, object] = {}

    def keep(task: int, model: object, result: object) -> None:
        seen["model"] = model

    a = run_sequence(cfg, prepared, on_task_end=keep)
    two_workers = _raw(weights)
    two_workers["data"]["workers"] = 2  # decoding in 2 DataLoader processes: the same batches
    b = run_sequence(parse_config(two_workers), prepared)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    merged = seen["model"].merge()
    accs, _ = evaluate(merged, prepared, range(3), cfg, resolve_device("cpu"))
    assert accs == pytest.approx(list(a.matrix[-1]), abs=0.5)


_FP32_MATRIX: dict[tuple[str, str], np.ndarray] = {}


@pytest.mark.slow
@pytest.mark.parametrize("switch", [{"precision": "bf16"}, {"compile": True}])
def test_gpu_switches_keep_the_accuracy_matrix(weights: str, prepared: Path, switch: dict) -> None:
    """train.precision bf16 and train.compile change float rounding, not what is learnt.

    Tolerance: every entry of the accuracy matrix within 15 points of fp32 eager's and their
    mean within 8. The tiny, barely pre-trained ViT learns 10 digits to 10-60 % in 4 epochs
    (chance 10-25 %), one test image is 0.7-0.9 points, and rounding each step differently
    lets two runs part by several images; a switch that broke learning would fall to chance.
    CPU runs both here; a GPU gives the same figures the table in docs/performance.md shows.
    """
    key = (weights, str(prepared))  # fp32 eager's matrix: once for both switches
    if key not in _FP32_MATRIX:
        _FP32_MATRIX[key] = run_sequence(parse_config(_raw(weights)), prepared).matrix
    reference = _FP32_MATRIX[key]
    raw = _raw(weights)
    raw["train"].update(switch)
    matrix = run_sequence(parse_config(raw), prepared).matrix
    diff = np.abs(matrix - reference)[np.tril_indices(3)]
    assert diff.max() <= 15.0 and diff.mean() <= 8.0, (matrix, reference)


def test_prepared_folder_of_other_settings_is_refused(weights: str, prepared: Path) -> None:
    cfg = parse_config(_raw(weights) | {"seed": 1})
    with pytest.raises(ValueError, match=r"seed: 0 there, 1 in params"):
        run_sequence(cfg, prepared)


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
    # --prepared reuses prepared splits (the pipeline's data/prepared, say): same matrix
    again = tmp_path / "again"
    args = ["--params", str(params), "--out", str(again), "--prepared", str(out / "prepared")]
    assert main(["run", *args]) == 0 and not (again / "prepared").exists()
    np.testing.assert_array_equal(read_matrix_csv(again / "accuracy_matrix.csv")[0], matrix)


def test_cli_reports_bad_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_raw(None, rank=0)))
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "model.rank = 0" in capsys.readouterr().err
    params.write_text(yaml.safe_dump(_raw(str(tmp_path / "missing.safetensors"))))
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_cuda_request_without_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_evaluation_with_loader_workers_scores_each_task_on_its_own_images(
    weights: str, prepared: Path
) -> None:
    """One stream over every task's test split, read by 2 DataLoader workers in batches of 16
    (their batches interleave): each task's accuracy and count equal those of its own split
    read alone in one process."""
    raw = _raw(weights)
    raw["data"]["workers"] = 2
    raw["train"]["eval_batch_size"] = 16
    cfg = parse_config(raw)
    model = build_model(cfg)
    for t in range(3):
        begin_task(model, cfg, t, open_prepared(prepared).task_classes(t)[1])
    accs, counts = evaluate(model, prepared, range(3), cfg, torch.device("cpu"))
    for t in range(3):
        stream = task_stream(prepared, t, "test", cfg, model.backbone)
        logits, y = outputs(model, stream, torch.device("cpu"), 16)
        assert counts[t] == y.numel()
        assert accs[t] == pytest.approx(100.0 * (logits.argmax(1) == y).double().mean().item())
    assert len(set(accs)) > 1  # a random head scores the tasks differently


def test_the_seeded_order_named_in_data_tasks_gives_the_same_matrix(
    weights: str, prepared: Path, tmp_path: Path
) -> None:
    """Issue 20's must-hold: listing the seeded class order by name in data.tasks (the path a
    model that keeps learning takes) trains to exactly the seeded path's accuracy matrix."""
    seeded = _raw(weights)
    named = [t["class_names"] for t in open_prepared(prepared).tasks]
    listed = {**seeded, "data": {**seeded["data"], "tasks": named}}
    cfg = parse_config(listed)
    out = tmp_path / "named"
    prepare(cfg.data, seed=cfg.seed, out=out)
    a = run_sequence(parse_config(seeded), prepared).matrix
    b = run_sequence(cfg, out).matrix
    assert np.array_equal(a, b, equal_nan=True)
