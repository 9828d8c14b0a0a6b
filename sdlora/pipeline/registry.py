"""The registered model: each finished sequence a version, and the gate that names the champion.

The report stage registers the run's served classifier as a new version of
``mlflow.registered_model`` and asks :func:`decide` whether it may take the alias ``champion``
from the current one: its accuracy on the tasks the champion knows may not fall by more than
``mlflow.gate.max_forgetting_points`` against the champion's own, and the tasks the champion
does not know must reach ``mlflow.gate.min_new_task_accuracy``. A version that fails gets the
alias ``candidate`` and the reason. Rolling back is moving the alias
(``MlflowClient().set_registered_model_alias(name, "champion", version)``).

What the gate compares travels with each version as tags (:class:`VersionFacts`): the classes
of every task, the accuracy on each task after the last one and the test counts, so a decision
needs no run or file of the champion's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdlora.config import GateConfig
from sdlora.ops.tracking import SequenceTracker

CHAMPION, CANDIDATE = "champion", "candidate"
TASKS_TAG = "sdlora.tasks"  # JSON: the class names of every task, in order
ACCURACY_TAG = "sdlora.task_accuracy"  # JSON: accuracy (%) on each task after the last
COUNTS_TAG = "sdlora.task_counts"  # JSON: each task's test samples
BASELINE_TAG = "sdlora.gate.baseline_version"  # the champion this version was compared with
DECISION_TAG, REASON_TAG = "sdlora.gate.decision", "sdlora.gate.reason"


@dataclass(frozen=True)
class VersionFacts:
    """What the gate knows of a version: its tasks and its accuracy on each after the last."""

    tasks: list[list[str]]  # class names per task
    accuracy: list[float]  # accuracy (%) on task j after the last task
    counts: list[int]  # test samples of task j

    def pooled(self, start: int, stop: int) -> float:
        """Accuracy on the test samples of tasks ``start..stop-1`` together (NaN: none)."""
        pairs = list(zip(self.accuracy[start:stop], self.counts[start:stop], strict=True))
        n = sum(c for _, c in pairs)
        return sum(a * c for a, c in pairs) / n if n else math.nan

    def tags(self) -> dict[str, str]:
        return {
            TASKS_TAG: json.dumps(self.tasks, ensure_ascii=False),
            ACCURACY_TAG: json.dumps(self.accuracy),
            COUNTS_TAG: json.dumps(self.counts),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionFacts | None:
        """The facts a version carries, or None for a version registered without them."""
        try:
            facts = cls(*(json.loads(tags[t]) for t in (TASKS_TAG, ACCURACY_TAG, COUNTS_TAG)))
        except (KeyError, ValueError, TypeError):
            return None
        sizes = {len(facts.tasks), len(facts.accuracy), len(facts.counts)}
        return facts if len(sizes) == 1 else None


@dataclass(frozen=True)
class Decision:
    """The gate's answer for one version, with the figures it compared."""

    promote: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CANDIDATE


