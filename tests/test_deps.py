"""dvc.yaml against the code: each stage's code deps cover the files its entry script imports,
its params the keys its code reads, and nothing more (sdlora.deps).

When this fails after a code change, the message says which lines to add to (or remove from)
which stage of dvc.yaml; ``python -m sdlora deps`` prints the whole computed picture.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sdlora.deps import (
    check_stage,
    covers,
    dvc_stages,
    dynamic_imports,
    params_read,
    source_closure,
    stage_script,
)

REPO = Path(__file__).resolve().parents[1]
STAGES = dvc_stages(REPO / "dvc.yaml")


COMPARE = dvc_stages(REPO / "compare" / "dvc.yaml")  # its own file: not in `dvc repro`
TUNE = dvc_stages(REPO / "tune" / "dvc.yaml")  # likewise


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_yaml_stage_matches_its_code(stage: str) -> None:
    problems = check_stage(stage, STAGES[stage], REPO)
    assert not problems, f"stage {stage}:\n" + "\n".join(problems)


def test_the_compare_stage_matches_its_code_and_tracks_the_whole_params_file() -> None:
    assert set(COMPARE) == {"compare"}
    problems = check_stage("compare", COMPARE["compare"], REPO)
    assert not problems, "compare/dvc.yaml:\n" + "\n".join(problems)
    assert COMPARE["compare"]["whole_params"] == ["params.yaml"]  # each method: file + changes


def test_the_tune_stage_matches_its_code_and_tracks_the_whole_params_file() -> None:
    assert set(TUNE) == {"tune"}
    problems = check_stage("tune", TUNE["tune"], REPO)
    assert not problems, "tune/dvc.yaml:\n" + "\n".join(problems)
    assert TUNE["tune"]["whole_params"] == ["params.yaml"]  # each trial: file + changes


def test_every_stage_lists_params_and_evaluate_what_it_reads() -> None:
    assert set(STAGES) == {"validate", "prepare", "pretrain", "train", "evaluate", "report"}
    for stage, spec in STAGES.items():
        assert spec["params"] or spec["whole_params"], f"dvc.yaml stage {stage} lists no params"
    assert STAGES["validate"]["whole_params"] == ["params.yaml"]  # any edit re-runs it
    assert set(params_read(stage_script("evaluate"), REPO)) == {"tasks", "final_task"}
    assert {"tasks", "final_task"} <= set(STAGES["evaluate"]["params"])


def test_later_stages_code_does_not_rerun_earlier_ones() -> None:
    """Editing the evaluate or report code re-runs neither training nor data preparation."""
    later = ["pipelines/evaluate.py", "sdlora/stages/evaluate.py", "sdlora/stages/report.py"]
    for stage in ("prepare", "pretrain", "train"):
        files = source_closure(stage_script(stage), REPO)
        for path in later:
            assert path not in files, f"{stage_script(stage)} imports {path}"
            assert not any(covers(d, path) for d in STAGES[stage]["deps"]), (stage, path)


def test_a_missing_dep_is_named_with_the_line_to_add() -> None:
    spec = {
        **STAGES["train"],
        "deps": [d for d in STAGES["train"]["deps"] if d != "sdlora/lora.py"],
    }
    message = "\n".join(check_stage("train", spec, REPO))
    assert "dvc.yaml stages.train.do.deps lacks files pipelines/train.py imports; add:\n" in message
    assert "\n        - sdlora/lora.py\n" in message + "\n"  # indented as in stages.train.do
    spec = {**STAGES["evaluate"], "params": ["tasks"]}
    spec["deps"] = [d for d in spec["deps"] if d != "sdlora/plots.py"]
    assert check_stage("evaluate", spec, REPO) == [
        "dvc.yaml stages.evaluate.deps lacks files pipelines/evaluate.py imports; add:\n"
        "      - sdlora/plots.py",
        "dvc.yaml stages.evaluate.params lacks keys the code reads; add:\n"
        "      - final_task   # read by sdlora.stages.evaluate.evaluate_stage",
    ]


def test_stale_and_foreign_deps_are_named() -> None:
    spec = dict(STAGES["prepare"])
    spec["deps"] = [*spec["deps"], "sdlora/stages", "sdlora/lora.py"]
    spec["params"] = [*spec["params"], "train"]
    spec["cmd"] += " --extra data/other"
    message = "\n".join(check_stage("prepare", spec, REPO))
    assert "sdlora/stages also covers another stage's code (" in message
    assert "sdlora/stages/report.py" in message
    assert "sdlora/lora.py holds nothing pipelines/prepare.py imports; remove it" in message
    assert "no code of pipelines/prepare.py reads train; remove it" in message
    assert "lacks data/other (the cmd's --extra)" in message


def _project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


CONFIG = """\
    def load_config(path): ...

    class Config:
        def rank_for_task(self, task):
            return self.model.rank
