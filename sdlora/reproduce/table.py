"""The reproduced-vs-published table: each variant's mean ± std next to SPEC §6's figures."""

from __future__ import annotations

from typing import Any

from sdlora.core.metrics import tidy
from sdlora.reproduce.presets import METRICS, Preset

TOLERANCE = 1.0  # points: "a faithful implementation ... should land within about one point"
SOURCE = {"paper": "paper, mean of 5 runs", "code": "public code's log, 1 run"}
HEADER = (
    "variant", "runs", "final acc", "published", "Δ", "AAA", "published", "Δ", "verdict",
)  # fmt: skip


def rows_against_published(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """The compare stage's summary rows, each with ``published`` (the SPEC §6 figures, for the
    ``sdlora`` variant only) and ``delta`` (reproduced mean - published, points)."""
    out = []
    for row in rows:
        published = preset.published if row["label"] == "sdlora" else None
        delta = None
        if published:
            delta = {k: tidy(row[k][0] - published[k]) for k in METRICS if row[k] is not None}
        keep = {k: row[k] for k in ("label", "method", "seeds", *METRICS, "forgetting")}
        out.append({**keep, "published": published, "delta": delta})
    return out


def verdict(delta: dict[str, float] | None, smoke: bool) -> str:
    """Whether the final accuracy lands within :data:`TOLERANCE` of the published one."""
    if smoke:
        return "smoke: not comparable"
    if not delta:
        return "nothing published"
    d = delta["final_accuracy"]
    return f"within {TOLERANCE:g} point" if abs(d) <= TOLERANCE else f"off by {abs(d):.2f}"


def _stat(stat: tuple[float, float] | None, runs: int) -> str:
    if stat is None:
        return "—"
    return f"{stat[0]:.2f} ± {stat[1]:.2f}" if runs > 1 else f"{stat[0]:.2f}"


def markdown(preset: Preset, rows: list[dict[str, Any]], smoke: bool = False) -> str:
    """The table as Markdown, under a line that says what was run and what it is compared with."""
    what = ("SMOKE RUN (generated stand-in data, 2 tasks, a tiny random ViT): the figures check "
            "the code path and are not comparable with the published ones"
            if smoke else f"published: {SOURCE[preset.flavour]} (SPEC §6)")  # fmt: skip
    lines = [
        f"# {preset.title}: {preset.name}",
        "",
        what,
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEADER))) + "|",
    ]
    for row in rows:
        runs = len(row["seeds"])
        pub = row["published"] or {}
        delta = row["delta"] or {}
        cells = [row["label"], str(runs)]
        for k in METRICS:
            cells += [
                _stat(row[k], runs),
                f"{pub[k]:.2f}" if k in pub else "—",
                f"{delta[k]:+.2f}" if k in delta else "—",
            ]
        cells.append(verdict(row["delta"], smoke))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
