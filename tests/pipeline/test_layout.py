"""sdlora.pipeline.layout: the task list, its YAML block, rewriting params.yaml, agreement with
dvc.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdlora.config import ConfigError, load_config, parse_config, read_yaml
from sdlora.pipeline.layout import (
    BACKBONE_DIR,
    CURVE_FILE,
    DATA_RECORD,
    EVAL_DIR,
    HEATMAP_FILE,
    MAGNITUDES_FILE,
    METRICS_FILE,
    PREPARED_DIR,
    REPORT_DIR,
    TASKS_COMMENT,
    VALIDATED,
    WEIGHTS_RECORD,
    count_tasks,
    plan_changes,
    plan_tasks,
    require_plan,
    task_output,
    task_prev,
    task_spans,
    task_split,
    tasks_block,
    write_tasks,
)
from sdlora.pipeline.prepare import num_tasks_of

REPO = Path(__file__).resolve().parents[2]


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
                         "lr": None, "label_offset": None, "classes": None}  # fmt: skip
    spans = [(0, ["a", "b"]), (2, ["c"]), (3, ["0", "1"])]
    named = plan_tasks(3, None, spans)
    assert [(e["label_offset"], e["classes"]) for e in named.values()] == spans
    assert (
        '"2": {split: data/prepared/task_02, prev: runs/pipeline/task_1, rank: null, epochs: '
        'null, lr: null, label_offset: 3, classes: ["0", "1"]}' in tasks_block(named)
    )
    assert parse_config(read_yaml(tasks_block(named))).tasks[2].classes == ["0", "1"]  # names


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
  '0': {split: data/prepared/task_00, prev: artifacts/backbone, label_offset: 0}
  '1': {split: data/prepared/task_01, prev: runs/pipeline/task_0, rank: 3, label_offset: 2}
final_task: runs/pipeline/task_1
mlflow: {experiment: x}   # after the block
"""


def _rewrite(tmp_path: Path, text: str, num_tasks: int) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    write_tasks(path, num_tasks)
    return path.read_text()


def _other_lines(text: str) -> list[str]:
    """The lines outside the tasks and final_task sections (and the generated comment)."""
    out, inside = [], False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            inside = line.startswith(("tasks:", "final_task:"))
        generated = line.lstrip("# ") in TASKS_COMMENT.splitlines()
        if not inside and not generated:
            out.append(line)
    return out


def test_rewriting_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    new = _rewrite(tmp_path, PARAMS, 4)
    assert _other_lines(new) == _other_lines(PARAMS)  # every other line and comment, in order
    assert new.index("tasks:") < new.index("final_task:") < new.index("mlflow:")  # in place
    assert new.count("# One prepare@<key> and train@<key>") == 1 and new.count("tasks:") == 1
    assert '  "0": {split: data/prepared/task_00, prev: artifacts/backbone, rank: null, ' in new
    raw = yaml.safe_load(new)
    assert list(raw["tasks"]) == ["0", "1", "2", "3"]  # str keys, as DVC's foreach needs
    assert raw["tasks"]["1"] == {"split": task_split(1), "prev": task_prev(1), "rank": 3,
                                 "epochs": None, "lr": None, "label_offset": 2,
                                 "classes": None}  # fmt: skip
    cfg = parse_config(read_yaml(new))
    assert cfg.final_task == task_output(3) and cfg.rank_for_task(1) == 3
    assert _rewrite(tmp_path, new, 4) == new  # a second rewrite changes nothing


