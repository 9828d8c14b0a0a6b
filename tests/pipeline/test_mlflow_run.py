"""A run's name and description say what tells it apart (issue 20): the DVC experiment's name,
the method, the tasks and the params changed from the baseline commit, as `dvc params diff`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.config import load_config
from sdlora.pipeline.mlflow_run import find_baseline, run_description, run_name


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


@pytest.fixture
def committed(write_params: Callable[..., Path]) -> Callable[[str], object]:
    """A git checkout whose HEAD holds a 5-task digits params file; returns ``edit(text)``:
    the params file with ``text`` instead, loaded."""
    write_params("train: {lr: 0.001}\n", tasks=5)
    _git("init", "-q")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x", "--allow-empty")
    _git("add", "params.yaml")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")

    def edit(text: str):
        write_params(text, tasks=5)
        return load_config("params.yaml")

    return edit


def test_a_run_is_named_by_what_changed_from_the_commit(
    committed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    cfg = committed("train: {lr: 0.001}\n")
    same = find_baseline(cfg)
    assert same.changed == {} and same.commit
    assert run_name(cfg, "0123456789abcdef", same) == "sdlora 5t digits s0 01234567"
    assert f"The params at commit `{same.commit}`, unchanged." in run_description(cfg, "k", same)

    cfg = committed("train: {lr: 0.01}\nmodel: {rank: 4}\nray: {max_failures: 0}\n")  # runtime
    changed = find_baseline(cfg)
    assert changed.changed == {"model.rank": ("10", "4"), "train.lr": ("0.001", "0.01")}
    assert run_name(cfg, "0123456789abcdef", changed) == "sdlora 5t rank=4 lr=0.01 01234567"
    text = run_description(cfg, "0123456789abcdef", changed)
    assert "- `train.lr`: 0.001 → 0.01" in text and "Sequence key `0123456789abcdef`" in text

    tasks = "[['0', '1', '2', '3'], ['4', '5'], ['6', '7'], ['8'], ['9']]"
    cfg = committed(f"train: {{lr: 0.001}}\ndata: {{tasks: {tasks}}}\n")
    listed = find_baseline(cfg)  # a long value is clipped; entries null on one side are no change
    assert list(listed.changed) == ["data.tasks"]
    assert run_name(cfg, "0123456789abcdef", listed) == 'sdlora 5t tasks=[["0", "1", "2"… 01234567'

    monkeypatch.setenv("DVC_EXP_NAME", "sober-cusp")  # as `dvc exp run` sets it
    cfg = committed("train: {lr: 0.01}\npretrain: {lr: 0.5}\nseed: 3\ndata: {split_seed: 9}\n")
    named = find_baseline(cfg)
    name = run_name(cfg, "0123456789abcdef", named)
    assert name == "sober-cusp sdlora 5t split_seed=9 pretrain.lr=0.5 seed=3 … 01234567"
    assert "DVC experiment `sober-cusp`." in run_description(cfg, "k", named)


def test_without_git_the_name_falls_back_to_dataset_and_seed(
    write_params: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    write_params("seed: 2\n", tasks=5)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(Path.cwd().parent))  # no checkout above
    cfg = load_config("params.yaml")
    baseline = find_baseline(cfg)
    assert baseline.commit is None and baseline.changed == {}
    assert run_name(cfg, "fedcba9876543210", baseline) == "sdlora 5t digits s2 fedcba98"
