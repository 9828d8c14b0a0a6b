"""``reproduce --smoke`` for the paper flavour's presets, one variant each in turn (a file of its
own so that the suite's two processes share the smoke runs; test_smoke.py holds the check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_smoke import PAPER, check_smoke, ids


@pytest.mark.parametrize(("name", "only"), PAPER, ids=ids(PAPER))
def test_smoke_run_exits_0_with_its_table_and_runs(
    name: str,
    only: tuple[str, ...],
    smoke_params: Path,
    ray_session: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    check_smoke(name, only, smoke_params, tmp_path, capsys)
