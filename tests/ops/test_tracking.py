"""sdlora.ops.tracking against a real SQLite MLflow store under tmp_path (nothing leaves the
box)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pytest
import timm
import torch
from mlflow import MlflowClient

from sdlora.ops.tracking import (
    EXPERIMENT_KIND,
    KIND_TAG,
    TRUNCATED,
    SequenceTracker,
    TrackingError,
    flatten_params,
    git_commit,
    portable_uri,
    resolve_tracking_uri,
    ui_path,
    ui_url,
)
from sdlora.ops.tracking import MAX_PARAM_VAL_LENGTH as LIMIT
from sdlora.report import plots

CONFIG = {
    "seed": 1,
    "data": {"dataset": "digits", "tasks": 3, "domains": ["a", "b"]},
    "backbone": {"name": "vit_tiny_patch16_224", "file": None},
    "model": {"method": "sdlora", "rank": 4, "extra": {}},
}


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No telemetry, no ambient URI, cwd in tmp_path; the global URI and active run restored."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.chdir(tmp_path)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module: creating its tables takes ~2 s, so do it once."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow fixes the store's default ./mlruns on first use: keep it here
        MlflowClient(resolve_tracking_uri(None, root)).search_experiments()
    return root


def _open(store: Path, experiment: str, **kw) -> tuple[SequenceTracker, str]:
    tracker = SequenceTracker()
    params = kw.pop("params", flatten_params(CONFIG))
    run_id = tracker.open(None, experiment, root=store, params=params, **kw)
    return tracker, run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---- pure helpers ----------------------------------------------------------------------------
def test_resolve_tracking_uri_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"


def test_flatten_params() -> None:
    flat = flatten_params(CONFIG)
    assert flat == {
        "seed": "1",
        "data.dataset": "digits",
        "data.tasks": "3",
        "data.domains": '["a", "b"]',
        "backbone.name": "vit_tiny_patch16_224",
        "backbone.file": "None",
        "model.method": "sdlora",
        "model.rank": "4",
        "model.extra": "{}",
    }
    long = flatten_params({"a": {"b": "x" * (LIMIT + 50)}})["a.b"]
    assert len(long) == LIMIT and long.endswith(TRUNCATED)
    assert flatten_params({"a": "x" * LIMIT})["a"] == "x" * LIMIT  # at the limit: kept whole
    with pytest.raises(ValueError, match="longer than"):
        flatten_params({"k" * 300: 1})


def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    here = git_commit(Path(__file__).parent)
    assert here is None or re.fullmatch(r"[0-9a-f]{40}", here)


# ---- runs ------------------------------------------------------------------------------------
def test_a_failure_after_the_run_was_ended_elsewhere_still_marks_it(store: Path) -> None:
    """Closing a run that is no longer MLflow's active one (code in the block ended it) marks it
    through the client instead of raising over the error that is closing it."""
    import mlflow

    tracker, run_id = _open(store, "exp-ended")
    with pytest.raises(KeyError), tracker:
        mlflow.end_run()  # e.g. a library that ends the active run
        raise KeyError("the block's own error")  # what the user must see
    run = MlflowClient(resolve_tracking_uri(None, store)).get_run(run_id)
    assert run.info.status == "FAILED" and tracker.run_id is None


def test_run_gets_params_metrics_tags_and_artifacts(store: Path, tmp_path: Path) -> None:
    tags = {"backbone": "vit_tiny_patch16_224", "method": "sdlora", "dataset": "digits"}
    tracker, run_id = _open(store, "exp-basic", run_name="seq", tags=tags)
    accs = [90.0, 85.0, 80.0]
    for t, a in enumerate(accs):
        tracker.log_task(t, {"anytime_accuracy": a, "forgetting": 2.0 * t, "skipped": float("nan")})
    m = np.full((3, 3), np.nan)
    m[np.tril_indices(3)] = 80.0
    heat = plots.accuracy_heatmap(m, tmp_path / "heat.png")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "metrics.json").write_text("{}")
    tracker.log_artifacts([heat, tmp_path / "outputs"])
    with pytest.raises(FileNotFoundError):
        tracker.log_artifacts([tmp_path / "missing.csv"])
    tracker.close()
    tracker.close()  # twice is harmless

    client = MlflowClient(resolve_tracking_uri(None, store))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "seq"
    for k, v in flatten_params(CONFIG).items():
        assert run.data.params[k] == v
    assert {k: run.data.tags[k] for k in tags} == tags
    commit = git_commit(Path(__file__).parent)
    if commit is not None:
        assert run.data.params["git_commit"] == commit
        assert run.data.tags["mlflow.source.git.commit"] == commit
    assert _history(client, run_id, "anytime_accuracy") == [(0, 90.0), (1, 85.0), (2, 80.0)]
    assert _history(client, run_id, "forgetting") == [(0, 0.0), (1, 2.0), (2, 4.0)]
    assert "skipped" not in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"heat.png", "outputs"}
    assert [a.path for a in client.list_artifacts(run_id, "outputs")] == ["outputs/metrics.json"]
    # artifacts live beside the database, never in ./mlruns
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert (store / "mlartifacts" / "exp-basic" / run_id / "artifacts" / "heat.png").is_file()
    assert not (tmp_path / "mlruns").exists() and not (store / "mlruns").exists()


def test_reopen_continues_the_same_run(store: Path) -> None:
    tracker, run_id = _open(store, "exp-resume")
    tracker.log_task(0, {"acc": 90.0})
    tracker.log_task(1, {"acc": 85.0})
    tracker.close("KILLED")  # the stage died after task 1

    again = SequenceTracker()
    assert again.open(None, "exp-resume", run_id=run_id, root=store, params=flatten_params(CONFIG))
    client = MlflowClient(resolve_tracking_uri(None, store))
    assert client.get_run(run_id).info.status == "RUNNING"
    again.log_task(2, {"acc": 80.0})
    again.close()

    assert _history(client, run_id, "acc") == [(0, 90.0), (1, 85.0), (2, 80.0)]
    exp = client.get_experiment_by_name("exp-resume")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"


def test_open_by_key_reopens_the_sequence_run_and_never_duplicates(store: Path) -> None:
    first, run_id = _open(store, "exp-key", key="seq-abc")
    assert first.created
    first.log_task(0, {"acc": 90.0})
    first.close()
    again, same = _open(store, "exp-key", key="seq-abc")  # a re-run stage: same sequence
    assert same == run_id and not again.created
    again.log_task(1, {"acc": 80.0})
    again.close()
    other, other_id = _open(store, "exp-key", key="seq-def")  # another config: its own run
    assert other_id != run_id and other.created
    other.close()
    client = MlflowClient(resolve_tracking_uri(None, store))
    runs = client.search_runs([client.get_experiment_by_name("exp-key").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([run_id, other_id])
    assert _history(client, run_id, "acc") == [(0, 90.0), (1, 80.0)]
    with pytest.raises(ValueError, match="letters, digits"):
        _open(store, "exp-key", key="a' OR '1'='1")


def test_a_run_that_saw_other_data_is_not_reopened(store: Path) -> None:
    """The sequence key counts the data by their params; the data tags a reopened run must
    agree with: task 1's other bytes under the same key make a run of their own."""
    first, run_id = _open(store, "exp-agree", key="seq-x", agree={"d.0": "h0"})
    first.close()
    more, same = _open(store, "exp-agree", key="seq-x", agree={"d.0": "h0", "d.1": "h1"})
    assert same == run_id and not more.created  # task 1's tag is new: no contradiction
    more.close()
    other, other_id = _open(store, "exp-agree", key="seq-x", agree={"d.0": "h0", "d.1": "zz"})
    assert other_id != run_id and other.created
    other.close()
    client = MlflowClient(resolve_tracking_uri(None, store))
    assert client.get_run(run_id).data.tags["d.1"] == "h1"
    assert client.get_run(other_id).data.tags["d.1"] == "zz"
    again, newest = _open(store, "exp-agree", key="seq-x", agree={"d.0": "h0", "d.1": "zz"})
    assert newest == other_id  # found again
    again.close()


