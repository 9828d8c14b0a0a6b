"""Ray Train task training: N workers equal the library's loop at world size 1; reruns restore.

The Ray tests share one in-process Ray (2 CPUs, workers take 0.5 CPU each) and a tiny random ViT.
The reference is :func:`sdlora.core.train.fit_task` itself in this process, not a copy of the loop.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlora.config import DataConfig, RayConfig, RunInputs, identity_key, parse_config
from sdlora.core.checkpoint import adapter_state
from sdlora.core.model import SDLoRAViT
from sdlora.core.train import World, begin_task, fit_task
from sdlora.data.prepare import prepare
from sdlora.data.source import DataError, imageset_source
from sdlora.data.tasks import ImageSet
from sdlora.ops.ray_train import (
    ADAPTER,
    PROGRESS,
    STATE,
    WORKERS_LOCK,
    TaskInputError,
    TrainingFailed,
    _read_state,
    check_workers_fit,
    is_input_fault,
    load_task_model,
    train_task_distributed,
    wait_for_earlier_workers,
)
from sdlora.pipeline.train import _ray_run_note

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train V2's controller takes reports (and notices start and end) once per health-check
# poll, 2 s by default: ~2 s per epoch and ~9 s per run on these tiny runs. Set before ray.init.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _cfg(epochs: int = 1, batch: int = 8, momentum: float = 0.0, method: str = "sdlora"):
    return parse_config(
        {
            "seed": 3,
            "progress": False,
            "data": {"image_size": 16, "augment": "none"},
            "backbone": {"name": "vit_tiny_patch16_224", "weights": None, "kwargs": TINY},
            "model": {"rank": 2, "method": method},
            "train": {"optimizer": "sgd", "lr": 0.5, "momentum": momentum, "epochs": epochs,
                      "batch_size": batch},
        }
    )  # fmt: skip


def _prepared(root: Path, n: int) -> Path:
    """``n`` random 16 px training images of 3 classes as one prepared task (4-row groups)."""
    rng = np.random.default_rng(7)
    names = ("a", "b", "c")

    def images(k: int) -> ImageSet:
        labels = np.arange(k) % 3
        return ImageSet(rng.integers(0, 256, (k, 16, 16), dtype=np.uint8), labels, names)

    source = imageset_source("noise", images(n), images(3), "test noise")
    out = root / "prepared"
    prepare(DataConfig(init_cls=3, increment=3, row_group_size=4), seed=0, out=out, source=source)
    return out


def _reference(cfg, prepared: Path) -> tuple[SDLoRAViT, list[dict[str, float]]]:
    """Task 0 trained by the library's loop in this process, at world size 1."""
    model = load_task_model(cfg, 0, None)
    begin_task(model, cfg, 0, 3)
    log = fit_task(model, prepared, 0, cfg, World())
    return model, log