def test_the_committed_params_round_trip(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text()
    n = len(load_config(REPO / "params.yaml").tasks or {})
    assert _rewrite(tmp_path, text, n) == text  # byte for byte
    more = _rewrite(tmp_path, text, n + 3)
    assert _other_lines(more) == _other_lines(text) and load_config(tmp_path / "params.yaml")
    assert _rewrite(tmp_path, more, n) == text  # grow, then shrink back: the same file


def test_a_file_dvc_rewrote_comes_back_with_its_override(tmp_path: Path) -> None:
    """`dvc exp run -S tasks.3.rank=4` rewrites params.yaml (ruamel, its own style)."""
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    text = (REPO / "params.yaml").read_text()
    edited = parse_yaml_for_update(text, "params.yaml")
    edited["tasks"]["3"]["rank"] = 4
    by_dvc = dumps_yaml(edited)
    assert by_dvc != text  # DVC writes nulls as nothing, single quotes, folded lines
    new = _rewrite(tmp_path, by_dvc, len(edited["tasks"]))
    cfg = load_config(REPO / "params.yaml")
    spans = task_spans(cfg, len(edited["tasks"]))
    block = tasks_block(plan_tasks(len(edited["tasks"]), {3: {"rank": 4}}, spans))
    assert new.endswith(block) and "task_2, rank: 4, epochs: null, lr: null, " in block
    assert new[: -len(block)] == by_dvc[: by_dvc.index("# One prepare@<key>")]  # DVC's lines


def test_rewriting_keeps_overrides_and_what_follows_the_section(tmp_path: Path) -> None:
    text = """\
seed: 1
tasks:
  "0": {split: a, prev: b, lr: 0.0005}   # slower start
  # the middle task
  "1": {split: a, prev: b, epochs: 3}
  "2":
    split: a
    prev: b
    rank: 7   # block style, as a hand edit may leave it

# MLflow: where runs go
mlflow: {experiment: x}
"""
    new = _rewrite(tmp_path, text, 4)
    cfg = parse_config(read_yaml(new))
    assert cfg.for_task(0).train.lr == 0.0005 and cfg.for_task(1).train.epochs == 3
    assert cfg.rank_for_task(2) == 7
    assert "slower start" not in new and "middle task" not in new  # the section is generated
    assert new.startswith("seed: 1\n# One prepare@<key> and train@<key> stage per task")
    assert new.endswith(f"final_task: {task_output(3)}   # what evaluate reads: the last task's "
                        "output\n\n# MLflow: where runs go\nmlflow: {experiment: x}\n")  # fmt: skip
    fewer = _rewrite(tmp_path, new, 1)
    assert fewer.endswith("\n\n# MLflow: where runs go\nmlflow: {experiment: x}\n")
    assert sorted(parse_config(read_yaml(fewer)).tasks or {}) == [0]
    moved = "final_task: elsewhere\n" + text  # a final_task away from tasks: replaced
    assert _rewrite(tmp_path, moved, 4) == new


def test_missing_sections_are_appended_with_their_comment(tmp_path: Path) -> None:
    new = _rewrite(tmp_path, "seed: 2   # no tasks yet", 2)
    assert new.startswith("seed: 2   # no tasks yet\n\n# One prepare@<key> and train@<key>")
    spans = task_spans(parse_config({}), 2)  # the defaults: digits, 2 classes a task
    assert new.endswith(tasks_block(plan_tasks(2, None, spans)))
    assert _rewrite(tmp_path, "", 2) == tasks_block(plan_tasks(2, None, spans))  # an empty file
    block = tasks_block(plan_tasks(1))
    assert (
        block.startswith("# One prepare@<key> and train@<key> stage per") and "\ntasks:\n" in block
    )
    assert block.endswith(f"final_task: {task_output(0)}   # what evaluate reads: the last task's "
                          "output\n")  # fmt: skip


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


def test_write_tasks_names_each_tasks_classes_and_refuses_a_stale_section(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.replace("  increment: 2\n", "  tasks: [[3, 1], [9, 0, 5]]\n"))
    plan = write_tasks(path, 2)
    assert [(e["label_offset"], e["classes"]) for e in plan.values()] == [
        (0, ["3", "1"]), (2, ["9", "0", "5"])]  # fmt: skip
    written = path.read_text()
    assert require_plan(load_config(path))[1].classes == ["9", "0", "5"]
    path.write_text(written.replace("[9, 0, 5]]", "[9, 0, 5], [7]]"))  # data.tasks grew
    stale = r"tasks: params\.yaml lists 2 task\(s\) but data\.tasks lists 3; run `python -m"
    with pytest.raises(ConfigError, match=stale):
        require_plan(load_config(path))
    path.write_text(written.replace("[9, 0, 5]]", "[9, 5, 0]]"))  # the order within a task
    said = (r"tasks.1.classes = \['9', '0', '5'\] but data.tasks\[1\] = \['9', '5', '0'\]; "
            r"run `python -m sdlora tasks --write` \(it says which")  # fmt: skip
    with pytest.raises(ConfigError, match=said):
        require_plan(load_config(path))


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ([["a"], ["b"]], [["a"], ["b"], ["c"]],
         ["task 2 added: its prepare@ and train@ stages run; tasks 0 .. 1 stay as they are"]),
        ([["a"], ["b"], ["c"]], [["a"], ["c"]],
         ["task 1's classes or label offset change: prepare@1, train@1 re-run; task 0 stays "
          "as it is", "task 2 removed: its stages go (their folders stay on disk, "
          "unused)"]),
        ([["a", "x"], ["b"], ["c"]], [["a"], ["b"], ["c"]],
         ["task 0's classes or label offset change: prepare@0 .. prepare@2, train@0 .. train@2 "
          "re-run"]),
        ([["a"], ["b"]], [["a"], ["b"]], ["no stage changes"]),
    ],
)  # fmt: skip
def test_plan_changes_says_what_re_runs(
    old: list[list[str]], new: list[list[str]], said: list[str]
) -> None:
    def plan(tasks: list[list[str]]) -> dict:
        cfg = parse_config({"data": {"tasks": tasks}})
        return plan_tasks(len(tasks), None, task_spans(cfg, len(tasks)))

    lines = plan_changes(plan(old), plan(new))
    assert lines[: len(said)] == said
    assert lines[len(said):] == ([] if said == ["no stage changes"] else
                                 ["evaluate and report re-run; a new registered model version is "
                                  "gated"])  # fmt: skip