def test_bad_run_id_is_a_clear_error(store: Path) -> None:
    tracker = SequenceTracker()
    with pytest.raises(TrackingError, match=r"cannot resume MLflow run 'deadbeef'.*no such run"):
        tracker.open(None, "exp-bad", run_id="deadbeef", root=store)
    assert tracker.run_id is None and mlflow.active_run() is None
    with pytest.raises(TrackingError, match="open"):
        tracker.log_task(0, {"acc": 1.0})


def test_reopen_with_changed_params_or_other_experiment_is_refused(store: Path) -> None:
    tracker, run_id = _open(store, "exp-params")
    tracker.close()
    changed = flatten_params({**CONFIG, "seed": 2})
    with pytest.raises(TrackingError, match=r"seed: '1' -> '2'"):
        SequenceTracker().open(None, "exp-params", run_id=run_id, root=store, params=changed)
    _open(store, "exp-other")[0].close()
    with pytest.raises(TrackingError, match="not to experiment 'exp-other'"):
        SequenceTracker().open(None, "exp-other", run_id=run_id, root=store)


def test_failed_block_marks_run_failed(store: Path) -> None:
    tracker, run_id = _open(store, "exp-fail")
    with pytest.raises(RuntimeError), tracker:
        raise RuntimeError("boom")
    status = MlflowClient(resolve_tracking_uri(None, store)).get_run(run_id).info.status
    assert status == "FAILED"


