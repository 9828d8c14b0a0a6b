"""``reproduce --smoke`` for every preset: the full run's code path on generated data, on CPU.

Each smoke is two Ray Train tasks, about 40 CPU-seconds whatever it trains: the fourteen took a
fifth of the suite's time (README, Development). The suite (``make test``) runs :data:`IN_SUITE`,
one preset of each flavour, so that every developer's run goes through ``reproduce --smoke`` end
to end; the others carry the ``smoke`` mark, and CI runs every preset's (``make smoke``, after
``make test``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from sdlora.cli import main
from sdlora.reproduce.presets import all_presets, load_preset
from sdlora.reproduce.smoke import SMOKE_TASKS

ROOT = Path(__file__).resolve().parents[2]


def _smokes() -> list[tuple[str, tuple[str, ...]]]:
    """Every preset once, as CI must run them; a preset of several variants (the paper's) runs
    one of them, taken in turn, so that each variant runs on several benchmarks (the suite's
    time: a variant is a params change on the same path)."""
    out, turn = [], 0
    for preset in all_presets():
        only: tuple[str, ...] = ()
        if len(preset.variants) > 1:
            only = (list(preset.variants)[turn % len(preset.variants)],)
            turn += 1
        out.append((preset.name, only))
    return out


SMOKES = _smokes()
# the suite's smokes: one per flavour, on two different readers (image folders, CUB's own layout)
IN_SUITE = ("imagenet-r-10/paper", "cub200-10/code")


def _param(name: str, only: tuple[str, ...]) -> object:
    marks = (pytest.mark.slow,) if name in IN_SUITE else (pytest.mark.slow, pytest.mark.smoke)
    return pytest.param(name, only, marks=marks, id=f"{name}:{','.join(only) or 'all'}")


def test_the_suites_smokes_are_presets_of_both_flavours() -> None:
    # a renamed preset would otherwise drop out of the suite without a word
    assert set(IN_SUITE) <= {name for name, _ in SMOKES}
    assert sorted(load_preset(name).flavour for name in IN_SUITE) == ["code", "paper"]


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml as shipped but tracking into a fresh SQLite store, without progress bars."""
    folder = tmp_path_factory.mktemp("smoke")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["progress"] = False
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.mark.parametrize(("name", "only"), [_param(n, o) for n, o in SMOKES])
def test_smoke_run_exits_0_with_its_table_and_runs(
    name: str,
    only: tuple[str, ...],
    params: Path,
    ray_session: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "work"
    chosen = [a for v in only for a in ("--variant", v)]
    argv = ["reproduce", name, "--smoke", "--params", str(params), "--out", str(out), *chosen]
    assert main(argv) == 0
    preset = load_preset(name)
    labels = list(only or preset.variants)
    tag = f"{preset.benchmark}-{preset.flavour}-smoke"
    table = (out / f"{tag}.md").read_text()
    assert "SMOKE RUN" in table
    rows = json.loads((out / f"{tag}.json").read_text())["rows"]
    assert [r["label"] for r in rows] == labels
    # the preset's reader read the stand-in: its dataset, its split, two tasks of its size
    task = json.loads((out / "prepared" / f"seed{preset.seeds[0]}" / "task_00" /
                       "task.json").read_text())  # fmt: skip
    assert task["dataset"] == preset.params["data"]["dataset"]
    per_task = preset.params["data"]["init_cls"]
    for row in rows:
        run = json.loads((out / "runs" / f"{row['label']}-s{preset.seeds[0]}.json").read_text())
        assert len(run["tasks"]) == SMOKE_TASKS
        assert [len(t["accuracy"]) for t in run["tasks"]] == [1, 2]
        assert [t["num_classes"] for t in run["tasks"]] == [per_task] * SMOKE_TASKS
        # Ray's output goes to the run's log (empty here: the tests' Ray keeps workers' output)
        assert (out / "logs" / f"{row['label']}-s{preset.seeds[0]}.log").is_file()
    # each run and the table are in MLflow, tagged with the preset
    mlflow.set_tracking_uri(yaml.safe_load(params.read_text())["mlflow"]["tracking_uri"])
    found = mlflow.search_runs(
        experiment_names=["sdlora"], filter_string=f"tags.`sdlora.reproduce` = '{name}'"
    )
    assert len(found) == len(labels) + 1
    assert "reproduce: " in capsys.readouterr().out
