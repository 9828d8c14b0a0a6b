"""Every params example and every shell command in the README and docs/ works as written.

Params examples (```yaml blocks) must be valid params files. Every command of a ```bash block is
either run as written, in a copy of the project committed to a fresh git repository (so HEAD is
the committed default, as in a clone), or, where running it costs minutes or starts a server,
checked without running it: ``make -n``, ``dvc status``, or ``--help`` with every option
the command uses found in the help text. :data:`RULES` says which, and why; a command no rule
matches fails the test, so a new command in the docs gets a rule.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdlora.config import parse_config, read_yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{doc.name}:{i}")
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S))
]


def test_docs_have_params_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS)
def test_params_example_is_valid(block: str) -> None:
    parse_config(read_yaml(block), "example")


# ---- shell commands --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How the commands that start with ``prefix`` are checked: ``run`` (as written), ``dry``
    (``make -n``; ``dvc status`` for ``dvc repro``), ``help`` (``--help``, options checked) or
    ``skip``."""

    prefix: tuple[str, ...]
    how: str
    why: str = ""  # why it is not run as written


RULES = [
    Rule(
        (".", ".venv/bin/activate"),
        "skip",
        "sets up the shell the other commands run in; the tests run inside that environment",
    ),
    Rule(
        ("make",),
        "dry",
        "the whole default pipeline (7 min) or the whole test suite, which "
        "this test is part of; tests/test_pipeline_dvc.py runs a tiny `dvc repro`",
    ),
    Rule(
        ("dvc", "repro"),
        "dry",
        "trains for minutes; `dvc status` reads dvc.yaml, the params and the lock as it does and "
        "lists what it would run; tests/test_pipeline_dvc.py runs a tiny `dvc repro`",
    ),
    Rule(("dvc", "metrics"), "run"),
    Rule(("dvc", "params", "diff"), "run"),
    Rule(("dvc", "exp", "show"), "run"),
    Rule(("dvc", "dag"), "run"),
    Rule(("python", "-m", "sdlora", "plots"), "run"),
    Rule(("python", "-m", "sdlora", "tasks"), "run"),
    Rule(("python", "-m", "sdlora", "reproduce", "--list"), "run"),
    Rule(
        ("python", "-m", "sdlora", "reproduce"),
        "help",
        "a preset on GPUs (hours) or its smoke run (a minute); tests/reproduce/ run both the "
        "smoke runs and the refusal without a GPU",
    ),
    Rule(
        ("python", "-m", "sdlora", "identity"),
        "help",
        "reads the prepare stage's output, which a clone lacks; tests/data/test_identity.py runs "
        "it",
    ),
    Rule(
        ("python", "-m", "sdlora", "run"),
        "help",
        "trains a whole sequence (70 s); tests/test_sequence.py runs it on a tiny config",
    ),
    Rule(
        ("python", "-m", "sdlora", "exp-run"),
        "help",
        "runs the pipeline as a DVC experiment (minutes); tests/test_pipeline_dvc.py runs it",
    ),
    Rule(
        ("python", "-m", "sdlora", "metrics"),
        "help",
        "reads `sdlora run`'s output; tests/test_metrics.py runs it",
    ),
    Rule(("python", "pipelines/"), "help", "a stage of `dvc repro`; tests/stages/ run each"),
    Rule(("python", "benchmarks/"), "help", "trains for minutes (the protocol sweep: 1 min a run)"),
    Rule((".venv/bin/pytest",), "help", "the test suite, which this test is part of"),
    Rule(("mlflow", "ui"), "help", "a server that runs until stopped"),
    Rule(("mlflow", "server"), "help", "a server that runs until stopped"),
    Rule(
        ("mlflow", "models", "serve"),
        "help",
        "a server that runs until stopped; tests/ops/test_classifier_model.py serves a model",
    ),
    Rule(
        ("curl",),
        "skip",
        "asks the server the line before starts; tests/ops/test_classifier_model.py posts the "
        "same JSON to a served model",
    ),
    Rule(("ray", "start"), "help", "starts a Ray cluster that runs until `ray stop`"),
    Rule(("export",), "skip", "sets the environment of the commands after it in the shell"),
    Rule(
        ("python", "docs/examples/"),
        "skip",
        "a Ray Serve server (the `serve` extra, which `make test` does not install); tried by "
        "hand, docs/serving.md says how",
    ),
    Rule(("serve", "run"), "skip", "Ray Serve's CLI on a cluster (the `serve` extra)"),
]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a ```bash block as argv lists: ``\\`` continuations joined, comments cut."""
    lines = block.replace("\\\n", " ").splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def rule_for(argv: list[str]) -> Rule | None:
    """The first rule whose prefix starts ``argv`` (a word ending in ``/`` matches a path)."""
    for rule in RULES:
        if len(argv) >= len(rule.prefix) and all(
            word == p or (p.endswith("/") and word.startswith(p))
            for word, p in zip(argv, rule.prefix, strict=False)
        ):
            return rule
    return None


COMMANDS: dict[str, list[str]] = {}  # each distinct command once: its text, then its argv
WHERE: dict[str, list[str]] = {}  # command text -> the blocks it appears in
for _doc in DOCS:
    for _i, _block in enumerate(re.findall(r"```bash\n(.*?)```", _doc.read_text(), re.S)):
        for _argv in shell_commands(_block):
            COMMANDS.setdefault(shlex.join(_argv), _argv)
            WHERE.setdefault(shlex.join(_argv), []).append(f"{_doc.name}:{_i}")


def test_every_documented_command_has_a_rule_and_every_rule_a_command() -> None:
    assert len(COMMANDS) >= 15
    lacking = [f"{c} ({', '.join(WHERE[c])})" for c, argv in COMMANDS.items() if not rule_for(argv)]
    assert not lacking, "commands no rule in tests/test_docs.py covers:\n" + "\n".join(lacking)
    used = {rule_for(argv) for argv in COMMANDS.values()}
    assert not [r.prefix for r in RULES if r not in used], "rules no documented command uses"
    assert all(r.why for r in RULES if r.how != "run"), "say why a command is not run"


def test_shell_commands_are_split_as_the_shell_does() -> None:
    block = 'a -m "not slow" -q   # comment\n# a whole comment line\nb --x $PWD/y \\\n  --z 1\n'
    assert shell_commands(block) == [
        ["a", "-m", "not slow", "-q"],
        ["b", "--x", "$PWD/y", "--z", "1"],
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the venv's
        DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )  # fmt: skip
    return env


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"`{shlex.join(argv)}` exited {done.returncode}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (what git would commit) in a fresh git repository with one commit."""
    root = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    for rel in listed:
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        _run(argv, root)
    return root


def _uses(argv: list[str], help_text: str) -> list[str]:
    """The options of ``argv`` (``-q``, ``--out``; ``--x=1`` as ``--x``) its help lacks."""
    flags = [w.split("=")[0] for w in argv if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


@pytest.mark.slow  # about 40 DVC, make and --help runs
@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
def test_documented_command_works_as_written(command: str, clone: Path) -> None:
    argv = COMMANDS[command]
    rule = rule_for(argv)
    assert rule is not None
    if rule.how == "skip":
        pytest.skip(rule.why)
    if rule.how == "run":
        out = _run(argv, clone)
        if argv[:3] == ["dvc", "metrics", "show"]:  # the committed baseline is there to show
            shown = argv[3] if len(argv) > 3 else "results/metrics.json"
            assert shown in out and "final_accuracy" in out
    elif rule.how == "dry":
        if argv[0] == "dvc":  # `repro --dry` fails on a clone (no upstream outputs to hash)
            out = _run(["dvc", "status", *argv[2:]], clone)
            would_run = r"^(validate|pretrain|compare/dvc.yaml:compare|tune/dvc.yaml:tune):"
            assert re.search(would_run, out, re.M), out  # what it would run
        else:
            _run(["make", "-n", *argv[1:]], clone)
    else:  # help: in the project itself (a path such as .venv/bin/pytest is relative to it)
        out = _run([*argv, "--help"], REPO)
        lacking = _uses(argv[len(rule.prefix) :], out)  # the options after the program's name
        assert not lacking, f"`{command}`: options not in its --help: {lacking}"
