"""The gate (issue 20): a new version takes `champion` only if it keeps the accuracy on the tasks
the champion knows and learns the new ones; re-decided under another gate, the aliases follow."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from sdlora.config import GateConfig
from sdlora.ops.tracking import SequenceTracker, resolve_tracking_uri
from sdlora.pipeline.registry import (
    BASELINE_TAG,
    VersionFacts,
    decide,
    register_and_gate,
)

TWO = VersionFacts([["a", "b"], ["c"]], [90.0, 80.0], [10, 30])  # pooled: 82.5
THREE = VersionFacts([["a", "b"], ["c"], ["d", "e"]], [85.0, 78.0, 95.0], [10, 30, 20])


def test_pooled_accuracy_weights_tasks_by_their_test_samples() -> None:
    assert TWO.pooled(0, 2) == 82.5 and THREE.pooled(0, 2) == 79.75
    assert THREE.pooled(2, 3) == 95.0 and math.isnan(THREE.pooled(3, 3))
    assert VersionFacts.from_tags(THREE.tags()) == THREE
    assert VersionFacts.from_tags({}) is None


def test_the_first_version_is_promoted_if_it_learns_its_tasks() -> None:
    first = decide(TWO, None, GateConfig())
    assert first.promote and first.reason == (
        "no champion yet; accuracy on the 2 new task(s) 82.50% reaches the 0% asked"
    )
    assert first.figures["new_tasks_accuracy"] == 82.5
    assert not decide(TWO, None, GateConfig(min_new_task_accuracy=90)).promote


@pytest.mark.parametrize(
    ("gate", "promote", "reason"),
    [
        (
            GateConfig(max_forgetting_points=5),
            True,
            "82.50 -> 79.75% (fell 2.75 points, within the 5 allowed)",
        ),
        (GateConfig(max_forgetting_points=2), False, "(fell 2.75 points, more than the 2 allowed)"),
        (GateConfig(min_new_task_accuracy=96), False, "new task(s) 95.00% is below the 96% asked"),
    ],
)
def test_a_new_task_is_judged_by_what_it_costs_the_old_ones_and_what_it_learns(
    gate: GateConfig, promote: bool, reason: str
) -> None:
    decision = decide(THREE, TWO, gate)
    assert decision.promote is promote and reason in decision.reason
    assert decision.figures["earlier_drop_points"] == pytest.approx(2.75)


def test_a_champion_of_other_tasks_is_not_compared() -> None:
    other = VersionFacts([["b", "a"], ["c"]], [90.0, 80.0], [10, 30])
    decision = decide(THREE, other, GateConfig(max_forgetting_points=100))
    assert not decision.promote and "not this version's first tasks" in decision.reason


def _logged_model(name: str) -> str:
    model = mlflow.initialize_logged_model(name=name)
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def test_versions_take_aliases_as_the_gate_decides_and_a_rerun_redecides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = SequenceTracker()
    tracker.open(None, "gate", root=tmp_path, params={})
    client = MlflowClient(resolve_tracking_uri(None, tmp_path))
    first, second = _logged_model("m"), _logged_model("m")
    strict, loose = GateConfig(max_forgetting_points=2), GateConfig(max_forgetting_points=5)

    one = register_and_gate(tracker, "digits", first, TWO, strict, {"x": "1"})
    assert (one["version"], one["alias"], one["compared_with_version"]) == ("1", "champion", None)
    two = register_and_gate(tracker, "digits", second, THREE, strict, {})
    assert (two["version"], two["alias"], two["compared_with_version"]) == ("2", "candidate", "1")
    aliases = client.get_registered_model("digits").aliases
    assert aliases == {"champion": 1, "candidate": 2}

    again = register_and_gate(tracker, "digits", second, THREE, loose, {})  # the gate loosened
    assert (again["version"], again["alias"]) == ("2", "champion")  # no third version
    assert client.get_registered_model("digits").aliases == {"champion": 2}
    assert client.get_model_version("digits", "2").tags[BASELINE_TAG] == "1"

    back = register_and_gate(tracker, "digits", second, THREE, strict, {})  # and tightened
    assert back["alias"] == "candidate" and back["compared_with_version"] == "1"
    assert client.get_registered_model("digits").aliases == {"champion": 1, "candidate": 2}
    tags = client.get_model_version("digits", "1").tags
    assert tags["x"] == "1" and VersionFacts.from_tags(tags) == TWO
    tracker.close()


def test_a_version_that_gains_on_the_old_tasks_passes_a_zero_forgetting_gate() -> None:
    better = VersionFacts(THREE.tasks, [95.0, 90.0, 95.0], THREE.counts)
    decision = decide(better, TWO, GateConfig(max_forgetting_points=0))
    assert decision.promote and "82.50 -> 91.25% (rose 8.75 points)" in decision.reason
