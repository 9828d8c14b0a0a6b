"""What sdlora asks of DVC: ``dvc plots`` pages that render with no network, and the experiment a
stage runs in (its name, and the params it started from: :func:`baseline_params`).

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN (``dvc_render``'s ``{scripts}``
placeholder), so offline its plots stay blank. DVC also takes ``--html-template FILE``: a page
with ``{plot_divs}`` where the plots go; a template without ``{scripts}`` gets no CDN tags. The
template written here inlines the three libraries as the one script bundle that the
``vl-convert-python`` package ships (:func:`vl_convert.javascript_bundle`, which sets
``window.vegaEmbed``, the function DVC's plot divs call), so the page needs nothing but itself
and the images DVC copies beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

VEGA_LITE = "5.21"  # DVC 3's plot templates are Vega-Lite v5 specs: the last v5 the bundle has
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")  # what dvc_render replaces
OUT_DIR = "dvc_plots"  # DVC's default output folder (git-ignored)
TEMPLATE_NAME = ".offline_template.html"  # written into the output folder


def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one classic script that defines ``window.vegaEmbed``."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    if found := [p for p in PLACEHOLDERS if p in bundle]:  # DVC would replace it inside the JS
        raise RuntimeError(f"vl_convert's bundle contains DVC's placeholder {found[0]}")
    return bundle.replace("</script", "<\\/script")  # cannot end the inline <script> early


def offline_template(bundle: str | None = None) -> str:
    """An HTML template for ``dvc plots --html-template``: the libraries inline, no CDN."""
    script = vega_bundle() if bundle is None else bundle
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        "<title>DVC plots</title>\n<script>\n" + script + "\n</script>\n"
        "<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n"
    )


def write_template(path: str | Path) -> Path:
    """Write :func:`offline_template` to ``path`` (its folder created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(offline_template(), encoding="utf8")
    return path


def dvc_plots_command(
    diff: Sequence[str] | None, out: str | Path, template: str | Path, open_page: bool = False
) -> list[str]:
    """The ``dvc plots show`` (``diff`` None) or ``dvc plots diff REV...`` command line."""
    verb = ["show"] if diff is None else ["diff", *diff]
    extra = ["--open"] if open_page else []
    return [sys.executable, "-m", "dvc", "plots", *verb, "--out", str(out),
            "--html-template", str(template), *extra]  # fmt: skip


def render(
    diff: Sequence[str] | None = None, out: str | Path = OUT_DIR, open_page: bool = False
) -> int:
    """Write the offline template into ``out``, then run DVC's plots command; its exit code.

    ``diff``: None for ``dvc plots show`` (the workspace); a list of revisions for ``dvc plots
    diff`` (empty: the workspace against HEAD). DVC writes ``out/index.html``; no page (DVC
    found no plot, and said so) is exit code 1. Outside a DVC project: ``ValueError``.
    """
    if not Path("dvc.yaml").is_file():
        raise ValueError(f"no dvc.yaml in {Path.cwd()}: run this in the project's folder")
    page = Path(out) / "index.html"
    page.unlink(missing_ok=True)  # DVC writes no page when it finds no plot: none is stale
    template = write_template(Path(out) / TEMPLATE_NAME)
    code = subprocess.run(dvc_plots_command(diff, out, template, open_page), check=False).returncode
    return code or (0 if page.is_file() else 1)


EXP_NAME_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for every stage it runs: the experiment's name
BASELINE_ENV = "DVC_EXP_BASELINE_REV"  # set with it: the commit the experiment starts from


def experiment_name() -> str | None:
    """The name of the DVC experiment this stage runs in (`dvc exp run`), or None."""
    return os.environ.get(EXP_NAME_ENV) or None


def baseline_params(params_file: str | Path = "params.yaml") -> tuple[str, str] | None:
    """``(commit, text)``: ``params_file`` as the baseline commit holds it (the experiment's
    baseline under `dvc exp run`, else HEAD), which `dvc params diff` compares against; None
    outside a git checkout or where that commit lacks the file."""
    path = Path(params_file).resolve()
    rev = os.environ.get(BASELINE_ENV) or "HEAD"
    try:
        show = subprocess.run(
            ["git", "show", f"{rev}:./{path.name}"], cwd=path.parent,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        commit = subprocess.run(
            ["git", "rev-parse", "--short=8", rev], cwd=path.parent,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):  # no git here
        return None
    if show.returncode or commit.returncode:
        return None
    return commit.stdout.strip(), show.stdout