def _assert_same(file: Path, state: dict[str, torch.Tensor]) -> None:
    saved = load_file(str(file))
    assert set(saved) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(saved[key], value.detach().cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_two_workers_equal_the_loop_at_world_size_one(ray_session, tmp_path: Path) -> None:
    """DDP over two workers learns what the loop learns alone; with progress on, the console
    gets one line per epoch (not a terminal) from rank 0's progress file, removed afterwards."""
    import io

    # 13 rows, global batch 4: batches of 4, 4, 4, 1; rank 0's part of the last one is empty
    cfg, prepared = _cfg(epochs=2, batch=4, momentum=0.9), _prepared(tmp_path, 13)
    gcs = ray_session.get_runtime_context().gcs_address
    console = io.StringIO()
    result = train_task_distributed(
        cfg, 0, None, prepared, tmp_path / "out", identity="t", num_workers=2,
        cpus_per_worker=0.5, storage_path=tmp_path / "ray", progress=True, console=console,
    )  # fmt: skip
    # a running Ray is used as it is: no second one started, and it is left running
    assert ray_session.is_initialized()
    assert ray_session.get_runtime_context().gcs_address == gcs
    assert result.metrics["epoch"] == 1 and result.metrics["world_size"] == 2
    ref, ref_log = _reference(cfg, prepared)
    losses = [e["train_loss"] for e in result.epochs]
    assert losses == pytest.approx([e["train_loss"] for e in ref_log], rel=1e-5)
    # the last checkpoint is the task's result: the adapter after end_task, copied to out
    ref.end_task()
    _assert_same(result.checkpoint / ADAPTER, adapter_state(ref))
    assert result.adapter.read_bytes() == (result.checkpoint / ADAPTER).read_bytes()
    lines = console.getvalue().splitlines()  # the driver draws rank 0's epochs
    assert [ln.split(":")[0] for ln in lines] == ["task 0 epoch 1/2", "task 0 epoch 2/2"]
    shown = [float(ln.split("loss ")[1].split(",")[0]) for ln in lines]
    assert shown == pytest.approx(losses, abs=1e-4)
    assert not (tmp_path / "out" / PROGRESS).exists()


@pytest.mark.slow
def test_prototype_class_means_are_all_reduced(ray_session, tmp_path: Path) -> None:
    """Each rank sums its share of the features; the all-reduced means are the whole split's."""
    cfg, prepared = _cfg(method="prototype"), _prepared(tmp_path, 13)
    result = train_task_distributed(
        cfg, 0, None, prepared, tmp_path / "out", identity="t", num_workers=2,
        cpus_per_worker=0.5, storage_path=tmp_path / "ray",
    )  # fmt: skip
    ref, log = _reference(cfg, prepared)
    assert result.epochs == log == [] and result.checkpoint is not None  # the result only
    ref.end_task()
    _assert_same(result.adapter, adapter_state(ref))


@pytest.mark.slow
def test_rerun_of_a_finished_run_restores_it(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, prepared = _cfg(epochs=2), _prepared(tmp_path, 10)
    kw = dict(num_workers=1, storage_path=tmp_path / "ray", name="t0", identity="t")
    first = train_task_distributed(cfg, 0, None, prepared, tmp_path / "a", **kw)
    # the restore reads the finished checkpoint before building anything: a backbone file that
    # is gone now would fail the set-up, so the run proves no model was built
    gone = cfg.backbone.model_copy(update={"weights": str(tmp_path / "gone.safetensors")})
    cfg = cfg.model_copy(update={"backbone": gone})
    # the stage's note reads Ray's record of the run, not the newest folder a kill may leave
    stray = tmp_path / "ray" / "t0" / "checkpoint_9999-01-01_00-00-00.000000"
    stray.mkdir()
    (stray / STATE).write_text(json.dumps({"epoch": 0, "finished": False}))
    assert "holds this task's finished run" in str(_ray_run_note(tmp_path / "ray" / "t0", 2))
    monkeypatch.chdir(tmp_path)  # the stage asks with a relative path (ray.storage_path: runs/ray)
    assert "holds this task's finished run" in str(_ray_run_note(Path("ray/t0"), 2))
    again = train_task_distributed(cfg, 0, None, prepared, tmp_path / "b", **kw)
    assert not stray.exists()  # what Ray never registered is removed
    assert first.metrics["start_epoch"] == 0
    assert again.metrics["epoch"] == 1  # the last report is still the finished run's
    assert (first.restored, first.start_epoch) == (False, 0)
    assert (again.restored, again.start_epoch) == (True, 2)  # nothing trained in this call
    assert (tmp_path / "a" / ADAPTER).read_bytes() == (tmp_path / "b" / ADAPTER).read_bytes()
    assert again.epochs == first.epochs


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    inputs = RunInputs("data", None)
    mine = {"task": 0, "identity": identity_key(_cfg(epochs=1), inputs, upto=0)}
    (tmp_path / STATE).write_text(json.dumps({"epoch": 0, **mine}))
    assert _read_state(tmp_path, mine)["epoch"] == 0
    wider = _cfg(epochs=1).model_copy(update={"ray": RayConfig(num_workers=2)})
    for other in ({**mine, "task": 1}, *(
        {"task": 0, "identity": identity_key(c, inputs, upto=0)}
        for c in (_cfg(epochs=3), _cfg(epochs=1, momentum=0.9), wider)
    )):  # fmt: skip
        with pytest.raises(ValueError, match="another configuration, data, backbone or DDP"):
            _read_state(tmp_path, other)


@pytest.mark.slow
def test_a_set_up_error_is_reported_once_not_retried(ray_session, tmp_path: Path) -> None:
    """A damaged backbone file (which the stage's checks would have caught) fails the workers'
    set-up on every rank: they stop cleanly, so Ray does not retry, and the driver says why."""
    bad = tmp_path / "backbone.safetensors"
    bad.write_bytes(b"not a weights file")
    cfg, prepared = _cfg(), _prepared(tmp_path, 8)
    cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"weights": str(bad)})})
    out = tmp_path / "out"
    out.mkdir()
    kw = dict(
        num_workers=2,
        cpus_per_worker=0.5,
        max_failures=2,
        storage_path=tmp_path / "ray",
        identity="t",
    )
    with pytest.raises(TaskInputError, match=r"\(rank 0, 1\): .*not retried"):
        train_task_distributed(cfg, 0, None, prepared, out, name="setup", **kw)
    assert list(out.iterdir()) == []  # no error files, no progress file left behind


