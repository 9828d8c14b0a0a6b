"""kill -9 at seeded random points of `dvc repro` and of a Ray Train worker: what the next
`dvc repro` ends with is what the uninterrupted run gives (issue 19; docs/reliability.md).

One copy of the repository runs a one-task pipeline (test_dvc_pipeline.py's tiny config with
its 40 classes in one task, one Ray Train worker, 30 short epochs) through four `dvc repro`s,
each a test, in order:

1. killed (its whole process group) while prepare writes;
2. prepare runs again to the uninterrupted splits; killed once train@0's first epoch
   checkpoint is in Ray's run folder;
3. train@0 resumes from its checkpoints, and its Ray Train worker is killed after the resumed
   attempt's first checkpoint (``ray.max_failures: 1``, runtime only: not in the run's
   identity): Ray restarts it, the stage ends well with the uninterrupted adapter, byte for
   byte; evaluate runs; killed during report;
4. report runs again: the uninterrupted accuracy matrix, one finished MLflow run, one model.

The uninterrupted reference is the same sequence run in this process (prepare, pretrain and
:func:`sdlora.core.loop.run_sequence`, which test_sequence.py checks equals the stages' results
for one worker), so the kills cost no second pipeline. Each kill waits for a marker (a
temporary output folder, a checkpoint) and then a delay drawn from
``random.Random(f"{SEED}:{kill}")``; ``SDLORA_KILL_SEED`` picks another seed. Each `dvc repro`
runs in a session of its own, which every process it starts stays in (Ray's workers too, though
each leads a process group of its own): none may outlive a kill for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdlora.core.metrics import read_matrix_csv
from sdlora.pipeline.layout import (
    EVAL_DIR,
    METRICS_FILE,
    PIPELINE_DIR,
    PREPARED_DIR,
    REPORT_DIR,
    task_output,
    write_tasks,
)

from .test_dvc_pipeline import REPO, TINY, _copy_repo, _dvc, _env, _merge, _ran

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("SDLORA_KILL_SEED", "19"))
KILLS = _merge(TINY, {
    "data": {"init_cls": 40, "increment": 40},  # one task: one train stage to kill and resume
    "train": {"epochs": 30},  # 0.2-0.4 s each: Ray's actors outlive a group kill by seconds
    "ray": {"num_workers": 1, "max_failures": 1},
})  # fmt: skip
ADAPTER = "adapter.safetensors"
LEFT_S = 30.0  # how long Ray's processes may outlive a kill of the group (see Repro)


def _rng(kill: str) -> random.Random:
    return random.Random(f"{SEED}:{kill}")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_params(root: Path) -> Path:
    params = root / "params.yaml"
    raw = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), KILLS)
    params.write_text(yaml.safe_dump(raw))
    write_tasks(params, 1)
    return params


@dataclass
class Reference:
    prepared: dict[str, str]  # file -> SHA-256
    adapter: bytes  # task 0's adapter, written as the Ray worker writes the finished task
    losses: list[float]  # task 0's train loss in each epoch
    matrix: np.ndarray


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run, in this process: prepare, pretrain, the task sequence."""
    from sdlora.config import load_config
    from sdlora.core.checkpoint import save_adapter
    from sdlora.core.loop import run_sequence
    from sdlora.pipeline.prepare import prepare_stage
    from sdlora.pipeline.pretrain import pretrain_stage

    root = tmp_path_factory.mktemp("reference")
    adapter = root / ADAPTER
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = load_config(_write_params(root))
        prepare_stage(cfg)
        pretrain_stage(cfg)
        result = run_sequence(
            cfg,
            PREPARED_DIR,
            on_task_end=lambda t, model, _: save_adapter(model, adapter, extra={"task": t}),
        )
    losses = [e["train_loss"] for e in result.records[0]["epochs"]]
    return Reference(_digests(root / PREPARED_DIR), adapter.read_bytes(), losses, result.matrix)


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    sessions: list[int] = field(default_factory=list)  # of every `dvc repro` started here
    outputs: dict[str, str] = field(default_factory=dict)  # what the tests tell each other


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The copy the kills happen in, with a Ray temp folder of its own. What is left of the
    sessions of the `dvc repro`s started here is killed at the end (by process id)."""
    root = tmp_path_factory.mktemp("kills")
    _copy_repo(root)
    _write_params(root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    ray_tmp = tempfile.mkdtemp(prefix="sdk", dir="/tmp")  # short: Ray's socket paths
    project = Project(root, {**_env(root), "RAY_TMPDIR": ray_tmp})
    try:
        yield project
    finally:
        for pid in _alive_in(project.sessions):
            _kill(pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _alive_in(sessions: list[int]) -> list[int]:
    """The running (not zombie) processes of ``sessions``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and os.getsid(int(entry)) in sessions:
                found.append(int(entry))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_until_all_gone(project: Project, where: str, but: int | None = None) -> float:
    """Seconds until no process of this module's `dvc repro`s (``but`` the one in session
    ``but``) is left; after LEFT_S, fails and kills them."""
    began = time.monotonic()
    sessions = [s for s in project.sessions if s != but]
    while (left := _alive_in(sessions)) and time.monotonic() - began < LEFT_S:
        time.sleep(0.1)
    names = [f"{pid} {_cmdline(pid)[:80]}" for pid in left]
    for pid in left:
        _kill(pid)
    assert not left, f"{where}: alive {LEFT_S:.0f} s after the kill:\n" + "\n".join(names)
    return time.monotonic() - began


