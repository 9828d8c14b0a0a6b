"""How bad input is answered: each case run the way a user would, its reply counted by kind.

Four kinds of bad input (issue 19), each case a fresh process with a timeout, one at a time:

- ``params``: a mutation of the project's ``params.yaml`` (non-finite floats, true/false for
  numbers, zero or negative counts, wrong types, typos, broken YAML, values that do not fit the
  data or the backbone, ...) given to ``pipelines/validate.py`` in a folder of its own;
- ``files``: one damage (truncated, 400 bytes overwritten inside, a region of NaN, deleted,
  replaced) to one input of ``train@1`` in a fresh copy of a tiny prepared project (as
  ``tests/pipeline/test_preflight.py`` builds it, plus the pretrain stage's
  ``artifacts/backbone/backbone.json``), then ``pipelines/train.py --task 1``;
- ``metrics``: a malformed accuracy matrix or ``--counts`` given to ``python -m sdlora metrics``;
- ``data``: ``pipelines/prepare.py`` on a CIFAR-100 folder whose pickles run
  ``os.system("touch MARKER")`` when unpickled by ``pickle`` (``code ran`` counts a MARKER that
  appeared), a missing root, an empty folder, a file as root, and the same folder uncrafted.

Each case expects ``refuse`` or ``accept``. A reply counts as *one line* when the process exits 1
or 2, prints no traceback, and its stderr is one line starting with the stage's prefix
(``validate: error: ``, ``train: failed: ``, ``sdlora metrics: error: ``...), or the config
loader's header ``<file>: invalid configuration`` with exactly one key line under it (its
format: one line per bad key). *exit 0* on a refuse case is a run that went on with bad input.
Prints a table per kind, then every case that was not answered in one line.

    python benchmarks/bad_inputs.py                    # all kinds, ~10 minutes on 2 cores
    python benchmarks/bad_inputs.py --only metrics --only data --timeout 60
    python benchmarks/bad_inputs.py --only files --match adapter   # cases named so
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sdlora.data.standin import dump_py2

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DELETE = object()  # a params mutation that removes the key
KINDS = ("params", "files", "metrics", "data")
OUTCOMES = ("one line", "several lines", "traceback", "exit 0", "accepted", "refused",
            "other exit", "hang")  # fmt: skip


@dataclass
class Case:
    kind: str
    name: str
    expect: str  # "refuse" | "accept"
    cmd: list[str]
    cwd: Path
    who: str  # the prefix of the stage's own messages ("validate", "sdlora metrics")
    marker: Path | None = None  # a file whose appearance means crafted code ran


@dataclass
class Result:
    case: Case
    rc: int | None  # None: killed at the timeout
    err: str
    seconds: float
    code_ran: bool

    @property
    def outcome(self) -> str:
        if self.rc is None:
            return "hang"
        if "Traceback" in self.err:
            return "traceback"
        if self.rc == 0:
            return "accepted" if self.case.expect == "accept" else "exit 0"
        if self.rc not in (1, 2):
            return "other exit"
        if self.case.expect == "accept":
            return "refused"
        return "one line" if one_line(self.err, self.case.who) else "several lines"


def one_line(err: str, who: str) -> bool:
    """Whether ``err`` is one message line with the stage's prefix (or the config loader's
    header and one key line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    if not lines or not lines[0].startswith((f"{who}: error: ", f"{who}: failed: ")):
        return False
    if len(lines) == 1:
        return True
    return (
        len(lines) == 2
        and lines[0].endswith(": invalid configuration")
        and lines[1].startswith("  ")
    )


def environment(tmp: Path) -> dict[str, str]:
    """The cases' environment: this checkout first on the path, no telemetry, no outside Ray
    cluster or MLflow store, Ray's temp folder our own (short: socket paths are limited)."""
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SDLORA_VERBOSE"):
        env.pop(name, None)
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    env.update(PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
               DVC_NO_ANALYTICS="1", RAY_TMPDIR=str(ray_tmp))  # fmt: skip
    return env