@pytest.mark.slow
def test_a_damaged_image_met_in_training_fails_once_not_retried(
    ray_session, tmp_path: Path
) -> None:
    """A damaged image (which the checksums would have caught) fails the first epoch: the rank
    writes the fault down, Ray's retry stops at set-up without training, and the driver raises
    TaskInputError with the worker's own one-line error, which names the file."""
    cfg, prepared = _cfg(), _prepared(tmp_path, 8)
    train = next(prepared.glob("task_00/train*.parquet"))
    data = bytearray(train.read_bytes())
    png = data.find(b"IDAT")  # inside the first image: the Parquet footer stays readable
    data[png : png + 40] = bytes(40)
    train.write_bytes(bytes(data))
    kw = dict(
        num_workers=1, max_failures=1, storage_path=tmp_path / "ray", name="fails", identity="t"
    )
    start = time.time()
    match = r"failed in training .*\(rank 0\): DataError: .*train.*\.parquet.*not retried"
    with pytest.raises(TaskInputError, match=match):
        train_task_distributed(cfg, 0, None, prepared, tmp_path / "out", **kw)
    logs = _ray_logs_since(ray_session, start)
    controller = "".join(t for n, t in logs.items() if n.startswith("ray-train-app-controller"))
    assert controller.count("[FailurePolicy] RETRY") == 1  # Ray retried once, as configured ...
    assert any("InputFault" in t for t in logs.values())  # ... and the retry met it at set-up
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no error file left behind


def _ray_logs_since(ray, start: float) -> dict[str, str]:
    """The Ray session's log files (workers' and Train's) written since ``start``, by name."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public accessor
    files = [p for p in logs.rglob("*") if p.suffix in (".err", ".log") and p.is_file()]
    return {p.name: p.read_text(errors="replace") for p in files if p.stat().st_mtime >= start}


def test_input_faults_are_the_inputs_errors_not_the_workers() -> None:
    """A bad input and a full or read-only disk are not retried; a crash or a lost worker is."""
    assert is_input_fault(DataError("damaged"))
    assert is_input_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert is_input_fault(OSError(errno.EROFS, "Read-only file system"))
    assert not is_input_fault(OSError(errno.ECONNRESET, "Connection reset by peer"))
    assert not is_input_fault(RuntimeError("NCCL error"))


def test_workers_that_cannot_all_start_are_named_with_the_keys() -> None:
    cluster = {"CPU": 2.0}
    assert check_workers_fit(cluster, 4, 0.5, False) is None
    why = check_workers_fit(cluster, 64, 1.0, False)
    assert why == (
        "64 Ray Train worker(s) (ray.num_workers x ray.cpus_per_worker) need 64 CPUs, the "
        "cluster has 2"
    )
    assert "1 GPUs, the cluster has 0" in str(check_workers_fit(cluster, 1, 1.0, True))


def test_too_many_workers_for_in_process_ray_fail_at_once(ray_session, tmp_path: Path) -> None:
    """Ray Train would wait forever for 64 workers on 2 CPUs, printing nothing: refused."""
    cfg, prepared = _cfg(batch=64), _prepared(tmp_path, 8)
    with pytest.raises(TaskInputError, match=r"64 Ray Train worker.*would wait forever"):
        train_task_distributed(
            cfg, 0, None, prepared, tmp_path / "out", identity="t", num_workers=64,
            cpus_per_worker=1, storage_path=tmp_path / "ray",
        )  # fmt: skip


def test_a_killed_runs_workers_still_holding_the_run_folder_are_waited_for(tmp_path: Path) -> None:
    """A worker holds the run's lock while it runs (the kernel drops it when the process dies):
    a new stage waits for it, says so once, and gives up with the fix if it never goes."""
    lock = tmp_path / "ray" / "task0" / WORKERS_LOCK
    lock.parent.mkdir(parents=True)
    worker = subprocess.Popen(  # a worker of a killed run, still writing
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from sdlora.ops.ray_train import _held_while_running as held\n"
         "with held(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout.readline() == "held\n"  # type: ignore[union-attr]
        said: list[str] = []
        with pytest.raises(TrainingFailed, match=r"task 0: processes of an earlier run still "
                           r"hold .*\.workers\.lock after 0 s; stop them"):  # fmt: skip
            wait_for_earlier_workers(lock, 0, said.append, timeout_s=0.3)
        threading.Timer(0.5, worker.kill).start()
        began = time.monotonic()
        wait_for_earlier_workers(lock, 0, said.append, timeout_s=30)
        assert time.monotonic() - began >= 0.4  # waited for the kill
        wait = "waiting for the Ray workers of an interrupted run of task 0 to exit (they "
        assert [line.startswith(wait) for line in said] == [True, True]  # once per call
    finally:
        worker.kill()
        worker.wait()
    wait_for_earlier_workers(lock, 0, said.append)  # nobody holds it: no word, no wait
    assert len(said) == 2