class Repro:
    """`dvc repro` in a session (and process group) of its own, its output read as it comes.

    kill -9 of the group ends dvc, the stage and Ray's GCS and raylet at once; Ray's workers
    and actors lead process groups of their own and live on for seconds (training, writing
    checkpoints) until they notice their raylet is gone: the tests wait for them."""

    def __init__(self, project: Project, *targets: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", *targets], cwd=project.root, env=project.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        project.sessions.append(self.proc.pid)
        self.lines: list[str] = []
        self.began = time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 300.0) -> float:
        """Poll ``ready`` until it holds; seconds since the start. Fails if `dvc repro` ends
        first or ``timeout`` passes."""
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"dvc repro exited with {self.proc.returncode} before "
                                     f"{what}:\n{self.output[-6000:]}")  # fmt: skip
            if time.monotonic() - self.began > timeout:
                self.kill()
                raise AssertionError(f"no {what} within {timeout:.0f} s:\n{self.output[-6000:]}")
            time.sleep(0.02)
        return time.monotonic() - self.began

    def kill(self) -> bool:
        """kill -9 of the whole process group; whether `dvc repro` was still running."""
        alive = self.proc.poll() is None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return alive


def _kill_after(run: Repro, kill: str, marker: str, ready: Callable[[], bool],
                longest: float) -> str:  # fmt: skip
    """Wait for ``marker``, then a seeded delay of up to ``longest`` s, then kill -9 the
    group; the kill point, for messages."""
    seen = run.wait_for(marker, ready)
    delay = _rng(kill).uniform(0.0, longest)
    time.sleep(delay)
    where = f"seed {SEED}: {kill} kill {delay:.2f} s after {marker} (at {seen:.1f} s)"
    assert run.kill(), f"{where}: dvc repro had ended:\n{run.output[-6000:]}"
    return where


def _ray_run(root: Path) -> Path:
    (run,) = (root / "runs" / "ray").glob("*-task00")
    return run


def _checkpoints(root: Path) -> set[Path]:
    """train@0's epoch checkpoints in Ray's run folder (state.json is the last file written)."""
    return {p.parent for p in (root / "runs" / "ray").glob("*-task00/checkpoint_*/state.json")}


def _temporaries(root: Path) -> list[str]:
    """What killed writers left beside the outputs (sdlora.files: `.<name>.<pid>.*.tmp`)."""
    folders = [root / PREPARED_DIR, root / PIPELINE_DIR, root / "artifacts", root / "results"]
    found = [p for f in folders for pattern in (".*.tmp", ".*.old") for p in f.glob(pattern)]
    return sorted(str(p.relative_to(root)) for p in found)


def test_1_a_repro_killed_in_prepare_leaves_nothing_running(project: Project) -> None:
    root = project.root
    run = Repro(project)
    where = _kill_after(run, "prepare", "prepare's temporary folder",
                        lambda: any((root / PREPARED_DIR).glob(".task_00.*")), 0.15)  # fmt: skip
    project.outputs["prepare"] = where
    _wait_until_all_gone(project, where)
    assert not (root / PREPARED_DIR / "task_00").exists(), f"{where}: prepare had finished"
    assert _ran(run.output) == ["validate", "prepare@0"], run.output


def test_2_prepare_reruns_to_the_same_splits_and_a_task_is_killed_after_a_checkpoint(
    project: Project, reference: Reference
) -> None:
    """The next `dvc repro` starts at once, while the killed run's Ray workers may still train
    and write checkpoints (test 3): the stage waits for them (sdlora.ops.ray_train)."""
    root = project.root
    run = Repro(project)
    where = _kill_after(run, "train", "train@0's first epoch checkpoint",
                        lambda: bool(_checkpoints(root)), 1.0)  # fmt: skip
    project.outputs["train"] = where
    assert _ran(run.output) == ["validate", "prepare@0", "pretrain", "train@0"], run.output
    assert _digests(root / PREPARED_DIR) == reference.prepared, project.outputs["prepare"]
    assert not list((root / PREPARED_DIR).glob(".task_00.*")), project.outputs["prepare"]
    assert not (root / task_output(0)).exists(), f"{where}: train@0 had finished"


