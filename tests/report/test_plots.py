"""sdlora.report.plots: each figure is a readable PNG written atomically, with no pyplot state."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlora.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _matrix(t: int = 4) -> np.ndarray:
    m = np.full((t, t), np.nan)
    for i in range(t):
        m[i, : i + 1] = 90.0 - 5.0 * (i - np.arange(i + 1))
    return m


def _check_png(path: Path) -> tuple[int, int]:
    """A complete, decodable PNG of plausible size with more than one colour."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.load()  # decodes every byte: a truncated file fails here
        w, h = im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert 300 <= w <= 3000 and 200 <= h <= 3000, (w, h)
    assert colours is None or len(colours) > 10  # not a blank canvas
    assert _leftovers(path.parent) == []  # the temp file was renamed away
    return w, h


def _leftovers(folder: Path) -> list[str]:
    """Temporary files in ``folder``: sdlora.files writes ``.{name}.{pid}.{hex}.tmp``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def test_failed_save_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "curve.png"
    out.write_bytes(b"old")
    written: list[Path] = []

    def half_written(self: object, fname: Path, **kwargs: object) -> None:
        Path(fname).write_bytes(PNG_MAGIC)  # half an image, then the disk fills up
        written.append(Path(fname))
        assert _leftovers(tmp_path) == [Path(fname).name]  # the check sees a temp file
        raise OSError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        plots.accuracy_curve([95.0, 90.0], out)
    assert [w.parent for w in written] == [tmp_path]
    assert written[0].name.startswith(".curve.png.") and written[0].name.endswith(".tmp")
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_accuracy_heatmap_png(tmp_path: Path) -> None:
    out = plots.accuracy_heatmap(_matrix(), tmp_path / "sub" / "heat.png")
    assert out == tmp_path / "sub" / "heat.png"
    _check_png(out)


def test_heatmap_blank_above_diagonal_and_annotated() -> None:
    m = _matrix(4)
    fig = plots.heatmap_figure(m)
    ax = fig.axes[0]
    data = ax.images[0].get_array()
    assert np.ma.getmaskarray(data).tolist() == np.isnan(m).tolist()
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 10  # the 4*5/2 cells on and below the diagonal
    assert "90.0" in texts and "75.0" in texts
    assert "after task i" in ax.get_ylabel() and "task j" in ax.get_xlabel()


def test_heatmap_rejects_non_square(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plots.accuracy_heatmap(np.zeros((2, 3)), tmp_path / "x.png")


def test_accuracy_curve_list_and_dict(tmp_path: Path) -> None:
    _check_png(plots.accuracy_curve([95.0, 90.0, 85.0], tmp_path / "one.png"))
    series = {"sdlora": [95.0, 90.0, 88.0], "seq_lora": [95.0, 60.0, 40.0]}
    _check_png(plots.accuracy_curve(series, tmp_path / "two.png"))
    ax = plots.curve_figure(series).axes[0]
    assert [line.get_label() for line in ax.lines] == ["sdlora", "seq_lora"]
    assert ax.lines[1].get_ydata().tolist() == [95.0, 60.0, 40.0]
    assert _legend_entries(ax.figure) == ["sdlora", "seq_lora"]


def _legend_entries(fig) -> list[str]:
    """The figure's legend texts, checked to lie clear of every axes (covering no line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1, legends
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers the axes"
    return [t.get_text() for t in legends[0].get_texts()]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every figure the plots module saves, kept for inspection."""
    kept: list = []
    save = plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def test_no_legend_covers_a_plot(tmp_path: Path, figures: list) -> None:
    """Every plot with a legend puts it beside the axes, however the lines run."""
    curves = {"sdlora": [95.0, 20.0, 5.0], "seq_lora": [5.0, 60.0, 95.0]}
    plots.comparison_curve(curves, {"joint": 50.0}, tmp_path / "c.png")
    plots.drift_plot({"sdlora": [0.0, 5.0], "seq_lora": [3.0, 1.0]}, tmp_path / "d.png")
    kd = [{"method": "sdlora_kd", "seed": s, "task": t, "rho": 0.01 + 0.3 * t, "tau": 0.1}
          for s in (0, 1) for t in (1, 2, 3)]  # fmt: skip
    plots.kd_residual_plot(kd, tmp_path / "k.png")
    path = {"lam": [0.0, 0.5, 1.0], "task_0": [90.0, 50.0, 10.0], "task_1": [5.0, 50.0, 95.0]}
    plots.low_loss_path_plot({"sdlora": path, "seq_lora": path}, tmp_path / "p.png", 3)
    trials = [{"trial": f"t_{i}", "status": "finished", "stored_params": 100.0 * i,
               "accuracy": 10.0 * i} for i in range(1, 5)]  # fmt: skip
    plots.pareto_plot(trials, [0, 3], tmp_path / "f.png", "sweep")
    plots.magnitude_trajectories([np.ones((1, 2)), np.ones((2, 2))], tmp_path / "m.png")
    entries = [_legend_entries(fig) for fig in figures]
    assert entries[0] == ["sdlora", "seq_lora", "joint (all at once)"]
    assert entries[3] == [f"{m}: task {t}" for m in ("sdlora", "seq_lora") for t in (0, 1)]
    assert len(entries) == 6


def test_low_loss_path_plot_says_what_it_plots(tmp_path: Path, figures: list) -> None:
    path = {"lam": [i / 10 for i in range(11)], "task_0": [80.0] * 11, "task_1": [50.0] * 11}
    _check_png(plots.low_loss_path_plot({"sdlora": path}, tmp_path / "p.png", 3))
    ax = figures[0].axes[0]
    assert ax.lines[0].get_xdata().tolist() == path["lam"]
    assert "head after task 1" in ax.get_title() and "mean over 3 seeds" in ax.get_title()


def test_magnitude_plot_of_a_method_without_magnitudes(tmp_path: Path) -> None:
    """frozen and prototype add no component: the plot says so instead of a blank legend."""
    history = [np.zeros((0, 1)) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" would raise
        _check_png(plots.magnitude_trajectories(history, tmp_path / "none.png"))
    ax = plots.magnitude_figure(history).axes[0]
    assert not ax.lines and "no magnitudes" in ax.texts[0].get_text()


def test_magnitude_trajectories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    history = [1.0 + 0.1 * rng.standard_normal((i + 1, 4)) for i in range(3)]
    _check_png(plots.magnitude_trajectories(history, tmp_path / "alpha.png"))
    ax = plots.magnitude_figure(history).axes[0]
    assert len(ax.lines) == 3  # one line per task
    # task 1's line starts after task 1 and follows the mean over matrices
    assert ax.lines[1].get_xdata().tolist() == [1, 2]
    np.testing.assert_allclose(
        ax.lines[1].get_ydata(), [history[1][1].mean(), history[2][1].mean()]
    )
    assert len(ax.collections) == 3  # min-max bands (M = 4)


def test_magnitude_single_column_has_no_band() -> None:
    history = [np.array([1.0]), np.array([[1.1], [0.9]])]
    ax = plots.magnitude_figure(history).axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 0


def test_no_pyplot_and_no_ray_or_dvc(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from sdlora.ops import tracking\nfrom sdlora.report import plots\n"
        f"plots.accuracy_curve([1.0, 2.0], {str(tmp_path / 'c.png')!r})\n"
        "bad = [m for m in ('matplotlib.pyplot', 'ray', 'dvc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
