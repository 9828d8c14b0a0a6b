"""Task records into the per-task metrics MLflow gets."""

from __future__ import annotations

import pytest

from sdlora.core.records import task_metrics


def test_task_metrics_weight_by_test_counts(records: list[dict]) -> None:
    m = task_metrics(records, 1)
    assert m["accuracy"] == pytest.approx((60 * 10 + 80 * 30) / 40)
    assert m["forgetting"] == pytest.approx(30.0)
    assert m["accuracy_task_00"] == 60.0 and m["accuracy_task_01"] == 80.0
    assert m["train_loss"] == 2.0 and m["epoch_seconds"] == 2.0 and m["samples_per_second"] == 20
    assert m["stored_params"] == 20 and m["stored_bytes"] == 80 and m["rank"] == 4
    assert task_metrics(records, 0)["accuracy"] == 90.0


def test_a_task_trained_without_epochs_logs_no_training_cost(records: list[dict]) -> None:
    """A prototype task has no epochs: its training metrics are NaN, which MLflow never gets."""
    records[1]["epochs"] = []
    m = task_metrics(records, 1)
    assert all(m[k] != m[k] for k in ("train_loss", "epoch_seconds", "samples_per_second"))
    assert m["accuracy"] == pytest.approx((60 * 10 + 80 * 30) / 40)