def test_3_the_task_resumes_through_a_killed_worker_to_the_same_adapter(
    project: Project, reference: Reference
) -> None:
    """train@0 resumes, started while the killed run's workers may live on (the stage waits
    for them); its Ray Train worker is killed after the resumed attempt's first checkpoint: Ray
    restarts it from the last checkpoint, the stage ends well (dvc repro goes on) with the
    uninterrupted adapter. Then `dvc repro` is killed during report."""
    root = project.root
    killed = project.outputs["train"]
    lingering = [pid for pid in _alive_in(project.sessions)
                 if _cmdline(pid).startswith("ray::RayTrainWorker")]  # fmt: skip
    run = Repro(project)
    run.wait_for("train@0's start", lambda: "train@0: task 0 of 1" in run.output)
    _wait_until_all_gone(project, killed, but=run.proc.pid)
    before = _checkpoints(root)  # the killed run's, its last writers gone
    seen = run.wait_for("the resumed attempt's first checkpoint",
                        lambda: bool(_checkpoints(root) - before))  # fmt: skip
    rng = _rng("worker")
    delay = rng.uniform(0.05, 0.3)  # into the next epoch (0.2-0.4 s)
    time.sleep(delay)
    workers = sorted(pid for pid in _alive_in([run.proc.pid])
                     if _cmdline(pid).startswith("ray::RayTrainWorker"))  # fmt: skip
    where = f"seed {SEED}: worker kill {delay:.2f} s after the resumed checkpoint (at {seen:.1f} s)"
    assert workers, f"{where}: no RayTrainWorker process in the stage's session"
    os.kill(rng.choice(workers), signal.SIGKILL)
    report = _kill_after(run, "report", "report's temporary folder",
                         lambda: any((root / PIPELINE_DIR).glob(".report.*")), 1.0)  # fmt: skip
    output = run.output
    project.outputs["report"] = report
    _wait_until_all_gone(project, report)
    assert _ran(output) == ["validate", "train@0", "evaluate", "report"], f"{where}\n{output}"
    assert "train@0: resuming at epoch " in output, f"{killed}\n{output}"  # it had not finished
    waited = "train@0: waiting for the Ray workers of an interrupted run of task 0 to exit"
    met = "waited for" if waited in output else "gone before"
    print(f"{killed}: {len(lingering)} worker(s) alive as the next repro began; {met} train@0")
    log = (root / "runs" / "logs" / "train@0.log").read_text().split("===== train@0 ")[-1]
    assert log.count("Started training worker group") == 2, f"{where}: no restart in\n{log}"
    assert (root / task_output(0) / ADAPTER).read_bytes() == reference.adapter, where
    epochs = json.loads((root / task_output(0) / "train.json").read_text())["epochs"]
    assert [e["train_loss"] for e in epochs] == reference.losses, where  # each epoch once
    snapshot = json.loads((_ray_run(root) / "checkpoint_manager_snapshot.json").read_text())
    registered = {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]}
    folders = {p.name for p in _ray_run(root).glob("checkpoint_*") if p.is_dir()}
    assert folders <= registered, f"{where}: unregistered checkpoints stayed"
    left = [p for p in _temporaries(root) if not p.startswith(f"{PIPELINE_DIR}/.report.")]
    assert left == [], f"{where}: what the train kill left stayed"  # report's: test 4's


def test_4_report_reruns_to_the_same_matrix_in_one_mlflow_run(
    project: Project, reference: Reference
) -> None:
    from mlflow import MlflowClient

    root = project.root
    where = project.outputs.get("report", "(no report kill)")
    assert not (root / REPORT_DIR).exists(), f"{where}: report had finished"
    output = _dvc(root, "repro")
    assert _ran(output) == ["validate", "report"], f"{where}\n{output}"
    assert _temporaries(root) == [], where
    matrix, _ = read_matrix_csv(root / EVAL_DIR / "accuracy_matrix.csv")
    np.testing.assert_array_equal(matrix, reference.matrix, err_msg=where)
    run_id = json.loads((root / REPORT_DIR / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", where
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
    final = json.loads((root / METRICS_FILE).read_text())
    assert {k: run.data.metrics[k] for k in final} == pytest.approx(final), where
    models = client.search_logged_models([run.info.experiment_id])
    assert [str(m.status) for m in models] == ["READY"], f"{where}: {models}"