def run_case(case: Case, env: dict[str, str], timeout: float) -> Result:
    """Run one case in its own process group; a timeout kills the group (Ray's too)."""
    start = time.perf_counter()
    proc = subprocess.Popen(case.cmd, cwd=case.cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        rc = None
    ran = case.marker is not None and case.marker.exists()
    return Result(case, rc, err or "", time.perf_counter() - start, ran)


# ---- params: pipelines/validate.py on mutations of the project's params.yaml -----------------


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


NAN, INF = float("nan"), float("inf")
# (name, expected, {dotted key: value}); values are Python objects dumped as YAML
PARAM_EDITS: list[tuple[str, str, dict[str, Any]]] = [
    ("unchanged (control)", "accept", {}),
    ("train.lr: .inf", "refuse", {"train.lr": INF}),
    ("model.magnitude_init: .nan", "refuse", {"model.magnitude_init": NAN}),
    ("model.magnitude_init: -.inf", "refuse", {"model.magnitude_init": -INF}),
    ("train.weight_decay: .inf", "refuse", {"train.weight_decay": INF}),
    ("pretrain.lr: .inf", "refuse", {"pretrain.lr": INF}),
    ("ray.poll_interval_s: .nan", "refuse", {"ray.poll_interval_s": NAN}),
    ("model.kd_tau: .nan", "refuse", {"model.kd_tau": NAN}),
    ("backbone.kwargs.embed_dim: .inf", "refuse", {"backbone.kwargs.embed_dim": INF}),
    ("tasks.1.lr: .inf", "refuse", {"tasks.1.lr": INF}),
    ("train.batch_size: true", "refuse", {"train.batch_size": True}),
    ("model.rank: false", "refuse", {"model.rank": False}),
    ("data.workers: true", "refuse", {"data.workers": True}),
    ("model.rank_schedule: [[0, true]]", "refuse", {"model.rank_schedule": [[0, True]]}),
    ("model.kd_tau: true", "refuse", {"model.kd_tau": True}),
    ("seed: -1", "refuse", {"seed": -1}),
    ("seed: 2**32", "refuse", {"seed": 2**32}),
    ("train.epochs: 0", "refuse", {"train.epochs": 0}),
    ("model.rank: 0", "refuse", {"model.rank": 0}),
    ("train.lr: -0.001", "refuse", {"train.lr": -0.001}),
    ("train.momentum: 1.0", "refuse", {"train.momentum": 1.0}),
    ("ray.num_workers: 0", "refuse", {"ray.num_workers": 0}),
    ("train.lr: '1e-3' (YAML 1.1 reads a string)", "accept", {"train.lr": "1e-3"}),
    ("train.batch_size: '64' (quoted)", "accept", {"train.batch_size": "64"}),
    ("train.batch_size: sixty-four", "refuse", {"train.batch_size": "sixty-four"}),
    ("train.batch_size: 64.5", "refuse", {"train.batch_size": 64.5}),
    ("model.targets: q (not a list)", "refuse", {"model.targets": "q"}),
    ("data: [1, 2] (a list)", "refuse", {"data": [1, 2]}),
    ("train: null (empty section)", "refuse", {"train": None}),
    ("progress: maybe", "refuse", {"progress": "maybe"}),
    ("typo: progres: true", "refuse", {"progres": True}),
    ("typo: train.learning_rate", "refuse", {"train.learning_rate": 0.01}),
    ("typo: backbone.kwargs.patch_szie", "refuse", {"backbone.kwargs.patch_szie": 4}),
    ("model.rank_schedule entry past the last task", "refuse",
     {"model.rank_schedule": [[0, 10], [5, 8]]}),
    ("model.rank_schedule not starting at 0", "refuse", {"model.rank_schedule": [[1, 10]]}),
    ("backbone.kwargs.patch_size: 5 (16 px images)", "refuse", {"backbone.kwargs.patch_size": 5}),
    ("model.blocks: [0, 99] (6 blocks)", "refuse", {"model.blocks": [0, 99]}),
    ("mlflow.tracking_uri: ftp://x", "refuse", {"mlflow.tracking_uri": "ftp://x"}),
    ("device: tpu", "refuse", {"device": "tpu"}),
    ("data.dataset: cifar100, data.root missing folder", "refuse",
     {"data.dataset": "cifar100", "data.root": "/nonexistent/cifar"}),
    ("data.dataset: cifar100 without data.root", "refuse", {"data.dataset": "cifar100"}),
    ("data.init_cls: 41 (glyphs has 40)", "refuse", {"data.init_cls": 41}),
    ("data.increment: 3 (tasks lists 5, data make 12)", "refuse", {"data.increment": 3}),
    ("model.method: joint", "refuse", {"model.method": "joint"}),
    ("model.method: sdlroa", "refuse", {"model.method": "sdlroa"}),
    ("tasks.1.prev: wrong folder", "refuse", {"tasks.1.prev": "runs/pipeline/task_3"}),
    ("final_task deleted", "refuse", {"final_task": DELETE}),
    ("train.batch_size: 7 over ray.num_workers: 2", "refuse",
     {"train.batch_size": 7, "ray.num_workers": 2}),
    ("backbone.weights: missing outside file", "refuse",
     {"backbone.weights": "/nonexistent/vit.safetensors"}),
]  # fmt: skip

# (name, how the params file's text becomes the case's); None: no file given at all
PARAM_TEXTS: list[tuple[str, Callable[[str], str | bytes | None]]] = [
    ("YAML: tab indentation", lambda t: t.replace("\n  lr: 0.001", "\n\tlr: 0.001", 1)),
    ("YAML: duplicate key seed", lambda t: "seed: 1\n" + t),
    ("YAML: unclosed bracket", lambda t: t.replace("targets: [q, v]", "targets: [q, v", 1)),
    ("YAML: unclosed quote", lambda t: t.replace("experiment: sdlora", 'experiment: "sdlora', 1)),
    ("YAML: empty file", lambda t: ""),
    ("YAML: a list, not a mapping", lambda t: "- seed\n- device\n"),
    ("YAML: NUL character", lambda t: t.replace("seed: 0", "seed: 0\x00", 1)),
    ("not UTF-8 (Latin-1 byte)", lambda t: t.encode().replace(b"# sdlora", b"# sdl\xf6ra", 1)),
    ("params file missing", lambda t: None),
]


def params_cases(tmp: Path) -> list[Case]:
    text = (REPO / "params.yaml").read_text()
    cases = []

    def add(name: str, expect: str, content: str | bytes | None) -> None:
        folder = tmp / f"p{len(cases):02d}"
        folder.mkdir()
        if isinstance(content, bytes):
            (folder / "params.yaml").write_bytes(content)
        elif content is not None:
            (folder / "params.yaml").write_text(content)
        cmd = [PY, str(REPO / "pipelines/validate.py"), "--params", "params.yaml",
               "--out", "runs/pipeline/params_valid.json",
               "--weights", "runs/pipeline/weights.json"]  # fmt: skip
        cases.append(Case("params", name, expect, cmd, folder, "validate"))

    for name, expect, edits in PARAM_EDITS:
        raw = yaml.safe_load(text)
        for key, value in edits.items():
            _set(raw, key, value)
        add(name, expect, text if not edits else yaml.safe_dump(raw, sort_keys=False))
    for name, change in PARAM_TEXTS:
        add(name, "refuse", change(text))
    return cases


# ---- files: pipelines/train.py --task 1 on a damaged copy of a tiny prepared project ---------

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
WEIGHTS = "artifacts/backbone/tiny.safetensors"
ADAPTER = "runs/pipeline/task_0/adapter.safetensors"
RECORD = "runs/pipeline/task_0/record.json"
TASK_FILE = "data/prepared/task_01/task.json"
BACKBONE_JSON = "artifacts/backbone/backbone.json"
TINY_PARAMS = f"""\
progress: false
data: {{image_size: 16, augment: none, init_cls: 2, increment: 2}}
backbone: {{name: vit_tiny_patch16_224, weights: {WEIGHTS}, kwargs: {TINY}}}
model: {{rank: 2}}
train: {{epochs: 1}}
"""


# task 0's record as train@0 writes it (its MLflow run unknown: train@1 starts a new one)
TASK_0_RECORD = {
    "key": None,
    "mlflow_run_id": None,
    "tasks": [{"task": 0, "num_classes": 2, "rank": 2, "accuracy": [90.0], "counts": [4],
               "epochs": [{"train_loss": 1.0, "epoch_seconds": 1.0, "samples_per_second": 8.0}],
               "storage": {"stored_params": 10, "stored_bytes": 40}, "magnitudes": [[1.0]]}],
}  # fmt: skip


def _tiny_backbone(seed: int) -> Any:
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)