def decide(new: VersionFacts, champion: VersionFacts | None, gate: GateConfig) -> Decision:
    """Whether ``new`` may replace ``champion`` (None: there is none yet) under ``gate``."""
    known = 0 if champion is None else len(champion.tasks)
    if champion is not None and (
        new.tasks[:known] != champion.tasks or new.counts[:known] != champion.counts
    ):
        return Decision(
            False,
            "the champion's tasks are not this version's first tasks (another class order, "
            "other classes or other test data): nothing to compare; promote it by hand if meant",
        )
    figures = {
        "earlier_tasks": float(known),
        "max_forgetting_points": gate.max_forgetting_points,
        "min_new_task_accuracy": gate.min_new_task_accuracy,
    }
    why = []
    if champion is not None:
        before, after = champion.pooled(0, known), new.pooled(0, known)
        drop = before - after
        figures |= {"earlier_accuracy_before": before, "earlier_accuracy_after": after,
                    "earlier_drop_points": drop}  # fmt: skip
        allowed = gate.max_forgetting_points
        moved = (f"fell {drop:.2f} points, {'within' if drop <= allowed else 'more than'} the "
                 f"{allowed:g} allowed" if drop > 0 else f"rose {-drop:.2f} points")  # fmt: skip
        why.append(f"accuracy on the {known} task(s) the champion knows {before:.2f} -> "
                   f"{after:.2f}% ({moved})")  # fmt: skip
    fresh = len(new.tasks) - known
    if fresh:
        acc = new.pooled(known, len(new.tasks))
        figures["new_tasks_accuracy"] = acc
        verb = "reaches" if acc >= gate.min_new_task_accuracy else "is below"
        why.append(f"accuracy on the {fresh} new task(s) {acc:.2f}% {verb} the "
                   f"{gate.min_new_task_accuracy:g}% asked")  # fmt: skip
    forgot = champion is not None and figures["earlier_drop_points"] > gate.max_forgetting_points
    short = fresh > 0 and figures["new_tasks_accuracy"] < gate.min_new_task_accuracy
    if champion is None:
        why.insert(0, "no champion yet")
    return Decision(not (forgot or short), "; ".join(why), figures)


def register_and_gate(
    tracker: SequenceTracker,
    name: str,
    model_id: str,
    facts: VersionFacts,
    gate: GateConfig,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """Register logged model ``model_id`` as a version of ``name`` (once: a re-run finds it),
    decide it against the champion it was first compared with, and move the aliases.

    A version the gate refuses gets ``candidate``; if it was the champion (a re-run under a
    stricter gate), the champion goes back to the version it was compared with. Returns what
    the report shows: name, version, alias, the baseline version, the reason and the figures.
    """
    version = tracker.register_version(name, model_id)
    tracker.tag_version(name, version, {**tags, **facts.tags()})
    recorded = tracker.version(name, version).tags.get(BASELINE_TAG)  # a re-run: the same one
    if recorded is None:
        champion = tracker.version(name, alias=CHAMPION)
        recorded = "" if champion is None or str(champion.version) == version else str(
            champion.version)  # fmt: skip
    before = tracker.version(name, recorded) if recorded else None
    known = None if before is None else VersionFacts.from_tags(before.tags)
    if recorded and known is None:
        decision = Decision(
            False, f"the champion, version {recorded}, carries no task facts (registered by "
            "hand?): nothing to compare; promote this version by hand if meant",
        )  # fmt: skip
    else:
        decision = decide(facts, known, gate)
    kept = ("earlier_accuracy_before", "earlier_accuracy_after", "new_tasks_accuracy")
    gate_tags = {f"sdlora.gate.{k}": f"{decision.figures[k]:.2f}" for k in kept
                 if k in decision.figures}  # fmt: skip
    gate_tags |= {BASELINE_TAG: recorded, DECISION_TAG: decision.alias, REASON_TAG: decision.reason}
    tracker.tag_version(name, version, gate_tags)
    tracker.describe_version(name, version, f"{decision.alias}: {decision.reason}")
    current = tracker.version(name, alias=CHAMPION)
    champion_now = None if current is None else str(current.version)
    if decision.promote:
        tracker.set_alias(name, CHAMPION, version)
        candidate = tracker.version(name, alias=CANDIDATE)
        if candidate is not None and str(candidate.version) == version:
            tracker.set_alias(name, CANDIDATE, None)
    else:
        tracker.set_alias(name, CANDIDATE, version)
        if champion_now == version:  # it was promoted under a looser gate: back to the baseline
            tracker.set_alias(name, CHAMPION, recorded or None)
    return {
        "registered_model": name, "version": version, "alias": decision.alias,
        "compared_with_version": recorded or None, "reason": decision.reason,
        "figures": decision.figures,
    }  # fmt: skip
