"""`python -m sdlora plots`: DVC's plot pages with Vega inline, so nothing is fetched to render."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdlora.ops.dvc import PLACEHOLDERS, offline_template, vega_bundle

DVC_YAML = """\
plots:
  - Accuracy after each task:
      template: linear
      x: task
      y:
        results/curve.csv: accuracy
"""
# a URL the page would fetch: <script src>, <link href>, <img src>, CSS url(), @import
FETCHED = re.compile(
    r"""(?:\bsrc|\bhref)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import"""
)


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    return env


def _run(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_template_inlines_vega_and_keeps_dvc_placeholders_but_the_cdn_one() -> None:
    bundle = vega_bundle()
    assert "window.vegaEmbed=" in bundle and "</script" not in bundle
    page = offline_template(bundle)
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # where DVC puts its CDN <script src=...> tags
    assert not FETCHED.search(page) and bundle in page
    assert not any(p in bundle for p in PLACEHOLDERS)


def test_offline_template_names_a_placeholder_inside_the_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import vl_convert

    monkeypatch.setattr(vl_convert, "javascript_bundle", lambda **_: "x = '{plot_divs}';")
    with pytest.raises(RuntimeError, match=r"contains DVC's placeholder \{plot_divs\}"):
        vega_bundle()


@pytest.mark.slow  # two DVC runs and a git commit: about 6 s
def test_show_and_diff_pages_hold_the_code_and_the_data_and_fetch_nothing(tmp_path: Path) -> None:
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "results").mkdir()
    curve = tmp_path / "results" / "curve.csv"
    curve.write_text("task,accuracy\n0,91.25\n1,77.50\n")
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "commit", "-qm", "baseline")
    curve.write_text("task,accuracy\n0,91.25\n1,64.75\n")

    printed = _run(tmp_path, sys.executable, "-m", "sdlora", "plots")
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert (tmp_path / "dvc_plots" / "index.html").as_uri() in printed
    assert "window.vegaEmbed=" in page and "vegaEmbed('#" in page  # the code and its call
    assert '"accuracy": "64.75"' in page and "Accuracy after each task" in page  # the data
    assert not FETCHED.search(page) and "cdn.jsdelivr" not in page

    _run(tmp_path, sys.executable, "-m", "sdlora", "plots", "--diff", "--out", "cmp")
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert '"accuracy": "77.50", "rev": "HEAD"' in page  # the committed baseline
    assert '"accuracy": "64.75", "rev": "workspace"' in page
    assert not FETCHED.search(page)


def test_plots_refuses_a_folder_without_dvc_yaml_and_a_project_without_plots(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdlora", "plots"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"sdlora plots: error: no dvc.yaml in {tmp_path}: run this in the project's folder\n"
    )
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    done = subprocess.run(
        [sys.executable, "-m", "sdlora", "plots"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "No plots were loaded" in done.stderr