def build_project(root: Path) -> None:
    """train@1's inputs in ``root``, all valid (checked here as the stage checks them)."""
    from sdlora.config import DataConfig, load_config
    from sdlora.core.backbone import save_backbone
    from sdlora.core.checkpoint import save_adapter
    from sdlora.core.train import begin_task, build_model
    from sdlora.data.prepare import open_prepared, prepare
    from sdlora.data.source import imageset_source
    from sdlora.data.tasks import ImageSet
    from sdlora.files import file_sha256
    from sdlora.pipeline.layout import read_inputs, write_tasks
    from sdlora.pipeline.preflight import check_task_inputs

    root.mkdir(parents=True)
    here = Path.cwd()
    os.chdir(root)  # the project's paths are relative to its root, as the stages read them
    try:
        Path("params.yaml").write_text(TINY_PARAMS)
        write_tasks("params.yaml", 2)
        cfg = load_config("params.yaml")
        rng = np.random.default_rng(0)

        def images(n: int) -> ImageSet:
            pixels = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
            return ImageSet(pixels, np.arange(n) % 4, ("a", "b", "c", "d"))

        source = imageset_source("noise", images(16), images(8), "probe noise")
        prepare(DataConfig(init_cls=2, increment=2, row_group_size=4), seed=0,
                out="data/prepared", source=source)  # fmt: skip
        save_backbone(_tiny_backbone(1), Path(WEIGHTS), "vit_tiny_patch16_224", TINY)
        record = {"name": "vit_tiny_patch16_224", "kwargs": TINY, "weights": WEIGHTS,
                  "sha256": file_sha256(Path(WEIGHTS)), "source": "weights file"}  # fmt: skip
        Path(BACKBONE_JSON).write_text(json.dumps(record, indent=2) + "\n")
        model = build_model(cfg)
        begin_task(model, cfg, 0, 2)
        model.end_task()
        save_adapter(model, Path(ADAPTER), extra={"task": 0})
        Path(RECORD).write_text(json.dumps(TASK_0_RECORD, indent=2) + "\n")
        prepared = open_prepared("data/prepared")
        check_task_inputs(cfg, 1, prepared, ADAPTER)
        read_inputs(prepared, "artifacts/backbone")
    finally:
        os.chdir(here)


