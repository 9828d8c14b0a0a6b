"""params.yaml loading and validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import ConfigError, load_config, parse_config
from sdlora.pipeline.layout import require_plan

REPO = Path(__file__).resolve().parents[1]


def _entry(k: int) -> dict:
    from sdlora.pipeline.layout import task_prev, task_split

    return {"split": task_split(k), "prev": task_prev(k)}


def test_repository_params_are_valid() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.model.method == "sdlora" and cfg.data.dataset == "glyphs"


def test_defaults_follow_the_spec() -> None:
    cfg = parse_config({})
    assert cfg.model.magnitude_scope == "task" and cfg.model.compat == "paper"
    assert cfg.model.magnitude_init == 1.0 and cfg.model.targets == ["q", "v"]
    assert cfg.train.optimizer == "sgd" and cfg.train.momentum == 0.9


def test_task_overrides_apply_to_their_task_only() -> None:
    cfg = parse_config(
        {
            "model": {"rank": 8, "rank_schedule": [[0, 8], [2, 4]]},
            "train": {"epochs": 3, "lr": 0.1},
            "tasks": {0: _entry(0), 1: {**_entry(1), "rank": 2, "epochs": 9}, 2: _entry(2)},
            "final_task": "runs/pipeline/task_2",
        }
    )
    assert [cfg.rank_for_task(t) for t in range(3)] == [8, 2, 4]
    assert cfg.for_task(1).train.epochs == 9 and cfg.for_task(1).train.lr == 0.1
    assert cfg.for_task(0).train.epochs == 3 and cfg.for_task(7) is cfg
    with pytest.raises(ConfigError, match=r"tasks: params.yaml lists 3 task\(s\) but x has 5"):
        cfg.check_num_tasks(5, "x")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": {"rnak": 4}}, "model.rnak: unknown key"),
        ({"model": {"rank": 0}}, "model.rank = 0: Input should be greater than or equal to 1"),
        ({"model": {"rank": "ten"}}, "model.rank = 'ten': Input should be a valid integer"),
        ({"train": {"lr": -1}}, "train.lr = -1: Input should be greater than 0"),
        ({"model": {"magnitude_scope": "block"}}, "model.magnitude_scope = 'block': Input should"),
        ({"model": {"kd_tau": -0.1}}, "model.kd_tau = -0.1: Input should be greater than or equal"),
        ({"model": {"kd_fold": "exact"}}, "model.kd_fold = 'exact': Input should be 'scaled'"),
        ({"data": {"init_cls": 11}}, "data.init_cls = 11 but dataset 'digits' has only 10"),
        ({"device": "gpu"}, "device = 'gpu': must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
        ({"model": {"rank_schedule": [[1, 10]]}}, "must start with an entry for task 0"),
        ({"model": {"rank_schedule": [[0, 10], [0, 8]]}}, "strictly increasing"),
        ({"model": {"targets": ["q", "q"]}}, "model.targets"),
        ({"data": {"dataset": "cifar100"}}, "data.root is required for dataset 'cifar100'"),
        ({"data": {"dataset": "imagenet-r", "root": ""}}, "data.root = '': must be a folder"),
        (
            {"data": {"dataset": "cifar100", "root": "/d", "init_cls": 101}},
            "data.init_cls = 101 but dataset 'cifar100' has only 100 classes",
        ),
        ({"data": {"dataset": "mnist"}}, "data.dataset = 'mnist': Input should be 'digits'"),
        ({"data": {"domains": []}}, "data.domains = []: must name at least one domain"),
        ({"data": {"domains": ["real", "real"]}}, "data.domains = ['real', 'real']: must not"),
        ({"data": {"row_group_size": 0}}, "data.row_group_size = 0: Input should be greater"),
        ({"ray": {"num_workers": 0}}, "ray.num_workers = 0: Input should be greater"),
        ({"ray": {"address": " "}}, "ray.address = ' ': must be null, 'auto', 'host:port'"),
        ({"ray": {"cpus_per_worker": 0}}, "ray.cpus_per_worker = 0: Input should be greater"),
        ({"mlflow": {"experiment": ""}}, "mlflow.experiment = '': String should have at least"),
        ({"tasks": {1: _entry(1)}, "final_task": "runs/pipeline/task_1"}, 'keys "0" .. "0"'),
        ({"tasks": {0: {**_entry(0), "rnak": 3}}}, "tasks.0.rnak: unknown key"),
        ({"tasks": {0: {**_entry(0), "rank": 0}}}, "tasks.0.rank = 0: Input should be greater"),
    ],
)
def test_bad_values_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "params.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("params.yaml: invalid configuration")


def test_rank_schedule_gives_each_task_its_rank() -> None:
    model = parse_config({"model": {"rank_schedule": [[0, 10], [4, 8], [8, 6]]}}).model
    assert [model.rank_for_task(t) for t in range(10)] == [10] * 4 + [8] * 4 + [6] * 2
    assert parse_config({"model": {"rank": 7}}).model.rank_for_task(99) == 7


def test_overrides_and_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.5\n")
    assert load_config(path, {"train.epochs": 2, "model.rank": 3}).train.epochs == 2
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_on_disk_datasets_keep_embedded_defaults() -> None:
    data = parse_config({"data": {"dataset": "domainnet", "root": "/data/domainnet"}}).data
    assert data.domains == ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    assert data.split_seed == 0 and data.test_fraction == 0.2 and not data.skip_corrupt
    assert parse_config({}).data.root is None and parse_config({}).data.dataset == "digits"


def test_embedded_class_counts_match_the_data() -> None:
    from sdlora.config import EMBEDDED_DATASETS
    from sdlora.data.glyphs import NONLATIN

    assert {"digits": 10, "glyphs": len(NONLATIN)} == EMBEDDED_DATASETS
    with pytest.raises(ConfigError, match=r"data\.init_cls = 41 but dataset 'glyphs' has only 40"):
        parse_config({"data": {"dataset": "glyphs", "init_cls": 41}})


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.5\n  epochs: 2\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"at line 4, column 3: key 'lr' is given twice; keep"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "data:\n  dataset: glyphs\n   init_cls: 8\n",
            "not valid YAML at line 3, column 12: mapping values are not allowed here; fix the "
            "syntax there (indentation, a ':' after each key, closed brackets and quotes)",
        ),
        (
            "seed: [0\n",
            "not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 1, column 7); fix the syntax there",
        ),
        ("a:\n\tb: 1\n", "not valid YAML at line 2, column 1: found character '\\t' that cannot"),
        ("seed: 0\nb: \x07\n", "not valid YAML at line 2, column 4: character #x0007: special"),
        ("- seed\n", "expected a mapping of sections, got list"),
        ("", "params file is empty; write the settings there"),
        ("# nothing but a comment\n", "params file is empty"),
    ],
)
def test_unreadable_params_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert expected in str(err.value)


def test_params_file_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"seed: 0 # \xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not a UTF-8 text file \(invalid"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match=r": cannot read the params file \(Is a directory\)"):
        load_config(tmp_path)


@pytest.mark.parametrize("text", ["data:\n  dataset: glyphs\n   init_cls: 8\n", None, ""])
def test_tasks_command_reports_a_bad_params_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None
) -> None:
    from sdlora.cli import main

    path = tmp_path / "broken.yaml"
    if text is not None:
        path.write_text(text)
    assert main(["tasks", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdlora tasks: error: {path}: ") and err.count("\n") == 1, err
    assert ("line 3, column 12" if text else "params file") in err


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"tasks": {0: {**_entry(0), "prev": "x"}}, "final_task": "runs/pipeline/task_0"},
            "tasks.0.prev = 'x' but the pipeline writes 'artifacts/backbone' there; run `python",
        ),
        ({"tasks": {0: _entry(0)}}, "final_task = None but the last task's output is"),
        ({"final_task": "runs/pipeline/task_0"}, "final_task is set but tasks is not"),
        ({}, "params.yaml has no tasks section"),
    ],
)
def test_a_task_list_off_the_pipeline_layout_is_refused(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("`", ".")):
        require_plan(parse_config(raw))
