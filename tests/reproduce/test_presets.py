"""Presets: every one validates, and its values are SPEC §6's, read from SPEC itself."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdlora.cli import main, sdlora
from sdlora.config import ConfigError
from sdlora.errors import Failed
from sdlora.reproduce.presets import PRESETS_DIR, all_presets, benchmarks, load_preset
from sdlora.reproduce.run import gpu_changes
from sdlora.reproduce.table import markdown, rows_against_published

ROOT = Path(__file__).resolve().parents[2]
N = r"(\d+(?:\.\d+)?)"  # a figure, as SPEC writes them
# SPEC lives beside the project (../shared/SPEC.md); SDLORA_SPEC names it elsewhere
SPEC = Path(os.environ.get("SDLORA_SPEC", ROOT.parent / "shared" / "SPEC.md"))
BENCHMARKS = {  # preset -> (SPEC's name for it, its tasks in SPEC's words)
    "cifar100-10": "CIFAR-100",
    "imagenet-r-5": "ImageNet-R",
    "imagenet-r-10": "ImageNet-R",
    "imagenet-r-20": "ImageNet-R",
    "imagenet-a-10": "ImageNet-A",
    "domainnet-5": "DomainNet",
    "cub200-10": "CUB-200",
}


def test_the_seven_benchmarks_in_two_flavours_all_validate() -> None:
    assert benchmarks() == sorted(BENCHMARKS)
    presets = all_presets()  # loading validates every variant at every seed
    assert len(presets) == 14
    for p in presets:
        for label in p.variants:
            cfg = p.config(label, p.seeds[0])
            schedule = cfg.model.rank_schedule or []
            assert all(first < p.num_tasks for first, _ in schedule), (p.name, label)
            assert cfg.data.root is not None


def _spec() -> str:
    if not SPEC.is_file():
        pytest.skip(f"SPEC not found at {SPEC} (set SDLORA_SPEC to its path)")
    text = SPEC.read_text(encoding="utf-8")
    return " ".join(text.split())  # one line: SPEC wraps its sentences


def _find(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text)
    assert match is not None, f"SPEC no longer says {pattern!r}: re-check the presets against it"
    return match


def test_presets_hold_spec_section_6() -> None:
    spec = _spec()
    section6 = spec[spec.index("## 6. Published protocol") :]
    tag = _find(r"timm `([\w.]+)` \(what the public code loads\)", section6)[1]
    m = _find(r"LoRA rank (\d+) on q and v of all (\d+) blocks\. Batch (\d+)\.", section6)
    rank, batch = int(m[1]), int(m[3])
    paper = _find(
        r"paper: Adam, lr ([\d.e-]+), (\d+) epochs on ImageNet-R, (\d+) on DomainNet, (\d+) "
        r"elsewhere; (\d+) runs",
        section6,
    )
    code = _find(
        rf"public code \(produced its logs\): SGD momentum {N}, no weight decay, constant lr "
        r"\(CIFAR-100 ([\d.e-]+); ImageNet-R ([\d.e-]+), ([\d.e-]+) for the 10-task log; "
        r"ImageNet-A ([\d.e-]+)\), (\d+) epochs",
        section6,
    )
    splits = _find(
        r"CIFAR-100 (\d+) x (\d+); ImageNet-R (\d+) classes in (\d+) / (\d+) / (\d+) tasks; "
        r"ImageNet-A (\d+) x (\d+); DomainNet (\d+) classes, (\d+) x (\d+); CUB-200 (\d+) x (\d+)",
        section6,
    )
    pub = _find(
        rf"Paper \(mean of 5 runs, final Acc / AAA\): ImageNet-R N=5 {N} / {N}, N=10 "
        rf"{N} / {N}, N=20 {N} / {N}; ImageNet-A {N} / {N}; "
        rf"DomainNet {N} / {N}; CIFAR-100 {N} / {N}; "
        rf"CUB-200 {N} / {N}",
        section6,
    )
    logs = _find(
        rf"Public code logs \(one run each\): CIFAR-100 {N} / {N}; ImageNet-R 5 tasks "
        rf"{N} / {N}, 10 tasks {N} / {N}, 20 tasks {N} / {N}; "
        rf"ImageNet-A {N} / {N}",
        section6,
    )
    magnitude = _find(r"the public code uses (0\.\d+), so its preset sets", spec)[1]
    rr = _find(r"is \[\[0, 10\], \[4, 8\], \[8, 6\]\]", spec)[0].removeprefix("is ")

    f = lambda i: float(pub[i])  # noqa: E731
    g = lambda i: float(logs[i])  # noqa: E731
    expected = {  # preset -> (classes in task 0 / later, tasks, paper epochs, code lr, paper, log)
        "cifar100-10": (int(splits[2]), int(splits[1]), float(paper[4]), float(code[2]),
                        (f(11), f(12)), (g(1), g(2))),
        "imagenet-r-5": (200 // int(splits[4]), int(splits[4]), float(paper[2]), float(code[3]),
                         (f(1), f(2)), (g(3), g(4))),
        "imagenet-r-10": (200 // int(splits[5]), int(splits[5]), float(paper[2]),
                          float(code[4]), (f(3), f(4)), (g(5), g(6))),
        "imagenet-r-20": (200 // int(splits[6]), int(splits[6]), float(paper[2]),
                          float(code[3]), (f(5), f(6)), (g(7), g(8))),
        "imagenet-a-10": (int(splits[8]), int(splits[7]), float(paper[4]), float(code[5]),
                          (f(7), f(8)), (g(9), g(10))),
        "domainnet-5": (int(splits[11]), int(splits[10]), float(paper[3]), None,
                        (f(9), f(10)), None),
        "cub200-10": (int(splits[13]), int(splits[12]), float(paper[4]), None,
                      (f(13), f(14)), None),
    }  # fmt: skip
    assert int(splits[3]) == 200 and int(splits[9]) == 345
    for name, (per_task, tasks, epochs, code_lr, published, logged) in expected.items():
        for flavour in ("paper", "code"):
            p = load_preset(f"{name}/{flavour}")
            cfg = p.config("sdlora", p.seeds[0])
            assert cfg.backbone.name == tag and cfg.backbone.weights == "timm", p.name
            assert cfg.model.rank == rank and cfg.model.targets == ["q", "v"], p.name
            assert cfg.model.blocks is None and cfg.train.batch_size == batch, p.name
            assert (cfg.data.init_cls, cfg.data.increment) == (per_task, per_task), p.name
            assert p.num_tasks == tasks, p.name
            assert cfg.data.image_size == 224 and cfg.data.augment == "crop_flip", p.name
            assert cfg.train.weight_decay == 0.0, p.name
            if flavour == "paper":
                assert cfg.train.optimizer == "adam", p.name
                assert cfg.train.lr == float(paper[1]) and cfg.train.epochs == epochs, p.name
                assert len(p.seeds) == int(paper[5]), p.name
                assert (cfg.model.compat, cfg.model.magnitude_init) == ("paper", 1.0), p.name
                assert cfg.data.input_norm == "backbone", p.name
                got = p.published
                assert (got["final_accuracy"], got["average_anytime_accuracy"]) == published
                assert set(p.variants) == {"sdlora", "sdlora_rr", "sdlora_kd"}, p.name
                schedule = p.config("sdlora_rr", p.seeds[0]).model.rank_schedule
                full = [tuple(e) for e in json.loads(rr)]  # SPEC's list, as JSON
                assert schedule == [e for e in full if e[0] < tasks], p.name
            else:
                assert cfg.train.optimizer == "sgd" and cfg.train.momentum == float(code[1])
                assert cfg.train.epochs == int(code[6]) and len(p.seeds) == 1, p.name
                assert cfg.model.compat == "reference_code", p.name
                assert cfg.model.magnitude_init == float(magnitude), p.name
                assert cfg.data.input_norm == "none", p.name
                if code_lr is not None:
                    assert cfg.train.lr == code_lr, p.name
                got = p.published
                if logged is None:
                    assert got is None, p.name
                else:
                    assert (got["final_accuracy"], got["average_anytime_accuracy"]) == logged


def test_unknown_or_incomplete_names_list_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"preset 'imagenet-r-10' not found; name a flavour "
                       r"too: imagenet-r-10/paper, imagenet-r-10/code"):  # fmt: skip
        load_preset("imagenet-r-10")
    with pytest.raises(ConfigError, match=r"'cifar10/paper' not found; known: cifar100-10/paper"):
        load_preset("cifar10/paper")


def test_a_bad_preset_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "presets"
    shutil.copytree(PRESETS_DIR, folder)
    file = folder / "cub200-10.yaml"
    file.write_text(file.read_text().replace("published: null", "publshed: null"))
    with pytest.raises(ConfigError, match=r"cub200-10.yaml: flavours.code.publshed: unknown key"):
        load_preset("cub200-10/code", folder)
    shutil.copy(PRESETS_DIR / "cub200-10.yaml", file)
    file.write_text(file.read_text().replace("title:", "titel:"))
    with pytest.raises(ConfigError, match=r"cub200-10.yaml.titel: unknown key"):
        load_preset("cub200-10/code", folder)
    file.write_text("\n".join(ln for ln in file.read_text().splitlines() if "titel" not in ln))
    with pytest.raises(ConfigError, match=r"cub200-10.yaml: missing key 'title'"):
        load_preset("cub200-10/code", folder)
    shutil.copy(PRESETS_DIR / "cub200-10.yaml", file)
    file.write_text(file.read_text().replace("init_cls: 20", "init_cls: 0"))
    with pytest.raises(ConfigError, match=r"data.init_cls"):
        load_preset("cub200-10/paper", folder)


def test_list_prints_one_line_per_preset_with_its_gpu_hours() -> None:
    result = CliRunner().invoke(sdlora, ["reproduce", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 14
    for line, p in zip(lines, all_presets(), strict=True):
        assert line.startswith(p.name) and p.title in line
        assert f"~{p.gpu_hours():.1f} GPU h (estimate)" in line
    shown = CliRunner().invoke(sdlora, ["reproduce", "imagenet-r-10/code", "--show"])
    assert shown.exit_code == 0 and "optimizer: sgd" in shown.output


def test_an_unknown_variant_is_refused_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "imagenet-r-10/code", "--variant", "sdlora_kd"]) == 2
    assert capsys.readouterr().err == (
        "sdlora reproduce: error: --variant sdlora_kd: imagenet-r-10/code has the variants "
        "['sdlora']\n"
    )


def test_no_gpu_refuses_the_full_protocol_with_its_cost() -> None:
    p = load_preset("imagenet-r-10/paper")
    with pytest.raises(Failed, match=r"needs a GPU \(about 29\.\d GPU hours: 15 runs of 10 tasks, "
                       r"30 epochs.*add --smoke"):  # fmt: skip
        gpu_changes(p, p.config("sdlora", 1993), gpus=0)


def test_table_sets_each_variant_against_the_published_figures() -> None:
    p = load_preset("imagenet-r-10/paper")
    rows = [
        {"label": "sdlora", "method": "sdlora", "seeds": [1, 2], "final_accuracy": (77.0, 0.5),
         "average_anytime_accuracy": (81.0, 0.4), "forgetting": (3.0, 0.1)},
        {"label": "sdlora_kd", "method": "sdlora_kd", "seeds": [1, 2],
         "final_accuracy": (70.0, 1.0), "average_anytime_accuracy": (75.0, 1.0),
         "forgetting": None},
    ]  # fmt: skip
    out = rows_against_published(rows, p)
    assert out[0]["delta"] == {"final_accuracy": -0.34, "average_anytime_accuracy": -1.04}
    assert out[1]["published"] is None
    text = markdown(p, out)
    assert (
        "| sdlora | 2 | 77.00 ± 0.50 | 77.34 | -0.34 | 81.00 ± 0.40 | 82.04 | -1.04 | within "
        "1 point |" in text
    )
    assert "| sdlora_kd | 2 | 70.00 ± 1.00 | — | — |" in text and "nothing published" in text
    assert "not comparable" in markdown(p, out, smoke=True)
