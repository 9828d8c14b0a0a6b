"""Train one task of the sequence on Ray Train (data parallel, DDP over gloo or nccl).

:func:`train_task_distributed` starts (or attaches to) Ray and runs :func:`train_loop_per_worker`
on ``num_workers`` workers through a ``TorchTrainer``. Each worker runs the library's one loop,
:func:`sdlora.core.train.fit_task`, at its rank and world size:

- every worker builds the same model (seeded), loads the previous task's adapter and begins the
  task (:func:`sdlora.core.train.begin_task`, seeded: the same new pair on every rank);
- if Ray hands it a checkpoint (``ray.train.get_checkpoint()``: a worker restart after a failure,
  or a rerun with the same ``storage_path`` and ``name``) of the same identity, the adapter
  state (current pair included), the optimizer state and the epoch log are restored and
  training continues at the next epoch: resume is the normal path;
- rank 0 reports metrics and a checkpoint (adapter + optimizer + epoch log) every epoch and, at
  the end, calls ``end_task`` and reports the task's result as the last checkpoint (the
  finished adapter and the epoch log). The driver takes it from Ray's ``Result``; a re-run whose
  last checkpoint is that result restores it as it is, recomputing nothing.

What the user sees (:func:`train_task_distributed`): Ray's own output (its start-up, the
controller's and workers' logs) goes to a log file, and the console shows the epochs' progress,
which rank 0 writes to ``out_dir/.progress.jsonl`` (:class:`sdlora.ops.console.FileProgress`) and
the driver draws (:class:`sdlora.ops.console.ProgressRelay`). Failures are split in two: an error
while the workers set the task up (a bad input the driver's checks missed: every rank reads the
same files) is agreed on by all ranks, which then stop without an error, so Ray does not retry
it, and the driver raises :class:`TaskInputError`. During training the ranks cannot agree
without a collective per batch, so a rank that meets the input's fault there (a damaged image:
:class:`sdlora.errors.BadInput`; a full or read-only disk) writes it down before failing: Ray's
retry, if any, finds it at set-up and stops at once, training nothing twice, and the driver
raises :class:`TaskInputError` too. Any other error during training (a worker that dies) is
retried by Ray Train up to ``max_failures`` times, then raised as :class:`TrainingFailed`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from sdlora.config import Config, RayConfig
from sdlora.core.checkpoint import load_adapter, save_adapter
from sdlora.core.evaluate import finish_task
from sdlora.core.loop import Learner
from sdlora.core.model import SDLoRAViT
from sdlora.core.train import (
    World,
    begin_task,
    build_model,
    fit_task,
    local_batch_size,
)
from sdlora.data.prepare import Prepared, PreparedLike, open_prepared
from sdlora.errors import BadInput, Failed
from sdlora.files import atomic_path
from sdlora.ops.console import FileProgress, ProgressRelay, redirect_output
from sdlora.ops.ray_session import ensure_ray, resolve_address
from sdlora.progress import ConsoleProgress

ADAPTER = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_LOG = "train.json"  # the driver writes it beside the adapter: each epoch's loss, s, samples/s
PROGRESS = ".progress.jsonl"  # rank 0's progress, drawn by the driver; removed after training
SETUP_ERROR = ".setup_error.rank{rank}.json"  # a rank's set-up failure, read by the driver
INPUT_ERROR = ".input_error.rank{rank}.json"  # a rank's input fault met in training: no retry
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a retry would meet the same disk
WORKERS_LOCK = ".workers.lock"  # in Ray's run folder: held (shared) by every worker while it runs
EARLIER_WORKERS_S = 120.0  # how long a stage waits for a killed run's workers to exit


class TaskInputError(BadInput, RuntimeError):
    """The workers could not set the task up (an input the driver's checks let through)."""


class InputFault(BadInput, RuntimeError):
    """A Ray retry's set-up meets the input fault an earlier attempt of the task wrote down."""


class TrainingFailed(Failed, RuntimeError):
    """Training failed on the workers after Ray Train's retries; the message says where to look."""


@dataclass
class DistributedResult:
    """What :func:`train_task_distributed` produced."""

    adapter: Path  # out_dir / adapter.safetensors: the task's state after end_task
    metrics: dict[str, Any]  # the last report that carried a checkpoint
    epochs: list[dict[str, float]]  # every epoch's train_loss, epoch_seconds, samples_per_second
    checkpoint: Path | None  # the last reported checkpoint's folder
    run_path: str  # Ray's run folder (storage_path / name)
    start_epoch: int  # the epoch this call's training started at (> 0: resumed)
    restored: bool  # Ray restored a finished run: no epoch trained in this call


# ---- the worker ----------------------------------------------------------------------------------


def load_task_model(cfg: Config, task: int, prev_adapter: str | Path | None) -> SDLoRAViT:
    """The model after tasks ``0..task-1``: built (seeded) and the previous adapter loaded."""
    model = build_model(cfg)
    if prev_adapter is not None:
        load_adapter(model, prev_adapter)
    if model.num_tasks != task:
        raise ValueError(
            f"task {task} needs the adapter of tasks 0..{task - 1}; "
            f"the previous adapter holds {model.num_tasks} tasks"
        )
    return model


def _write_checkpoint(
    folder: Path,
    model: SDLoRAViT,
    opt: torch.optim.Optimizer | None,
    epochs: list[dict[str, float]],
    fingerprint: dict,
) -> None:
    """An epoch's checkpoint (adapter with the current pair, optimizer) or, with
    ``fingerprint["finished"]``, the task's result (the adapter after end_task)."""
    extra = {"task": fingerprint["task"]} if fingerprint.get("finished") else {
        "epoch": len(epochs) - 1}  # fmt: skip
    save_adapter(model, folder / ADAPTER, extra=extra)
    if opt is not None:
        torch.save(opt.state_dict(), folder / OPTIMIZER)
    state = {"epoch": len(epochs) - 1, "epochs": epochs, **fingerprint}
    (folder / STATE).write_text(json.dumps(state))


def _read_state(folder: Path, fingerprint: dict) -> dict[str, Any]:
    """The checkpoint's state (epoch, epoch log, whether the task finished), after checking it
    belongs to this task and run (``fingerprint``: the task and the identity key of tasks
    0..task, :func:`sdlora.config.identity_key`)."""
    state = json.loads((folder / STATE).read_text())
    if {k: state.get(k) for k in fingerprint} != fingerprint:
        raise ValueError(
            f"checkpoint {folder} is from task {state.get('task')} of run "
            f"{state.get('identity')}, not task {fingerprint['task']} of run "
            f"{fingerprint['identity']} (another configuration, data, backbone or DDP width); "
            "use another run name or storage_path to start afresh"
        )
    return state


def is_input_fault(err: BaseException) -> bool:
    """Whether an error in training is the input's (a damaged file, a full or read-only disk),
    which a retry would only meet again, rather than a worker's (a crash, a lost node)."""
    if isinstance(err, BadInput):
        return True
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def _any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` is true on any rank (an all-reduce; no collective at world size 1)."""
    if world.size == 1:
        return flag
    t = torch.tensor([int(flag)], device=world.device)  # nccl reduces device tensors only
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: train task ``config["task"]`` (see the module docstring).

    ``config``: ``cfg`` (Config, paths as in params), ``weights`` (the backbone file's absolute
    path or None), ``task``, ``identity`` (the key of what tasks 0..task depend on, which a
    checkpoint must carry to be resumed), ``prev_adapter`` (str or None), ``prepared`` (the
    opened :class:`sdlora.data.prepare.Prepared`: no manifest read here), ``out_dir`` (set-up
    errors and progress), ``progress`` (whether rank 0 writes its progress for the driver).
    """
    import ray.train
    import ray.train.torch

    task: int = config["task"]
    out_dir = Path(config["out_dir"])
    prepared: Prepared = config["prepared"]
    cfg: Config = config["cfg"].for_task(task)  # the task's epochs/lr overrides, if any
    ctx = ray.train.get_context()
    world = World(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.set_num_threads(cfg.train.threads)  # as sdlora run does: the same float results
    with _held_while_running(Path(config["workers_lock"])):
        _train_worker(config, task, out_dir, prepared, cfg, world)


def _train_worker(
    config: dict[str, Any], task: int, out_dir: Path, prepared: Prepared, cfg: Config, world: World
) -> None:
    """The body of :func:`train_loop_per_worker`, run while the worker holds the run's lock."""
    import ray.train
    import ray.train.torch

    fingerprint = {"task": task, "identity": config["identity"]}

    # Set-up reads the same files on every rank: a failure here is a bad input, which a retry
    # would only repeat. The ranks agree on it and stop cleanly; the driver reports it.
    failure: BaseException | None = None
    finished = False
    earlier = sorted(out_dir.glob(INPUT_ERROR.format(rank="*")))  # an earlier attempt's fault
    try:
        if earlier:  # this attempt is Ray's retry of it: the same inputs fail the same way
            raise InputFault(json.loads(earlier[0].read_text())["message"])
        checkpoint = ray.train.get_checkpoint()
        state: dict[str, Any] = {}
        if checkpoint is not None:  # read first: a finished run needs no model at all
            with checkpoint.as_directory() as folder:
                state = _read_state(Path(folder), fingerprint)
        finished = bool(state.get("finished"))  # Ray restored the finished run
        if not finished:
            build_cfg = cfg
            if config.get("weights"):  # workers run in their own folders: the absolute path
                backbone = cfg.backbone.model_copy(update={"weights": config["weights"]})
                build_cfg = cfg.model_copy(update={"backbone": backbone})
            model = load_task_model(build_cfg, task, config["prev_adapter"])
            begin_task(model, cfg, task, prepared.task_classes(task)[1])
            start_epoch, opt_state, epoch_log = 0, None, []
        if state and not finished:  # resume: the current pair, the optimizer, the epoch log
            with checkpoint.as_directory() as folder:
                start_epoch, epoch_log = int(state["epoch"]) + 1, list(state["epochs"])
                load_adapter(model, Path(folder) / ADAPTER)
                opt_state = torch.load(
                    Path(folder) / OPTIMIZER, map_location="cpu", weights_only=True
                )
    except Exception as err:  # every set-up error is reported, none retried
        failure = err
        traceback.print_exc()  # into Ray's log, for the full story
    if _any_rank(failure is not None, world):
        if failure is not None and not earlier:  # the earlier fault's file says it already
            error = {"rank": world.rank, "type": type(failure).__name__, "message": str(failure)}
            with atomic_path(out_dir / SETUP_ERROR.format(rank=world.rank)) as tmp:
                tmp.write_text(json.dumps(error))
        return
    if finished:  # the last checkpoint is the task's result: nothing to train or recompute
        return
    model.to(world.device)
    # Only the method's trainable set requires grad; DDP registers hooks for exactly those, and
    # all of them are used in every forward. The frozen backbone is identical on every rank.
    # A method that trains nothing by gradient (prototype) needs no DDP (which refuses it).
    trains = any(p.requires_grad for p in model.parameters())
    ddp = ray.train.torch.prepare_model(model, move_to_device=world.device) if trains else model

    def report(epoch: int, log: list[dict[str, float]], opt: torch.optim.Optimizer | None,
               done: bool = False) -> None:  # fmt: skip
        metrics = {
            "task": task, "epoch": epoch, **(log[-1] if log else {}), "world_size": world.size,
            "start_epoch": start_epoch,  # the epoch this attempt started at (resume: > 0)
            "finished": done,
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if world.rank == 0:
                _write_checkpoint(Path(tmp), model, opt, log, {**fingerprint, "finished": done})
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    progress = FileProgress(out_dir / PROGRESS) if config.get("progress") else None
    if progress is not None and start_epoch and world.rank == 0:  # the relay tells a restart
        progress.write({"event": "resume", "start_epoch": start_epoch})
    try:
        epoch_log = fit_task(
            model, prepared, task, cfg, world, forward=ddp, start_epoch=start_epoch,
            optimizer_state=opt_state, on_epoch=report, epoch_log=epoch_log, progress=progress,
        )  # fmt: skip
        if world.rank == 0:
            finish_task(model, prepared, task, cfg, world.device)  # KD: + fold accuracy
            model.cpu()
    except Exception as err:
        if is_input_fault(err):  # written down for the retry's set-up and for the driver
            error = {"rank": world.rank, "type": type(err).__name__, "message": str(err)}
            with atomic_path(out_dir / INPUT_ERROR.format(rank=world.rank)) as tmp:
                tmp.write_text(json.dumps(error))
        raise
    # The task's result is the last checkpoint (the finished adapter and the epoch log): the
    # driver reads it from Ray's Result, and a re-run restores it without recomputing.
    report(len(epoch_log) - 1, epoch_log, None, done=True)


@contextmanager
def _held_while_running(lock: Path) -> Iterator[None]:
    """Hold ``lock`` shared while a worker runs: the kernel drops it when the process ends, so a
    driver that finds it held knows a killed run's workers still write into the run folder."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# ---- the driver ----------------------------------------------------------------------------------


def wait_for_earlier_workers(
    lock: Path, task: int, say: Callable[[str], None], timeout_s: float = EARLIER_WORKERS_S
) -> None:
    """Wait until no worker of an earlier, killed run of this task holds ``lock``.

    kill -9 of a stage ends its driver and Ray's GCS and raylet at once, but Ray's workers lead
    process groups of their own and go on training, and writing checkpoints into the run
    folder, for seconds: a stage started meanwhile would resume from a folder still changing.
    Raises :class:`TrainingFailed` if they are still there after ``timeout_s``."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        began, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # released when fd closes: this run's workers take it shared
            except BlockingIOError:
                pass
            if not said:
                say(f"waiting for the Ray workers of an interrupted run of task {task} to exit "
                    "(they still write into its run folder)")  # fmt: skip
                said = True
            if time.monotonic() - began > timeout_s:
                raise TrainingFailed(
                    f"task {task}: processes of an earlier run still hold {lock} after "
                    f"{timeout_s:.0f} s; stop them (`fuser -k {lock}`, or `ray stop` for a "
                    "cluster you started) and re-run"
                )
            time.sleep(0.1)
    finally:
        os.close(fd)


def check_workers_fit(
    resources: dict[str, float], num_workers: int, cpus_per_worker: float, use_gpu: bool
) -> str | None:
    """Why ``num_workers`` workers cannot all start on a cluster of ``resources``
    (``ray.cluster_resources()``), or None: Ray Train would wait for them without a word."""
    need = {"CPU": num_workers * cpus_per_worker, "GPU": float(num_workers if use_gpu else 0)}
    short = [f"{need[k]:g} {k}s, the cluster has {resources.get(k, 0.0):g}"
             for k in need if need[k] > resources.get(k, 0.0) + 1e-9]  # fmt: skip
    if not short:
        return None
    keys = "ray.num_workers x ray.cpus_per_worker" + (", ray.use_gpu" if use_gpu else "")
    return f"{num_workers} Ray Train worker(s) ({keys}) need " + "; ".join(short)


def train_task_distributed(
    cfg: Config,
    task: int,
    prev_adapter: str | Path | None,
    prepared: PreparedLike,
    out_dir: str | Path,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    storage_path: str | Path = "runs/ray",
    name: str | None = None,
    identity: str,
    address: str | None = None,
    poll_interval_s: float | None = None,
    log_path: str | Path | None = None,
    progress: bool = False,
    console: TextIO | None = None,
) -> DistributedResult:
    """Train task ``task`` on ``num_workers`` Ray Train workers; write ``out_dir/adapter...``.

    ``prev_adapter``: the adapter file after task ``task - 1`` (None for task 0). ``prepared``:
    the prepare stage's folder. Ray starts in-process unless ``address`` or ``RAY_ADDRESS``
    names a cluster (:func:`sdlora.ops.ray_session.ensure_ray`: Ray's own rule says which wins). A
    rerun with the same ``storage_path`` and ``name`` (default ``task{task}``) resumes from that
    run's last checkpoint (Ray Train V2) if the checkpoint carries ``identity``
    (:func:`sdlora.config.identity_key` of tasks 0..task); one of another identity is refused.
    ``poll_interval_s`` sets how often Ray Train's
    controller polls the workers (Ray propagates the variable).

    ``log_path``: where everything Ray prints goes (appended; None: the console, as Ray does by
    itself). ``progress``: draw the epochs on ``console`` (default stderr). A Ray instance
    started here is shut down before returning. Raises :class:`TaskInputError` when the
    workers cannot set the task up and :class:`TrainingFailed` when training fails for good.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if task < 0 or (task == 0) != (prev_adapter is None):
        raise ValueError("give prev_adapter for every task after the first, and only then")
    local_batch_size(cfg.train.batch_size, num_workers)  # fail before starting Ray
    prepared = open_prepared(prepared)
    prepared.task_classes(task)  # the task exists: fail before starting Ray
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in _error_files(out_dir):  # an earlier call's: this call's inputs may be fixed
        stale.unlink()
    weights = cfg.backbone.weights
    weights = None if weights in (None, "timm") else str(Path(weights).resolve())
    if poll_interval_s is not None:
        os.environ[POLL_ENV] = str(poll_interval_s)  # read when the controller starts
    storage = Path(storage_path).resolve()  # Ray 2.60 requires an absolute storage_path
    run_name = name or f"task{task}"
    workers_lock = storage / run_name / WORKERS_LOCK
    screen = console or sys.stderr
    wait_for_earlier_workers(workers_lock, task, lambda text: print(text, file=screen, flush=True))
    before = {p.name for p in (storage / run_name).glob("checkpoint_*") if p.is_dir()}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "weights": weights,
            "task": task,
            "identity": identity,
            "prev_adapter": None if prev_adapter is None else str(Path(prev_adapter).resolve()),
            "prepared": Prepared(prepared.folder.resolve(), prepared.manifest),
            "out_dir": str(out_dir),
            "progress": progress,
            "workers_lock": str(workers_lock),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    where = nullcontext(console or sys.stderr) if log_path is None else redirect_output(log_path)
    with where as shown:
        started = not ray.is_initialized()
        try:
            ensure_ray(address)
            have = ray.cluster_resources()
            short = check_workers_fit(have, num_workers, cpus_per_worker, use_gpu)
            if short and resolve_address(address).address == "local":  # nothing will be added
                raise TaskInputError(
                    f"{short}: they would wait forever. Lower ray.num_workers or "
                    "ray.cpus_per_worker (fractions such as 0.5 are fine), or name a cluster in "
                    "ray.address"
                )
            if short:  # a cluster may add nodes on demand: say why it waits, then wait
                print(f"warning: {short} now: Ray Train waits for more nodes", file=shown)
            relay = ProgressRelay(out_dir / PROGRESS, ConsoleProgress(progress, shown))
            with relay if progress else nullcontext():  # no thread polling a file never written
                result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            failed: BaseException | None = err
        else:
            failed = None
        finally:
            if started and ray.is_initialized():
                ray.shutdown()  # no Ray instance left behind for the next stage
    (out_dir / PROGRESS).unlink(missing_ok=True)
    _raise_input_error(out_dir, task, log_path)
    if failed is not None:
        see = f"Ray's log: {log_path}" if log_path is not None else "Ray's output above"
        raise TrainingFailed(
            f"task {task} failed on the Ray workers after {max_failures} retr"
            f"{'y' if max_failures == 1 else 'ies'} ({_first_line(failed)}). {see}"
        ) from failed
    if result.checkpoint is None:
        raise TrainingFailed(f"task {task}: Ray Train's run {result.path} reported no checkpoint")
    final = Path(result.checkpoint.path)
    kept = {final.name, *(Path(c.path).name for c, _ in result.best_checkpoints)}
    for folder in (storage / run_name).glob("checkpoint_*"):  # a kill's unregistered ones
        if folder.is_dir() and folder.name not in kept:
            shutil.rmtree(folder, ignore_errors=True)
    state = json.loads((final / STATE).read_text())
    if not state.get("finished"):
        raise TrainingFailed(f"task {task}: Ray Train's run {result.path} did not finish the task")
    shutil.copyfile(final / ADAPTER, out_dir / ADAPTER)  # the bytes the workers wrote
    epochs = list(state["epochs"])
    with atomic_path(out_dir / TRAIN_LOG) as tmp_log:
        tmp_log.write_text(json.dumps({"task": task, "epochs": epochs}, indent=1) + "\n")
    restored = final.name in before  # the result was there already: nothing ran in this call
    metrics = dict(result.metrics or {})
    return DistributedResult(
        adapter=out_dir / ADAPTER,
        metrics=metrics,
        epochs=epochs,
        checkpoint=final,
        run_path=str(result.path),
        start_epoch=len(epochs) if restored else int(metrics.get("start_epoch", 0)),
        restored=restored,
    )


def ray_learner(
    cfg: Config,
    work: str | Path,
    identity_of: Callable[[int], str],
    ray: RayConfig,
    log_path: str | Path | None = None,
) -> Learner:
    """A learner for :func:`sdlora.core.loop.run_sequence` that trains each task as a
    ``train@k`` stage does: a TorchTrainer of ``ray.num_workers`` workers from the previous
    task's adapter, the result loaded into the loop's model. Runs live under ``work``
    (``task_<t>/`` outputs, ``ray/`` Ray Train's folders, named ``task<t>``), checkpoints
    carry ``identity_of(t)``: a re-run restores the finished tasks and resumes a cut one.
    ``log_path``: where Ray's output goes (appended; None: the console)."""
    work = Path(work)

    def learn(model: SDLoRAViT, prepared: Prepared, task: int) -> list[dict[str, float]]:
        prev = None if task == 0 else work / f"task_{task - 1}" / ADAPTER
        out = work / f"task_{task}"
        result = train_task_distributed(
            cfg, task, prev, prepared, out, num_workers=ray.num_workers, use_gpu=ray.use_gpu,
            cpus_per_worker=ray.cpus_per_worker, max_failures=ray.max_failures,
            storage_path=work / "ray", name=f"task{task}", identity=identity_of(task),
            poll_interval_s=ray.poll_interval_s, log_path=log_path,
        )  # fmt: skip
        load_adapter(model, result.adapter)
        return result.epochs

    return learn


def _first_line(err: BaseException) -> str:
    """The worker's own error, in one line, from Ray's TrainingFailedError."""
    failures = getattr(err, "worker_failures", None) or {}
    inner = next(iter(failures.values()), None) if failures else None
    shown = inner if inner is not None else err
    cause = getattr(shown, "cause", None) or shown
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()


def _error_files(out_dir: Path) -> list[Path]:
    """The ranks' set-up and training-input error files in ``out_dir``."""
    return [
        p for pattern in (SETUP_ERROR, INPUT_ERROR) for p in out_dir.glob(pattern.format(rank="*"))
    ]


def _raise_input_error(out_dir: Path, task: int, log_path: str | Path | None) -> None:
    """Raise :class:`TaskInputError` with what the ranks wrote: the fault met in training if
    any (its retry stopped at set-up), else the set-up failure."""
    files = _error_files(out_dir)
    if not files:
        return
    errors = {p.name: json.loads(p.read_text()) for p in files}
    for p in files:
        p.unlink()
    met = sorted((e for n, e in errors.items() if n.startswith(".input")), key=lambda e: e["rank"])
    errs = met or sorted(errors.values(), key=lambda e: e["rank"])
    first = errs[0]
    ranks = ", ".join(str(e["rank"]) for e in errs)
    where = f"; the traceback is in {log_path}" if log_path is not None else ""
    what = "failed in training" if met else "could not be set up"
    raise TaskInputError(
        f"task {task} {what} on the Ray workers (rank {ranks}): {first['type']}: "
        f"{first['message']} (not retried: a retry would read the same inputs{where})"
    )
