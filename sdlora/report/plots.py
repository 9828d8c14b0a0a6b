"""Figures of a sequence run: accuracy matrix heat map, anytime-accuracy curve, magnitude paths.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no
``pyplot``, so no global figure state and no display needed), writes a PNG atomically (temp
file + ``os.replace``) and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, to_rgba
from matplotlib.figure import Figure

from sdlora.files import atomic_path

DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically; a crash never leaves half an image."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def accuracy_heatmap(matrix: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """The T x T accuracy matrix (percent) as a PNG heat map; see :func:`heatmap_figure`."""
    return _save(heatmap_figure(matrix, title), path)


def heatmap_figure(matrix: np.ndarray, title: str | None = None) -> Figure:
    """Row i = after task i, column j = task j; NaN cells (tasks not yet seen) stay blank and
    the others are annotated with their value (up to T = 25)."""
    mat = np.asarray(matrix, dtype=float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got {mat.shape}")
    t = mat.shape[0]
    side = min(3.0 + 0.55 * t, 14.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = _cmap_with_blank("viridis")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=100.0)
    fig.colorbar(im, ax=ax, label="accuracy (%)", shrink=0.85)
    if t <= 25:
        size = max(5.0, min(10.0, 90.0 / t))
        for i in range(t):
            for j in range(t):
                v = mat[i, j]
                if np.isfinite(v):
                    colour = "black" if v > 60 else "white"  # viridis: light above ~60%
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=size, c=colour)
    ticks = np.arange(t)
    ax.set_xticks(ticks, [str(j) for j in ticks])
    ax.set_yticks(ticks, [str(i) for i in ticks])
    ax.set_xlabel("task j (evaluated)")
    ax.set_ylabel("after task i (trained)")
    ax.set_title(title or "Accuracy on each task (%)")
    return fig


def _cmap_with_blank(name: str) -> Colormap:
    return colormaps[name].with_extremes(bad=to_rgba("white", 0.0))


def accuracy_curve(
    anytime_accuracies: Mapping[str, Sequence[float]] | Sequence[float],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Accuracy on all classes seen so far after each task as a PNG; see :func:`curve_figure`."""
    return _save(curve_figure(anytime_accuracies, title), path)


def _legend_outside(fig: Figure, **kwargs: object) -> None:
    """The figure's legend to the right of the axes, where it covers no line or point."""
    fig.legend(loc="outside right upper", fontsize=8, **kwargs)


