"""params.yaml loading and validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import ConfigError, RunInputs, identity, load_config, parse_config
from sdlora.pipeline.layout import require_plan

REPO = Path(__file__).resolve().parents[1]


def _entry(k: int) -> dict:
    from sdlora.pipeline.layout import task_prev, task_split

    return {"split": task_split(k), "prev": task_prev(k), "label_offset": 0 if k == 0 else 2 * k}


def test_repository_params_are_valid() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.model.method == "sdlora" and cfg.data.dataset == "glyphs-r"


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
    ten_tasks = {"dataset": "glyphs", "init_cls": 4, "increment": 4}
    raw = {"data": ten_tasks, "model": {"rank_schedule": [[0, 10], [4, 8], [8, 6]]}}
    model = parse_config(raw).model
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

    glyphs = len(NONLATIN)
    assert {"digits": 10, "glyphs": glyphs, "glyphs-r": glyphs} == EMBEDDED_DATASETS
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


# ---- values that used to pass and run wrong (issue 19: nothing silently wrong) ------------


TINY_KW = {"img_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _problem(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "params.yaml")
    assert str(err.value).startswith("params.yaml: invalid configuration\n  ")
    assert str(err.value).count("\n") == 1, str(err.value)  # one line under the header
    return str(err.value).split("\n")[1].strip()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lr": float("inf")}}, "train.lr = inf: Input should be a finite number"),
        ({"train": {"lr": "inf"}}, "train.lr = 'inf': Input should be a finite number"),
        ({"model": {"magnitude_init": float("nan")}}, "model.magnitude_init = nan: Input should"),
        ({"model": {"kd_tau": float("inf")}}, "model.kd_tau = inf: Input should be a finite"),
        ({"model": {"kd_tau": "inf"}}, "model.kd_tau = 'inf': Input should be a finite number"),
        ({"pretrain": {"lr": float("-inf")}}, "pretrain.lr = -inf: Input should be a finite"),
        ({"ray": {"poll_interval_s": float("inf")}}, "ray.poll_interval_s = inf: Input should"),
        ({"data": {"test_fraction": float("nan")}}, "data.test_fraction = nan: Input should"),
        (
            {"backbone": {"kwargs": {**TINY_KW, "patch_size": 4, "mlp_ratio": float("inf")}}},
            "backbone.kwargs.mlp_ratio = inf: timm takes finite numbers",
        ),
        (
            {"tasks": {0: {**_entry(0), "lr": float("inf")}}, "final_task": "runs/pipeline/task_0"},
            "tasks.0.lr = inf: Input should be a finite number",
        ),
    ],
)
def test_non_finite_numbers_are_refused(raw: dict, expected: str) -> None:
    assert _problem(raw).startswith(expected)


def test_non_finite_numbers_from_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: .inf\nmodel:\n  magnitude_init: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.lr = inf: Input should be a finite number" in str(err.value)
    assert "model.magnitude_init = nan: Input should be a finite number" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"batch_size": True}}, "train.batch_size = True: expected an integer, not"),
        ({"train": {"lr": False}}, "train.lr = False: expected a number, not true/false"),
        ({"seed": True}, "seed = True: expected an integer, not true/false"),
        ({"model": {"blocks": [0, True]}}, "model.blocks = [0, True]: expected an integer"),
        ({"model": {"rank_schedule": [[0, True]]}}, "model.rank_schedule = [[0, True]]: exp"),
        ({"model": {"kd_tau": True}}, "model.kd_tau = True: expected a number, not true/false"),
        ({"data": {"workers": True}}, "data.workers = True: expected an integer or 'auto', not"),
        ({"ray": {"max_failures": False}}, "ray.max_failures = False: expected an integer, not"),
    ],
)
def test_booleans_are_not_numbers(raw: dict, expected: str) -> None:
    assert _problem(raw).startswith(expected)


def test_numbers_from_yaml_keep_their_types(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1\n  batch_size: 8\n  compile: true\npretrain:\n  lr: 1e-3\n")
    cfg = load_config(path)  # PyYAML reads 1e-3 (no dot) as a string: still a number here
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8 and cfg.train.compile is True and cfg.pretrain.lr == 0.001


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"seed": -1}, "seed = -1: must be a seed in 0 .. 4294967295 (numpy's range)"),
        ({"seed": 2**32}, "seed = 4294967296: must be a seed in 0 .. 4294967295"),
        ({"pretrain": {"seed": -3}}, "pretrain.seed = -3: must be a seed in 0 .. 4294967295"),
        ({"data": {"split_seed": 2**40}}, "data.split_seed = 1099511627776: must be a seed in"),
    ],
)
def test_seeds_are_in_numpy_range(raw: dict, expected: str) -> None:
    assert _problem(raw).startswith(expected)
    assert parse_config({"seed": 2**32 - 1, "pretrain": {"seed": 0}}).seed == 2**32 - 1


def test_compare_and_tune_seeds_are_in_numpy_range(tmp_path: Path) -> None:
    from sdlora.config import load_compare, load_tune

    (tmp_path / "c.yaml").write_text("seeds: [0, -1]\nmethods: {a: {}}\n")
    with pytest.raises(ConfigError, match=r"seeds\.1 = -1: must be a seed in 0 \.\. 4294967295"):
        load_compare(tmp_path / "c.yaml")
    (tmp_path / "t.yaml").write_text("space: {train.lr: {uniform: [0.1, 0.2]}}\nseed: -1\n")
    with pytest.raises(ConfigError, match=r"seed = -1: must be a seed in 0 \.\. 4294967295"):
        load_tune(tmp_path / "t.yaml")


GLYPHS_5 = {"dataset": "glyphs", "init_cls": 8, "increment": 8}  # 40 classes: tasks 0..4


def test_a_rank_schedule_entry_past_the_last_task_is_refused() -> None:
    raw = {"data": GLYPHS_5, "model": {"rank_schedule": [[0, 10], [4, 8], [5, 6]]}}
    assert _problem(raw) == (
        "model.rank_schedule entry [5, 6] starts at task 5, but the data make 5 tasks (0 .. 4: "
        "dataset 'glyphs' has 40 classes, data.init_cls = 8, data.increment = 8); drop the "
        "entry or start it at a task <= 4"
    )
    assert parse_config({"data": GLYPHS_5, "model": {"rank_schedule": [[0, 10], [4, 8]]}})
    on_disk = {"dataset": "imagefolder", "root": "/d"}  # class count unknown until prepare
    assert parse_config({"data": on_disk, "model": {"rank_schedule": [[0, 10], [99, 8]]}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"backbone": {"kwargs": {**TINY_KW, "patch_size": 5}}},
            "backbone.kwargs.patch_size = 5 does not divide data.image_size = 16: the ViT would "
            "leave out the last 1 pixel row(s) and column(s); use a patch size that divides 16 "
            "(e.g. 2, 4, 8, 16), or data.image_size a multiple of 5",
        ),
        (
            {"data": {"image_size": 24}, "backbone": {"kwargs": {**TINY_KW, "img_size": 24}}},
            "backbone.name = 'vit_tiny_patch16_224' has patch size 16 (backbone.kwargs has no "
            "patch_size), which does not divide data.image_size = 24: the ViT would leave out the "
            "last 8 pixel row(s) and column(s); use a patch size that divides 24 (e.g. 2, 3, 4, "
            "6, 8, 12, 24), or data.image_size a multiple of 16",
        ),
        (
            {"backbone": {"kwargs": {**TINY_KW, "patch_size": 0}}},
            "backbone.kwargs.patch_size = 0: a patch size is a positive number of pixels",
        ),
    ],
)
def test_a_patch_size_that_does_not_divide_the_image_is_refused(raw: dict, expected: str) -> None:
    assert _problem(raw) == expected


def test_patch_sizes_that_fit_are_accepted() -> None:
    assert parse_config({"backbone": {"kwargs": {**TINY_KW, "patch_size": 4}}})
    padded = {**TINY_KW, "patch_size": 5, "dynamic_img_pad": True}  # timm pads the last patch
    assert parse_config({"backbone": {"kwargs": padded}})
    assert parse_config({"backbone": {"name": "vit_base_r50_s16_224"}})  # no patch in the name


@pytest.mark.parametrize(
    "uri",
    ["ftp://host/x", "s3://bucket/runs", "uc:databricks", "runs:/abc", "sqlitex:///m.db", " "],
)
def test_a_tracking_uri_mlflow_cannot_open_is_refused(uri: str) -> None:
    line = _problem({"mlflow": {"tracking_uri": uri}})
    assert line.startswith(f"mlflow.tracking_uri = {uri!r}: ")
    assert "null, a folder path, file:, sqlite:, postgresql:, mysql:, mssql:, http:, " in line


@pytest.mark.parametrize(
    "uri",
    ["sqlite:///mlflow.db", "file:///tmp/mlruns", "mlruns", "/abs/mlruns", "C:\\mlruns",
     "http://localhost:5000", "https://h/x", "databricks", "databricks://profile",
     "postgresql+psycopg2://u@h/db", "mysql://u@h/db", "mssql+pyodbc://u@h/db"],
)  # fmt: skip
def test_tracking_uris_mlflow_opens_are_accepted(uri: str) -> None:
    assert parse_config({"mlflow": {"tracking_uri": uri}}).mlflow.tracking_uri == uri


def test_the_accepted_schemes_are_mlflows() -> None:
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from sdlora.config import MLFLOW_SCHEMES

    # MLflow registers Unity Catalog schemes only to refuse them for tracking
    assert set(_tracking_store_registry._registry) - {"uc", "databricks-uc"} == MLFLOW_SCHEMES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": {"method": ["sdlora"]}}, "model.method = ['sdlora']: use one of ("),
        ({"model": {1: 2, "x": 3}}, "model.1: unknown key"),
    ],
)
def test_odd_keys_and_values_are_config_errors(raw: dict, expected: str) -> None:
    assert _problem(raw).startswith(expected)


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "model: {{rank: 1}: 2}\n"])
def test_a_yaml_key_that_is_a_list_or_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+: found"):
        load_config(path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('["a", 1]', "train.lr: uniform takes numbers, got ['a', 1]"),
        ("[.inf, 1]", "train.lr: uniform takes finite numbers, got [inf, 1]"),
        ("[true, 2]", "train.lr: uniform takes numbers, got [True, 2]"),
    ],
)
def test_a_tune_range_of_non_numbers_is_a_config_error(
    tmp_path: Path, args: str, expected: str
) -> None:
    from sdlora.config import load_tune

    (tmp_path / "t.yaml").write_text(f"space: {{train.lr: {{uniform: {args}}}}}\n")
    with pytest.raises(ConfigError) as err:
        load_tune(tmp_path / "t.yaml")
    assert expected in str(err.value)


# ---- data.tasks (issue 20) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ([], "data.tasks = []: must list at least one task, or be null"),
        ([["a"], []], "data.tasks = [['a'], []]: task 1 is empty: give it at least"),
        ([["a", "b"], ["c", "a"]], "class 'a' is in task 0 and in task 1: a class "),
        ([["a", "a"]], "class 'a' is twice in task 0: a class belongs to one task"),
        ([["a", " "]], "task 0 holds an empty class name"),
        ([[True]], "data.tasks = [[True]]: expected text (quote a name such as 'yes'), not true"),
        ("0 1 2", "data.tasks = '0 1 2': Input should be a valid list"),
    ],
)
def test_named_tasks_are_checked(tasks: object, expected: str) -> None:
    assert expected in _problem({"data": {"dataset": "glyphs", "tasks": tasks}})


def test_a_registered_model_name_fits_model_uris() -> None:
    assert _problem({"mlflow": {"registered_model": "my model@x"}}) == (
        "mlflow.registered_model = 'my model@x': use letters, digits and _ . - only (it goes into "
        "URIs such as models:/NAME@champion)"
    )
    cfg = parse_config({"mlflow": {"registered_model": "letters-v2.1_a"}})
    assert cfg.mlflow.model_name("glyphs") == "letters-v2.1_a"
    assert parse_config({}).mlflow.model_name("imagenet-r") == "sdlora-imagenet-r"
    assert "gate" in _problem({"mlflow": {"gate": {"max_forgetting_points": -1}}})


def test_named_tasks_take_digits_numbers_as_their_names_and_set_the_task_count() -> None:
    cfg = parse_config({"data": {"dataset": "digits", "tasks": [[0, 1], [2]]}})
    assert cfg.data.tasks == [["0", "1"], ["2"]]
    assert "tasks" not in identity(parse_config({}), RunInputs("d", None))["data"]  # as before
    assert identity(cfg, RunInputs("d", None))["data"]["tasks"] == [["0", "1"], ["2"]]
    raw = {"data": {"dataset": "digits", "tasks": [["0"], ["1"]]},
           "model": {"rank_schedule": [[0, 4], [2, 2]]}}  # fmt: skip
    assert _problem(raw) == (
        "model.rank_schedule entry [2, 2] starts at task 2, but the data make 2 tasks (0 .. 1: "
        "data.tasks lists them); drop the entry or start it at a task <= 1"
    )
    eleven = {"data": {"dataset": "digits", "tasks": [[str(d) for d in range(10)], ["x"]]}}
    assert _problem(eleven).endswith("data.tasks names 11 classes but dataset 'digits' has only 10")


def test_pretrain_threads_default_to_the_tasks_count() -> None:
    """Pre-training runs alone, so params.yaml may give it more threads than a task's worker."""
    p = parse_config({"train": {"threads": 3}}).pretrain
    assert p.threads is None and p.thread_count(3) == 3
    assert parse_config({"pretrain": {"threads": 2}}).pretrain.thread_count(1) == 2
    with pytest.raises(ConfigError, match=r"pretrain\.threads"):
        parse_config({"pretrain": {"threads": 0}})