def test_logged_model_loads_back_with_the_same_logits(store: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
    ).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tracker, run_id = _open(store, "exp-model")
    info = tracker.log_model(model, x)
    tracker.close()
    assert info.run_id == run_id
    assert info.signature is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, 16, 16]
    with torch.no_grad():
        want = model(x)
    for uri in (info.model_uri, f"runs:/{run_id}/model"):
        loaded = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            got = loaded(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        other = torch.randn(5, 3, 16, 16)  # MLflow 3.17 exports (pt2) with a dynamic batch
        with torch.no_grad():
            torch.testing.assert_close(loaded(other), model(other), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(want, torch.zeros_like(want))


# ---- what the MLflow UI shows ----------------------------------------------------------------
def test_experiment_opens_as_model_training(store: Path) -> None:
    client = MlflowClient(resolve_tracking_uri(None, store))
    _open(store, "exp-kind")[0].close()  # created by the tracker
    assert client.get_experiment_by_name("exp-kind").tags[KIND_TAG] == EXPERIMENT_KIND
    old = client.create_experiment("exp-kind-old")  # made before the tag existed
    _open(store, "exp-kind-old")[0].close()
    assert client.get_experiment(old).tags[KIND_TAG] == "custom_model_development"
    mine = client.create_experiment("exp-kind-mine", tags={KIND_TAG: "finetuning"})
    _open(store, "exp-kind-mine")[0].close()
    assert client.get_experiment(mine).tags[KIND_TAG] == "finetuning"  # a user's choice stays


def test_ui_addresses_ask_for_the_training_view() -> None:
    assert ui_path("3") == "#/experiments/3/runs?workflowType=machine_learning"
    assert ui_path("3", "ab") == "#/experiments/3/runs/ab?workflowType=machine_learning"
    assert ui_url("http://h:5000/", "3", "ab") == (
        "http://h:5000/#/experiments/3/runs/ab?workflowType=machine_learning"
    )
    assert ui_url("sqlite:////x/mlflow.db", "3") is None


def test_created_run_records_source_user_and_commit(store: Path) -> None:
    tracker, run_id = _open(store, "exp-source", tags={"sdlora.command.report": "p.py --x 1"})
    tracker.close()
    tags = MlflowClient(resolve_tracking_uri(None, store)).get_run(run_id).data.tags
    assert tags["mlflow.source.name"]  # sys.argv[0] of this process, as MLflow resolves it
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    assert tags["sdlora.command.report"] == "p.py --x 1"
    commit = git_commit(Path(__file__).parent)
    if commit is not None:
        assert tags["mlflow.source.git.commit"] == commit


def test_relogging_a_task_adds_no_second_point(store: Path) -> None:
    tracker, run_id = _open(store, "exp-relog", key="seq-relog")
    assert tracker.log_task(0, {"acc": 90.0, "train_seconds": 12.0}) == []
    tracker.log_task(1, {"acc": 80.0, "train_seconds": 11.0})
    tracker.close()
    again, same = _open(store, "exp-relog", key="seq-relog")  # the stage runs again
    assert same == run_id
    skipped = again.log_task(1, {"acc": 80.0, "restore_seconds": 0.5, "train_seconds": 1.0})
    again.close()
    assert skipped == ["acc", "train_seconds"]
    client = MlflowClient(resolve_tracking_uri(None, store))
    assert _history(client, run_id, "acc") == [(0, 90.0), (1, 80.0)]
    assert _history(client, run_id, "train_seconds") == [(0, 12.0), (1, 11.0)]  # kept
    assert _history(client, run_id, "restore_seconds") == [(1, 0.5)]


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs)


def test_logged_model_carries_the_metrics_of_its_step_and_is_found_again(store: Path) -> None:
    tracker, run_id = _open(store, "exp-model-step")
    tracker.log_task(0, {"accuracy": 98.0, "forgetting": 0.0})
    tracker.log_task(1, {"accuracy": 64.0, "forgetting": 30.0, "final_accuracy": 64.0})
    x = torch.randn(2, 3, 16, 16)
    tags = {"sdlora.weights_sha256": "abc"}
    assert tracker.find_model("merged", tags) is None
    info = tracker.log_model(_tiny_vit(), x, name="merged", step=1, tags=tags)
    assert tracker.find_model("merged", tags) == info.model_id
    assert tracker.find_model("merged", {"sdlora.weights_sha256": "other"}) is None
    assert tracker.find_model("other-name", tags) is None
    tracker.close()
    model = MlflowClient(resolve_tracking_uri(None, store)).get_logged_model(info.model_id)
    assert model.source_run_id == run_id
    got = {m.key: (m.step, m.value) for m in model.metrics}
    assert got == {"accuracy": (1, 64.0), "forgetting": (1, 30.0), "final_accuracy": (1, 64.0)}


def test_a_model_a_killed_stage_left_pending_is_replaced_not_kept(store: Path) -> None:
    """A stage killed while logging its model leaves it PENDING; the re-run's model replaces
    it, and another run's unfinished model is not touched."""
    tracker, run_id = _open(store, "exp-model-pending")
    half = mlflow.initialize_logged_model(name="merged", source_run_id=run_id)  # the kill's
    other = mlflow.initialize_logged_model(name="other", source_run_id=run_id)
    info = tracker.log_model(_tiny_vit(), torch.randn(2, 3, 16, 16), name="merged")
    tracker.close()
    models = mlflow.search_logged_models(experiment_ids=[tracker.experiment_id],
                                         output_format="list")  # fmt: skip
    assert {m.model_id: str(m.status) for m in models} == {
        info.model_id: "READY", other.model_id: "PENDING"}  # fmt: skip
    assert half.model_id != info.model_id


def test_portable_uri_keeps_a_project_database_relative(tmp_path: Path) -> None:
    inside = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert portable_uri(inside, tmp_path) == "sqlite:///mlflow.db"
    assert portable_uri(f"sqlite:///{tmp_path / 'a' / 'b.db'}", tmp_path) == "sqlite:///a/b.db"
    assert portable_uri("sqlite:////elsewhere/x.db", tmp_path) == "sqlite:////elsewhere/x.db"
    assert portable_uri("http://host:5000", tmp_path) == "http://host:5000"


def test_a_restored_sweep_keeps_its_parent_run_and_a_new_one_gets_its_own(store: Path) -> None:
    """The tune stage's parent run: ``reopen=False`` starts over, ``reopen=True`` (a restored
    sweep) takes the newest run of the key and marks its children still running as killed."""
    first, parent = _open(store, "exp-sweep", key="tune-x", params={"model.method": "kd"},
                          reopen=False)  # fmt: skip
    client = MlflowClient(resolve_tracking_uri(None, store))
    exp = first.experiment_id
    cut = client.create_run(exp, tags={"mlflow.parentRunId": parent})  # a trial cut by a kill
    done = client.create_run(exp, tags={"mlflow.parentRunId": parent})
    client.set_terminated(done.info.run_id)
    first.close("KILLED")
    again, same = _open(store, "exp-sweep", key="tune-x", params={})
    assert same == parent and again.end_children("KILLED") == 1
    assert client.get_run(cut.info.run_id).info.status == "KILLED"  # its trial starts again
    assert client.get_run(done.info.run_id).info.status == "FINISHED"
    assert client.get_run(parent).info.status == "RUNNING"
    assert {k: v for k, v in client.get_run(parent).data.params.items()
            if k != "git_commit"} == {"model.method": "kd"}  # fmt: skip
    again.close()
    anew, new_id = _open(store, "exp-sweep", key="tune-x", params={}, reopen=False)  # over
    assert new_id != parent and anew.created
    anew.close()
    newest, found = _open(store, "exp-sweep", key="tune-x", params={})
    assert found == new_id  # the newest
    newest.close()


@pytest.mark.slow
def test_the_documented_mlflow_ui_listens_on_loopback_only(tmp_path: Path) -> None:
    """README's `mlflow ui --backend-store-uri sqlite:///mlflow.db` (no --host): MLflow's
    default binds 127.0.0.1, so the UI is not exposed on a shared machine."""
    import socket
    import subprocess
    import sys
    import time

    from .sockets import listening, loopback

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
           f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        seen: set[tuple[str, int, str]] = set()
        deadline = time.monotonic() + 60
        while not any(p == port for _, p, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.5)
            seen = listening(proc.pid)
        assert any(p == port for _, p, _ in seen), f"the UI did not listen on {port}: {seen}"
        assert all(loopback(address) for address, _, _ in seen), seen
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
