"""Epoch progress: a line per epoch off a terminal, a live bar on one, relayed through a file."""

from __future__ import annotations

import io
from pathlib import Path

from sdlora.ops.console import FileProgress, ProgressRelay
from sdlora.progress import ConsoleProgress


def _epoch(progress, desc: str = "task 1 epoch 2/3", steps: int = 3) -> None:
    bar = progress.epoch(desc, steps)
    for i in range(1, steps + 1):
        bar.update(i, 1.0 / i, 64 * i, 0.5 * i)  # 128 images/s throughout
    bar.close()


def test_off_a_terminal_each_epoch_is_one_line() -> None:
    out = io.StringIO()
    _epoch(ConsoleProgress(stream=out))
    assert out.getvalue() == "task 1 epoch 2/3: loss 0.3333, 128 images/s, 1.5 s\n"


def test_on_a_terminal_the_bar_shows_loss_and_images_per_second_then_goes() -> None:
    out = io.StringIO()
    _epoch(ConsoleProgress(stream=out, live=True))
    text = out.getvalue()
    assert "2/3" in text and "loss 0.5000, 128 images/s" in text
    assert text.endswith("\r")  # transient: the line is cleared at the end
    assert "\n" not in text


def test_disabled_draws_nothing() -> None:
    out = io.StringIO()
    _epoch(ConsoleProgress(enabled=False, stream=out, live=True))
    _epoch(ConsoleProgress(enabled=False, stream=out))
    assert out.getvalue() == ""


def test_the_relay_draws_what_a_worker_wrote(tmp_path: Path) -> None:
    """What rank 0 writes through FileProgress reaches the console as if drawn in-process."""
    path = tmp_path / "progress.jsonl"
    out, direct = io.StringIO(), io.StringIO()
    with ProgressRelay(path, ConsoleProgress(stream=out), poll_s=0.01):
        _epoch(FileProgress(path), "task 0 epoch 1/2")
        _epoch(FileProgress(path), "task 0 epoch 2/2")
    _epoch(ConsoleProgress(stream=direct), "task 0 epoch 1/2")
    _epoch(ConsoleProgress(stream=direct), "task 0 epoch 2/2")
    assert out.getvalue() == direct.getvalue()
    assert out.getvalue().count("\n") == 2


def test_the_relay_closes_an_epoch_a_dead_worker_left_open(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    out = io.StringIO()
    with ProgressRelay(path, ConsoleProgress(stream=out), poll_s=0.01):
        bar = FileProgress(path).epoch("task 0 epoch 1/2", 4)
        bar.update(1, 2.0, 8, 1.0)  # the worker dies here; its restart begins the epoch again
        _epoch(FileProgress(path), "task 0 epoch 1/2", steps=4)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("task 0 epoch 1/2: loss 0.2500")


def test_a_restart_within_the_stage_is_said_on_the_console(tmp_path: Path) -> None:
    """A resume as the stage's first event is the stage's own re-run (it says so itself); a
    resume after other events is Ray Train restarting the workers: one line says it."""
    path = tmp_path / "progress.jsonl"
    out = io.StringIO()
    with ProgressRelay(path, ConsoleProgress(stream=out), poll_s=0.01):
        FileProgress(path).write({"event": "resume", "start_epoch": 1})  # a re-run stage
        _epoch(FileProgress(path), "task 0 epoch 2/3")
        FileProgress(path).epoch("task 0 epoch 3/3", 3).update(1, 2.0, 8, 1.0)  # dies here
        FileProgress(path).write({"event": "resume", "start_epoch": 2})
        _epoch(FileProgress(path), "task 0 epoch 3/3")
    lines = out.getvalue().splitlines()
    restart = "Ray Train restarted the workers after a failure: resuming at epoch 3 from the last"
    assert [ln for ln in lines if ln.startswith("Ray Train")] == [f"{restart} checkpoint"]
    assert len(lines) == 4  # epoch 2, the cut epoch 3 closed, the restart, epoch 3
