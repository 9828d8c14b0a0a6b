"""sdlora.plan: the task list, its YAML block, rewriting params.yaml, agreement with dvc.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdlora.config import load_config, parse_config, read_yaml
from sdlora.plan import (
    BACKBONE_DIR,
    EVAL_DIR,
    PREPARED_DIR,
    REPORT_DIR,
    count_tasks,
    plan_tasks,
    replace_tasks_block,
    task_output,
    task_prev,
    task_split,
    tasks_block,
    write_tasks,
)
from sdlora.stages.records import num_tasks_of

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("classes", "init", "inc", "tasks"),
    [(40, 8, 8, 5), (10, 2, 2, 5), (10, 4, 3, 3), (100, 10, 10, 10), (7, 7, 3, 1), (9, 4, 4, 3)],
)
def test_count_tasks(classes: int, init: int, inc: int, tasks: int) -> None:
    assert count_tasks(classes, init, inc) == tasks


def test_count_tasks_refuses_impossible_splits() -> None:
    with pytest.raises(ValueError, match="do not split 5 classes"):
        count_tasks(5, 6, 1)


def test_plan_chains_the_tasks_and_keeps_overrides() -> None:
    plan = plan_tasks(3, {1: {"rank": 4, "bogus": 1}, 7: {"rank": 2}})
    assert list(plan) == ["0", "1", "2"]
    assert plan["0"]["prev"] == BACKBONE_DIR and plan["0"]["split"] == f"{PREPARED_DIR}/task_00"
    assert plan["2"]["prev"] == task_output(1) == "runs/pipeline/task_1"
    assert plan["1"] == {"split": task_split(1), "prev": task_prev(1), "rank": 4, "epochs": None,
                         "lr": None}  # fmt: skip


def test_block_is_a_valid_config_section() -> None:
    block = tasks_block(plan_tasks(3, {2: {"epochs": 7, "lr": 0.5}}))
    cfg = parse_config(read_yaml(block))
    assert sorted(cfg.tasks) == [0, 1, 2] and cfg.final_task == task_output(2)
    assert cfg.for_task(2).train.epochs == 7 and cfg.for_task(2).train.lr == 0.5
    assert cfg.for_task(1).train == cfg.train


PARAMS = """\
seed: 1   # keep me
data:
  dataset: digits
  init_cls: 2
  increment: 2
tasks:
  '0': {split: data/prepared/task_00, prev: artifacts/backbone}
  '1': {split: data/prepared/task_01, prev: runs/pipeline/task_0, rank: 3}
final_task: runs/pipeline/task_1
mlflow: {experiment: x}   # after the block
"""


def test_replace_keeps_everything_else() -> None:
    new = replace_tasks_block(PARAMS, tasks_block(plan_tasks(2)))
    assert "seed: 1   # keep me" in new and "mlflow: {experiment: x}   # after the block" in new
    assert new.index("tasks:") < new.index("mlflow:")  # the block stays where it was
    again = replace_tasks_block(new, tasks_block(plan_tasks(4)))
    assert again.count("tasks:") == 1 and again.count("# One train@<key>") == 1
    assert parse_config(read_yaml(again)).final_task == task_output(3)
    appended = replace_tasks_block("seed: 2", tasks_block(plan_tasks(1)))
    assert appended.startswith("seed: 2\n") and read_yaml(appended)["final_task"] == task_output(0)


def test_write_tasks_follows_data_and_keeps_overrides(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    cfg = load_config(path)
    assert num_tasks_of(cfg) == 5  # digits: 10 classes in tasks of 2
    plan = write_tasks(path, num_tasks_of(cfg))
    cfg = load_config(path)
    assert sorted(cfg.tasks) == list(range(5)) and cfg.rank_for_task(1) == 3
    assert plan["1"]["rank"] == 3 and cfg.final_task == task_output(4)
    write_tasks(path, 1)  # fewer tasks: entries (and overrides) of removed tasks go
    assert sorted(load_config(path).tasks) == [0]


def test_dvc_yaml_uses_the_plan_paths() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    s = stages["stages"]
    assert s["prepare"]["outs"] == [PREPARED_DIR]
    assert s["pretrain"]["outs"] == [BACKBONE_DIR]
    train = s["train"]
    assert train["foreach"] == "${tasks}"
    assert train["do"]["outs"] == [task_output(0).replace("task_0", "task_${key}")]
    assert {"${item.prev}", "${item.split}"} <= set(train["do"]["deps"])
    assert "tasks.${key}" in train["do"]["params"]
    assert s["evaluate"]["outs"] == [EVAL_DIR] and "${final_task}" in s["evaluate"]["deps"]
    assert s["report"]["outs"] == [REPORT_DIR]
    assert stages["metrics"] == [f"{EVAL_DIR}/metrics.json"]
    cmd = {}  # each stage's options: the paths its entry script is given
    for name, stage in s.items():
        args = stage.get("cmd", stage.get("do", {}).get("cmd", "")).split()
        assert args[:2] == ["python", f"pipelines/{name}.py"], args
        cmd[name] = dict(zip(args[2::2], args[3::2], strict=True))
    assert cmd["prepare"] == {"--params": "params.yaml", "--out": PREPARED_DIR}
    assert cmd["pretrain"] == {"--params": "params.yaml", "--out": BACKBONE_DIR}
    assert cmd["train"] == {
        "--params": "params.yaml", "--task": "${key}", "--prepared": PREPARED_DIR,
        "--backbone": BACKBONE_DIR, "--prev": "${item.prev}", "--out": train["do"]["outs"][0],
    }  # fmt: skip
    assert cmd["evaluate"] == {"--params": "params.yaml", "--record": "${final_task}",
                               "--out": EVAL_DIR}  # fmt: skip
    assert cmd["report"] == {
        "--params": "params.yaml", "--eval": EVAL_DIR, "--record": "${final_task}",
        "--prepared": PREPARED_DIR, "--backbone": BACKBONE_DIR, "--out": REPORT_DIR,
    }  # fmt: skip
    for stage in s.values():  # every code dependency exists
        deps = stage.get("deps") or stage["do"]["deps"]
        for dep in deps:
            if dep.startswith(("sdlora", "pipelines")):
                assert (REPO / dep).exists(), dep


def test_committed_params_list_one_stage_per_task() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.tasks is not None and len(cfg.tasks) == num_tasks_of(cfg)