"""


def test_closure_sees_imports_in_functions_and_skips_libraries(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        {
            "pipelines/s.py": "import numpy\nfrom sdlora.stages.s import main\nmain()\n",
            "sdlora/__init__.py": "",
            "sdlora/stages/__init__.py": "",
            "sdlora/stages/s.py": """\
                def main():
                    from sdlora.late import f
                    return f()
            """,
            "sdlora/late.py": """\
                import importlib

                def f():
                    return importlib.import_module("x")
            """,
            "sdlora/unused.py": "",
        },
    )
    files = source_closure("pipelines/s.py", root)
    assert files == [
        "pipelines/s.py",
        "sdlora/__init__.py",
        "sdlora/late.py",
        "sdlora/stages/__init__.py",
        "sdlora/stages/s.py",
    ]
    assert dynamic_imports(files, root) == ["sdlora/late.py:4"]


@pytest.mark.parametrize(
    ("body", "reads"),
    [
        ("cfg.data.image_size; cfg.seed", {"data.image_size", "seed"}),
        ("d = cfg.data\n    d.root", {"data.root"}),
        ("takes_data(cfg.data)", {"data.init_cls"}),
        ("print(cfg.data)", {"data"}),
        (
            'run = cfg.model_copy(update={"seed": 1, "train": cfg.train.model_copy('
            'update={"lr": 0.1})})\n    uses_config(run)',
            {"train.epochs"},
        ),
        (
            "cfg.model_dump(exclude=EXCLUDED)",
            {"seed", "device", "data", "backbone", "model", "train", "compare", "tune"},
        ),
        ("cfg.rank_for_task(0)", {"model.rank"}),
        ("from sdlora.lib import callback\n    list(map(callback, [cfg]))", {"device"}),
        ("getattr(cfg, name)", "all"),
    ],
)
def test_params_read_follows_the_config(tmp_path: Path, body: str, reads: set[str] | str) -> None:
    root = _project(
        tmp_path,
        {
            "pipelines/s.py": "from sdlora.stages.s import main\nmain()\n",
            "sdlora/__init__.py": "",
            "sdlora/config.py": CONFIG,
            "sdlora/stages/__init__.py": "",
            "sdlora/lib.py": """\
                from sdlora.config import Config, DataConfig

                def takes_data(data: DataConfig):
                    return data.init_cls

                def uses_config(cfg: Config):
                    return cfg.seed, cfg.train.lr, cfg.train.epochs

                def callback(cfg: Config):
                    return cfg.device
            """,
            "sdlora/stages/s.py": f"""\
from sdlora.config import load_config
from sdlora.lib import takes_data, uses_config

EXCLUDED = frozenset({{"progress", "ray", "mlflow", "tasks", "final_task", "pretrain"}})


def main(name="seed"):
    cfg = load_config("params.yaml")
    {body}
""",
        },
    )
    got = set(params_read("pipelines/s.py", root))
    if reads == "all":
        assert {"seed", "data", "ray", "mlflow", "tasks", "final_task"} <= got
    else:
        assert got == reads