def curve_figure(
    anytime_accuracies: Mapping[str, Sequence[float]] | Sequence[float],
    title: str | None = None,
    references: Mapping[str, float] | None = None,
) -> Figure:
    """One line of A_i (percent) per method for a dict, or a single line for a list; each of
    ``references`` (trained on everything at once) a dashed horizontal line."""
    series: Mapping[str, Sequence[float]] = (
        anytime_accuracies
        if isinstance(anytime_accuracies, Mapping)
        else {"": list(anytime_accuracies)}
    )
    if not series or any(len(v) == 0 for v in series.values()):
        raise ValueError("accuracy_curve needs at least one non-empty series")
    references = references or {}
    named = any(series.keys()) or bool(references)
    fig = Figure(figsize=(8.0 if named else 6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    longest = 0
    for name, values in series.items():
        y = np.asarray(values, dtype=float)
        longest = max(longest, len(y))
        ax.plot(np.arange(len(y)), y, marker="o", markersize=4, label=name or None)
    for i, (name, value) in enumerate(references.items()):
        ax.axhline(value, ls="--", c=f"C{(len(series) + i) % 10}", label=f"{name} (all at once)")
    ax.set_xticks(np.arange(longest))
    ax.set_xlim(-0.3, longest - 0.7)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_xlabel("after task i")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_title(title or "Anytime accuracy")
    if named:
        _legend_outside(fig)
    return fig


def magnitude_trajectories(
    history: Sequence[np.ndarray], path: str | Path, title: str | None = None
) -> Path:
    """Each task's magnitude across the sequence as a PNG; see :func:`magnitude_figure`."""
    return _save(magnitude_figure(history, title), path)


def magnitude_figure(history: Sequence[np.ndarray], title: str | None = None) -> Figure:
    """How each task's magnitude alpha_k moves as later tasks are trained.

    ``history[i]`` is the alpha tensor after task i: shape (i + 1, M) (or (i + 1,) for one
    column). Task k's line runs from i = k to the end; with M > 1 it is the mean over the M
    matrices with a min-max band.
    """
    if not history:
        raise ValueError("magnitude_trajectories needs at least one alpha snapshot")
    snaps = []
    for i, a in enumerate(history):
        arr = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=float)
        arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise ValueError(f"history[{i}] must be 1-D or 2-D (tasks x matrices), got {arr.shape}")
        snaps.append(arr)
    n = len(snaps)
    num_tasks = max(s.shape[0] for s in snaps)
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{k % 10}" for k in range(num_tasks)]
    banded = False
    for k in range(num_tasks):
        steps = [i for i in range(n) if snaps[i].shape[0] > k]
        if not steps:
            continue
        rows = np.stack([snaps[i][k] for i in steps])  # (len(steps), M)
        x = np.asarray(steps)
        ax.plot(x, rows.mean(1), marker="o", markersize=3, c=colours[k], label=f"α{k}")
        if rows.shape[1] > 1:
            banded = True
            ax.fill_between(x, rows.min(1), rows.max(1), color=colours[k], alpha=0.12, lw=0)
    ax.set_xticks(np.arange(n))
    ax.set_xlim(-0.3, n - 0.7)
    ax.grid(alpha=0.3)
    ax.set_xlabel("after task i")
    ax.set_ylabel("magnitude α_k" + (" (mean, min-max band)" if banded else ""))
    ax.set_title(title or "Task magnitudes across the sequence")
    if num_tasks == 0:  # a method without magnitudes (frozen, prototype): say so on the plot
        ax.text(0.5, 0.5, "no magnitudes: this method adds no LoRA component",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    elif num_tasks <= 20:
        _legend_outside(fig, title="task k", ncols=1 + num_tasks // 11)
    return fig


def comparison_curve(
    curves: Mapping[str, Sequence[float]],
    references: Mapping[str, float],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Accuracy on all seen classes after each task, one line per method (mean over seeds),
    and each reference trained on everything at once (joint) as a dashed horizontal line."""
    fig = curve_figure(curves, title or "Accuracy on all seen classes", references)
    return _save(fig, path)


def kd_residual_plot(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """SD-LoRA-KD's relative residual rho per task (one line per method and seed) against its
    threshold tau: below the line the new direction was folded into the old ones."""
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    taus: dict[str, float] = {}
    for r in rows:
        series.setdefault((str(r["method"]), int(r["seed"])), []).append(
            (int(r["task"]), float(r["rho"]))
        )
        taus[str(r["method"])] = float(r["tau"])
    methods = sorted(taus)
    for (method, seed), points in sorted(series.items()):
        x, y = zip(*sorted(points), strict=True)
        c = f"C{methods.index(method) % 10}"
        ax.plot(x, y, marker="o", markersize=4, c=c, alpha=0.8, label=f"{method} seed {seed}")
    for method in methods:
        c = f"C{methods.index(method) % 10}"
        ax.axhline(taus[method], ls="--", c=c, label=f"{method}: τ = {taus[method]:g}")
    values = [float(r["rho"]) for r in rows] + list(taus.values())
    low = min((v for v in values if v > 0), default=0.1)
    ax.set_yscale("log")  # rho near 1 and tau far below both readable
    ax.set_ylim(low / 2, 1.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel("task t")
    ax.set_ylabel("relative residual ρ of D_t on earlier directions")
    ax.set_title("SD-LoRA-KD: least-squares fit of each new direction")
    if not rows:
        ax.text(0.5, 0.5, "no SD-LoRA-KD run in this comparison", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    else:
        _legend_outside(fig)
    return _save(fig, path)


def drift_plot(drift: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Feature drift per method: after task i, how far the task-known nearest-class-mean
    accuracy of the earlier tasks fell since each was learned (mean over them; no head)."""
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, values in drift.items():
        y = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=4, label=name)
    ax.axhline(0, c="0.5", lw=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_xlabel("after task i")
    ax.set_ylabel("drop of task-known NCM accuracy on old tasks (points)")
    ax.set_title("Feature drift: old tasks' NCM accuracy, head excluded")
    if drift:
        _legend_outside(fig)
    return _save(fig, path)


def pareto_plot(
    rows: Sequence[Mapping[str, object]],
    front: Sequence[int],
    path: str | Path,
    title: str,
    objective: str = "accuracy",
    budget: float | None = None,
) -> Path:
    """Every trial of a sweep at (stored parameters, ``objective``): the finished ones filled,
    those ASHA stopped hollow at their last report (fewer tasks, so not comparable), the
    front (indices into ``rows``) joined by a line and labelled; the storage budget dashed."""
    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    done = [r for r in rows if r["status"] == "finished"]
    stopped = [r for r in rows if r["status"] == "stopped"]
    if done:
        ax.scatter([r["stored_params"] for r in done], [r[objective] for r in done], s=36,
                   c="C0", label=f"finished ({len(done)})", zorder=3)  # fmt: skip
    if stopped:
        ax.scatter([r["stored_params"] for r in stopped], [r[objective] for r in stopped],
                   s=36, facecolors="none", edgecolors="C7", zorder=2,
                   label=f"stopped by ASHA ({len(stopped)}), at its last task")  # fmt: skip
    points = [rows[i] for i in front]
    if points:
        ax.plot([r["stored_params"] for r in points], [r[objective] for r in points], c="C3",
                marker="*", markersize=13, lw=1.2, drawstyle="steps-post", zorder=4,
                label="Pareto front: nothing stores less and scores more")  # fmt: skip
        for r in points:
            ax.annotate(str(r["trial"]).split("_")[-1], (r["stored_params"], r[objective]),
                        textcoords="offset points", xytext=(6, 4), fontsize=7)  # fmt: skip
    if budget is not None:
        ax.axvline(budget, ls="--", c="0.4", label=f"storage budget {budget:,.0f}")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.margins(x=0.1, y=0.1)
    ax.grid(alpha=0.3)
    ax.set_xlabel("stored parameters (LoRA pairs, magnitudes, head)")
    what = "final accuracy" if objective == "accuracy" else objective.replace("_", " ")
    ax.set_ylabel(f"{what} on all seen classes (%)")
    ax.set_title(title)
    if rows:
        _legend_outside(fig)
    else:
        ax.text(0.5, 0.5, "no trial reported", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def low_loss_path_plot(
    paths: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, seeds: int
) -> Path:
    """Finding 3: accuracy of tasks 0 and 1 along W(lam) = W0 + (1 - lam) dW_1 + lam dW_2
    between the merged models after task 0 and after task 1, one colour per method (mean over
    ``seeds`` seeds): task 0 solid, task 1 dashed."""
    fig = Figure(figsize=(8.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, p) in enumerate(paths.items()):
        c = f"C{i % 10}"
        ax.plot(p["lam"], p["task_0"], marker="o", markersize=3, c=c, label=f"{name}: task 0")
        ax.plot(p["lam"], p["task_1"], marker="s", markersize=3, c=c, ls="--",
                label=f"{name}: task 1")  # fmt: skip
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_xlabel("λ  (0: the merged model after task 0, 1: after task 1)")
    ax.set_ylabel("accuracy (%)")
    note = (f"head after task 1, prediction over the classes of tasks 0 and 1; "
            f"mean over {seeds} seed{'s' * (seeds != 1)}")  # fmt: skip
    ax.set_title(f"Low-loss path: W0 + (1-λ)·ΔW_0 + λ·ΔW_1\n{note}", fontsize=10)
    if paths:
        _legend_outside(fig)
    else:
        ax.text(0.5, 0.5, "no LoRA method in this comparison", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    return _save(fig, path)