def _data_start(path: Path) -> int:
    """Where a file's payload starts: after a safetensors header, else 100 bytes in."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            return 8 + int.from_bytes(f.read(8), "little") + 16
    return 100


def _overwrite(path: Path, pattern: bytes) -> None:
    """About 400 bytes of ``pattern`` inside the payload; length, header and footer kept."""
    at = _data_start(path)
    size = min(400, (path.stat().st_size - at) // 2) // len(pattern) * len(pattern)
    with path.open("r+b") as f:
        f.seek(at)
        f.write(pattern * (size // len(pattern)))


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def overwrite(path: Path) -> None:
    _overwrite(path, b"\x7f")


def nan_fill(path: Path) -> None:
    _overwrite(path, struct.pack("<f", NAN))


def delete(path: Path) -> None:
    path.unlink()


def _json_edit(change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return edit


def _replace_backbone(path: Path) -> None:
    from sdlora.core.backbone import save_backbone

    save_backbone(_tiny_backbone(2), path, "vit_tiny_patch16_224", TINY)


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _with(**items: Any) -> Callable[[dict], dict]:
    return lambda d: {**d, **items}


SPLIT_1 = "data/prepared/task_01/train.parquet"
TEST_0 = "data/prepared/task_00/test.parquet"
# (name, expected, file, damage)
DAMAGES: list[tuple[str, str, str, Callable[[Path], None]]] = [
    ("adapter truncated", "refuse", ADAPTER, truncate),
    ("adapter 400 bytes overwritten", "refuse", ADAPTER, overwrite),
    ("adapter NaN region", "refuse", ADAPTER, nan_fill),
    ("adapter deleted", "refuse", ADAPTER, delete),
    ("backbone weights truncated", "refuse", WEIGHTS, truncate),
    ("backbone weights 400 bytes overwritten", "refuse", WEIGHTS, overwrite),
    ("backbone weights NaN region", "refuse", WEIGHTS, nan_fill),
    ("backbone weights deleted", "refuse", WEIGHTS, delete),
    ("backbone weights replaced (other init)", "refuse", WEIGHTS, _replace_backbone),
    ("task_01/train.parquet truncated", "refuse", SPLIT_1, truncate),
    ("task_01/train.parquet 400 bytes overwritten", "refuse", SPLIT_1, overwrite),
    ("task_01/train.parquet NaN region", "refuse", SPLIT_1, nan_fill),
    ("task_01/train.parquet deleted", "refuse", SPLIT_1, delete),
    ("task_00/test.parquet truncated", "refuse", TEST_0, truncate),
    ("task_00/train.parquet truncated (train@1 does not read it)", "accept",
     "data/prepared/task_00/train.parquet", truncate),
    ("task_01/task.json truncated", "refuse", TASK_FILE, truncate),
    ("task_01/task.json schema_version 1", "refuse", TASK_FILE,
     _json_edit(_with(schema_version=1))),
    ("task_01/task.json deleted", "refuse", TASK_FILE, delete),
    ("task_01/task.json without 'task'", "refuse", TASK_FILE, _json_edit(_drop("task"))),
    ("task_0 record.json truncated", "refuse", RECORD, truncate),
    ("task_0 record.json deleted", "refuse", RECORD, delete),
    ("task_0 record.json without 'tasks'", "refuse", RECORD, lambda p: p.write_text("{}")),
    ("task_0 record.json entry without 'accuracy'", "refuse", RECORD,
     _json_edit(lambda d: {**d, "tasks": [_drop("accuracy")(d["tasks"][0])]})),
    ("task_0 record.json lists 2 tasks", "refuse", RECORD,
     _json_edit(lambda d: {"tasks": d["tasks"] * 2})),
    ("backbone.json deleted", "refuse", BACKBONE_JSON, delete),
    ("backbone.json without 'weights'", "refuse", BACKBONE_JSON, _json_edit(_drop("weights"))),
]  # fmt: skip


def files_cases(tmp: Path) -> list[Case]:
    base = tmp / "project"
    build_project(base)
    cases = []
    for i, (name, expect, rel, damage) in enumerate(DAMAGES):
        folder = tmp / f"f{i:02d}"
        shutil.copytree(base, folder)
        damage(folder / rel)
        cmd = [PY, str(REPO / "pipelines/train.py"), "--params", "params.yaml", "--task", "1",
               "--out", "out"]  # fmt: skip
        cases.append(Case("files", name, expect, cmd, folder, "train"))
    return cases


# ---- metrics: python -m sdlora metrics FILE [--counts ...] -----------------------------------

GOOD = "90\n80,70\n"
# (name, expected, file content (None: no file; b"": a folder), --counts or None)
MATRICES: list[tuple[str, str, str | bytes | None, str | None]] = [
    ("valid lower-triangular (control)", "accept", GOOD, None),
    ("valid with --counts (control)", "accept", GOOD, "10,30"),
    ("missing file", "refuse", None, None),
    ("a folder", "refuse", b"", None),
    ("empty file", "refuse", "", None),
    ("blank lines only", "refuse", "\n  \n\n", None),
    ("text", "refuse", "hello world\nthis is not a matrix\n", None),
    ("not UTF-8", "refuse", b"\xff\xfe9\x000\x00\n", None),
    ("NaN cell", "refuse", "90\nnan,70\n", None),
    ("inf cell", "refuse", "90\ninf,70\n", None),
    ("negative cell", "refuse", "90\n-5,70\n", None),
    ("cell > 100", "refuse", "90\n80,150\n", None),
    ("ragged rows (row 2 lacks its diagonal)", "refuse", "90\n80\n70,60,50\n", None),
    ("cell above the diagonal", "refuse", "90,50\n80,70\n", None),
    ("sdlora CSV, bad header", "refuse", "after_task,task_0,task_2\n0,90,\n1,80,70\n", None),
    ("sdlora CSV, letters in count row", "refuse",
     "after_task,task_0,task_1\n0,90,\n1,80,70\ncount,abc,10\n", None),
    ("--counts of wrong length", "refuse", GOOD, "1,2,3"),
    ("--counts with letters", "refuse", GOOD, "10,a"),
    ("--counts with a zero", "refuse", GOOD, "0,10"),
    ("--counts negative", "refuse", GOOD, "-1,10"),
    ("--counts empty", "refuse", GOOD, ""),
    ("--counts 10**30", "refuse", GOOD, "10,1000000000000000000000000000000"),
]  # fmt: skip


def metrics_cases(tmp: Path) -> list[Case]:
    cases = []
    for i, (name, expect, content, counts) in enumerate(MATRICES):
        folder = tmp / f"m{i:02d}"
        folder.mkdir()
        path = folder / "matrix.csv"
        if content == b"":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        cmd = [PY, "-m", "sdlora", "metrics", "matrix.csv"]
        if counts is not None:
            cmd.append(f"--counts={counts}")
        cases.append(Case("metrics", name, expect, cmd, folder, "sdlora metrics"))
    return cases


# ---- data: pipelines/prepare.py on crafted and missing CIFAR-100 folders ---------------------


class _Shell:
    """Unpickles by running a shell command, as a crafted file would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def make_cifar(root: Path, marker: Path | None = None, crafted: str = "meta") -> None:
    """``root/cifar-100-python/{train,test,meta}`` of 100 classes; with ``marker``, the
    ``crafted`` file's labels unpickle by running ``touch marker``."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files: dict[str, dict[bytes, Any]] = {}
    for split, per in (("train", 2), ("test", 1)):
        labels = np.tile(np.arange(100), per)
        files[split] = {
            b"filenames": [f"img_{split}_{i:05d}.png".encode() for i in range(labels.size)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": rng.integers(0, 256, (labels.size, 3072), dtype=np.uint8),
        }
    files["meta"] = {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    if marker is not None:
        key = b"fine_label_names" if crafted == "meta" else b"fine_labels"
        files[crafted][key] = _Shell(f"touch {marker}")
    for name, payload in files.items():
        dump_py2(payload, base / name)


def data_cases(tmp: Path) -> list[Case]:
    from sdlora.pipeline.layout import write_tasks

    cases = []

    def add(name: str, expect: str, root: str, marker: Path | None = None) -> None:
        folder = tmp / f"d{len(cases):02d}"
        folder.mkdir(exist_ok=True)
        params = folder / "params.yaml"
        params.write_text(
            "progress: false\n"
            f"data: {{dataset: cifar100, root: {json.dumps(root)}, init_cls: 50, increment: 50,"
            " image_size: 16}\n"
        )
        write_tasks(params, 2)
        cmd = [PY, str(REPO / "pipelines/prepare.py"), "--params", "params.yaml",
               "--task", "0", "--out", "data/prepared/task_00"]  # fmt: skip
        cases.append(Case("data", name, expect, cmd, folder, "prepare", marker))

    for crafted in ("meta", "train"):
        marker = tmp / f"MARKER_{crafted}"
        make_cifar(tmp / f"cifar_{crafted}", marker, crafted)
        add(f"crafted {crafted} pickle runs `touch MARKER`", "refuse",
            str(tmp / f"cifar_{crafted}"), marker)  # fmt: skip
    make_cifar(tmp / "cifar_ok")
    add("official-looking folder (control)", "accept", str(tmp / "cifar_ok"))
    add("missing root", "refuse", str(tmp / "nowhere"))
    (tmp / "empty").mkdir()
    add("empty root folder", "refuse", str(tmp / "empty"))
    (tmp / "a_file").write_text("not a folder\n")
    add("root is a file", "refuse", str(tmp / "a_file"))
    return cases


# ---- the tables -------------------------------------------------------------------------------

COLUMNS = ("one line", "several lines", "traceback", "exit 0", "hang", "accepted", "refused",
           "other exit")  # fmt: skip
HEADINGS = ("answered in one line", "several lines (no traceback)", "tracebacks",
            "exit 0 on a refuse case", "hangs", "accepted (expected)", "refused an accept case",
            "other exit code")  # fmt: skip


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def report(results: list[Result], seconds: float) -> None:
    print(f"\n{len(results)} cases in {seconds:.0f} s\n")
    print("| kind | cases | " + " | ".join(HEADINGS) + " | code ran |")
    print("|---|" + "---:|" * (len(COLUMNS) + 2))
    kinds = [k for k in KINDS if any(r.case.kind == k for r in results)]
    for kind in [*kinds, "total"]:
        rows = [r for r in results if kind in ("total", r.case.kind)]
        c = Counter(r.outcome for r in rows)
        ran = sum(r.code_ran for r in rows)
        label = "**total**" if kind == "total" else kind
        cells = " | ".join(str(c[o]) for o in COLUMNS)
        print(f"| {label} | {len(rows)} | {cells} | {ran} |")
    odd = [r for r in results if r.outcome not in ("one line", "accepted") or r.code_ran]
    print(f"\nNot answered in one line ({len(odd)}):\n")
    print("| kind | case | expected | outcome | exit | s | stderr (first 160 chars) "
          "| last stderr line |")  # fmt: skip
    print("|---|---|---|---|---:|---:|---|---|")
    for r in odd:
        lines = [line for line in r.err.splitlines() if line.strip()]
        last = lines[-1][:120] if len(lines) > 1 else ""
        outcome = r.outcome + (", code ran" if r.code_ran else "")
        rc = "timeout" if r.rc is None else str(r.rc)
        print(f"| {r.case.kind} | {_cell(r.case.name)} | {r.case.expect} | {outcome} | {rc} "
              f"| {r.seconds:.1f} | {_cell(r.err.strip()[:160])} | {_cell(last)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=KINDS, help="these kinds (repeat)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--match", action="append", help="cases whose name holds this (repeat)")
    parser.add_argument("--keep", action="store_true", help="keep the cases' folders")
    args = parser.parse_args()
    kinds = args.only or list(KINDS)
    tmp = Path(tempfile.mkdtemp(prefix="sdlora-bad-inputs-"))
    env = environment(tmp)
    began = time.perf_counter()
    builders = {"params": params_cases, "files": files_cases,
                "metrics": metrics_cases, "data": data_cases}  # fmt: skip
    results = []
    try:
        for kind in kinds:
            (tmp / kind).mkdir()
            for case in builders[kind](tmp / kind):
                if args.match and not any(m in case.name for m in args.match):
                    continue
                result = run_case(case, env, args.timeout)
                results.append(result)
                first = result.err.strip().splitlines()[:1] or [""]
                print(f"{kind:8s} {result.outcome:14s} {result.seconds:5.1f}s  {case.name}: "
                      f"{first[0][:150]}", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        if args.keep:
            print(f"cases kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(results, time.perf_counter() - began)


if __name__ == "__main__":
    main()