def test_dvc_yaml_uses_the_plan_paths() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    s = stages["stages"]
    assert s["validate"]["outs"] == [VALIDATED, WEIGHTS_RECORD, DATA_RECORD]
    prepare = s["prepare"]
    assert prepare["foreach"] == "${tasks}" and VALIDATED in prepare["do"]["deps"]
    assert WEIGHTS_RECORD in s["pretrain"]["deps"]
    assert prepare["do"]["outs"] == ["${item.split}"]
    assert {"tasks.${key}.label_offset", "tasks.${key}.classes"} <= set(prepare["do"]["params"])
    assert s["pretrain"]["outs"] == [BACKBONE_DIR]
    train = s["train"]
    assert train["foreach"] == "${tasks}"
    assert train["do"]["outs"] == [task_output(0).replace("task_0", "task_${key}")]
    assert {"${item.prev}", "${item.split}"} <= set(train["do"]["deps"])
    assert "tasks.${key}" in train["do"]["params"]
    assert s["evaluate"]["outs"] == [EVAL_DIR] and "${final_task}" in s["evaluate"]["deps"]
    assert s["report"]["outs"] == [REPORT_DIR]
    assert [next(iter(m)) for m in s["evaluate"]["metrics"]] == [METRICS_FILE]
    plotted = [CURVE_FILE, HEATMAP_FILE, MAGNITUDES_FILE]
    assert [next(iter(p)) for p in s["evaluate"]["plots"]] == plotted
    assert METRICS_FILE in s["report"]["deps"]
    cmd = {}  # each stage's options: the paths its entry script is given
    for name, stage in s.items():
        args = stage.get("cmd", stage.get("do", {}).get("cmd", "")).split()
        assert args[:2] == ["python", f"pipelines/{name}.py"], args
        cmd[name] = dict(zip(args[2::2], args[3::2], strict=True))
    want = {"--params": "params.yaml", "--out": VALIDATED, "--weights": WEIGHTS_RECORD,
            "--data": DATA_RECORD}  # fmt: skip
    assert cmd["validate"] == want
    assert cmd["prepare"] == {
        "--params": "params.yaml",
        "--task": "${key}",
        "--out": "${item.split}",
    }
    assert cmd["pretrain"] == {"--params": "params.yaml", "--out": BACKBONE_DIR}
    assert cmd["train"] == {
        "--params": "params.yaml", "--task": "${key}", "--prepared": PREPARED_DIR,
        "--backbone": BACKBONE_DIR, "--prev": "${item.prev}", "--out": train["do"]["outs"][0],
    }  # fmt: skip
    assert cmd["evaluate"] == {"--params": "params.yaml", "--record": "${final_task}",
                               "--out": EVAL_DIR, "--metrics": METRICS_FILE,
                               "--curve": CURVE_FILE, "--heatmap": HEATMAP_FILE,
                               "--magnitudes": MAGNITUDES_FILE}  # fmt: skip
    assert cmd["report"] == {
        "--params": "params.yaml", "--eval": EVAL_DIR, "--metrics": METRICS_FILE,
        "--record": "${final_task}",
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
    require_plan(cfg)  # every entry's classes and label offset as data.* cuts them


def test_per_task_stages_depend_on_the_data_record_not_on_data_tasks() -> None:
    """prepare@k and train@k depend on validate's record of every data key but data.tasks and
    track only their own task's entry: a task appended to data.tasks re-runs no earlier stage."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert DATA_RECORD in stages["validate"]["outs"]
    for name in ("prepare", "train"):
        do = stages[name]["do"]
        assert DATA_RECORD in do["deps"]
        assert not [p for p in do["params"] if isinstance(p, str) and p.startswith("data")]
        assert any(str(p).startswith("tasks.${key}") for p in do["params"])


def test_read_inputs_refuses_weights_that_changed_since_they_were_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pretrain stage records the file's SHA-256; every stage that reads the inputs checks
    the file still has it (damage in the data, or a file replaced under the same path)."""
    import json
    from types import SimpleNamespace

    from sdlora.files import file_sha256
    from sdlora.pipeline.layout import StageError, read_inputs

    monkeypatch.chdir(tmp_path)
    weights = Path("w.safetensors")
    weights.write_bytes(b"weights " * 100)
    backbone = Path("backbone")
    backbone.mkdir()
    record = {"weights": str(weights), "sha256": file_sha256(weights)}
    (backbone / "backbone.json").write_text(json.dumps(record))
    prepared = SimpleNamespace(manifest={"task_hashes": ["sha256:a", "sha256:b"]})
    inputs = read_inputs(prepared, backbone)
    assert (inputs.task_hashes, inputs.weights_sha256) == (
        ("sha256:a", "sha256:b"),
        record["sha256"],
    )
    raw = bytearray(weights.read_bytes())
    raw[300:304] = b"\0\0\0\0"  # same size: only the content tells
    weights.write_bytes(bytes(raw))
    with pytest.raises(StageError, match=r"w\.safetensors is not the file the pretrain stage"):
        read_inputs(prepared, backbone)
    weights.unlink()
    with pytest.raises(StageError, match="not found"):
        read_inputs(prepared, backbone)


def test_records_without_what_readers_use_stop_with_the_file_and_the_key(tmp_path: Path) -> None:
    """record.json and backbone.json as another stage wrote them, or one StageError naming the
    file and what is missing (not a KeyError deep inside a report)."""
    import json

    from sdlora.pipeline.layout import StageError, read_backbone_record, read_record

    entry = {"task": 0, "num_classes": 2, "rank": 4, "accuracy": [50.0], "counts": [10],
             "epochs": [], "storage": {}}  # fmt: skip
    good = {"key": "k", "tasks": [entry]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(good))
    assert read_record(tmp_path) == good
    for doc, pattern in [
        ({}, "has no 'key', 'tasks'"),
        ({"key": "k", "tasks": {}}, "'tasks' is a dict"),
        ({"key": "k", "tasks": [{**entry, "accuracy": None}]}, "'accuracy' is not a list"),
        ({"key": "k", "tasks": [{k: v for k, v in entry.items() if k != "counts"}]},
         "task 0 has no 'counts'"),
        ({"key": "k", "tasks": [{**entry, "accuracy": [True]}]}, "not a list of 1 numbers"),
        ({"key": "k", "tasks": [entry, entry]}, "entry 1 is the record of task 0"),
        ([good], "a JSON list"),
    ]:  # fmt: skip
        path.write_text(json.dumps(doc))
        with pytest.raises(StageError, match=rf"record\.json.*{pattern}"):
            read_record(tmp_path)
    (tmp_path / "backbone.json").write_text(json.dumps({"name": "vit", "sha256": None}))
    with pytest.raises(StageError, match=r"backbone\.json has no 'weights'"):
        read_backbone_record(tmp_path)


def test_an_earlier_versions_comment_is_replaced_not_kept(tmp_path: Path) -> None:
    old = (
        "seed: 1\n# One train@<key> stage per task, generated from data.* by `python -m sdlora "
        "tasks --write`, which\n# keeps per-task overrides (rank, epochs, lr: a change re-runs "
        "from that task on).\ntasks:\n  '0': {split: a, prev: b}\n"
    )
    new = _rewrite(tmp_path, old, 1)
    assert "# One train@<key>" not in new and new.count("# One prepare@<key>") == 1
    assert new.startswith("seed: 1\n# One prepare@<key>")


def test_a_task_prepared_for_another_task_list_is_refused(tmp_path: Path) -> None:
    """open_tasks: each prepared task must be the one the tasks section names (a folder left
    by an earlier task list, or prepared by hand, is never trained on)."""
    from sdlora.data.prepare import open_tasks, prepare
    from sdlora.data.source import DataError

    def config(tasks: list[list[str]]) -> object:
        cfg = parse_config({"data": {"dataset": "digits", "tasks": tasks}})
        plan = plan_tasks(len(tasks), None, task_spans(cfg, len(tasks)))
        return parse_config({"data": {"dataset": "digits", "tasks": tasks}, "tasks": plan,
                             "final_task": task_output(len(tasks) - 1)})  # fmt: skip

    prepare(config([["1", "2"], ["3"]]).data, seed=0, out=tmp_path / "p")
    assert open_tasks(config([["1", "2"], ["3"]]), 2, tmp_path / "p").num_tasks == 2
    assert open_tasks(config([["1", "2"], ["3"], ["4"]]), 2, tmp_path / "p").num_tasks == 2
    said = (
        r"task_01/task.json: task 1 was prepared with labels from 2 and classes \['3'\], not "
        r"as tasks.1 says \(labels from 2, classes \['4'\]\); run `dvc repro prepare@1`"
    )
    with pytest.raises(DataError, match=said):
        open_tasks(config([["1", "2"], ["4"]]), 2, tmp_path / "p")
    with pytest.raises(DataError, match=r"task_00/task.json: .* classes \['1'\]\); run `dvc"):
        open_tasks(config([["1"], ["3"]]), 2, tmp_path / "p")
