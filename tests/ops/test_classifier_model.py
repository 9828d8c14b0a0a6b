"""The served classifier (issue 20): encoded images in, class names out, through the merged timm
model alone; its answers equal the pipeline's own prediction (the test transform + argmax)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from sdlora.core.export import export_timm
from sdlora.data.stream import build_transform, decode
from sdlora.ops.tracking import SequenceTracker, resolve_tracking_uri

LABELS = ["alpha", "beta", "gamma", "delta", "epsilon"]
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _png(seed: int, size: tuple[int, int], mode: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    out = io.BytesIO()
    jpeg = seed % 2 == 0 and mode != "RGBA"  # JPEG has no alpha
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG" if jpeg else "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A tiny merged ViT exported as the report stage does, logged and loaded back."""
    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    net = timm.create_model("vit_tiny_patch16_224", num_classes=len(LABELS), **kwargs).eval()
    data = {"mean": MEAN, "std": STD, "crop_pct": 224 / 256, "interpolation": "bicubic"}
    export_timm(net, root / "timm", data_config=data, label_names=LABELS)
    images = [_png(s, (16 + 7 * s, 12 + 3 * s), ("RGB", "L", "RGBA")[s % 3]) for s in range(6)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        tracker = SequenceTracker()
        run_id = tracker.open(None, "served", root=root, params={})
        mlflow.initialize_logged_model(name="classifier", source_run_id=run_id)  # a kill's
        info = tracker.log_classifier(root / "timm", images[:2])
        tracker.close()
        models = mlflow.search_logged_models(experiment_ids=[tracker.experiment_id],
                                             output_format="list")  # fmt: skip
        assert [(m.model_id, str(m.status)) for m in models] == [(info.model_id, "READY")]
        model = mlflow.pyfunc.load_model(info.model_uri)
        uri = resolve_tracking_uri(None, root)
    return net, model, images, info, uri


def test_it_names_the_class_the_pipeline_predicts_from_images_of_any_size_and_mode(
    served,
) -> None:
    net, model, images, _, _ = served
    transform = build_transform(train=False, size=16, mean=MEAN, std=STD)
    with torch.no_grad():
        logits = net(torch.stack([transform(decode(b)) for b in images]))
    want = [LABELS[i] for i in logits.argmax(dim=-1).tolist()]
    probs = logits.softmax(dim=-1)
    out = model.predict(pd.DataFrame({"image": images}))
    assert list(out.columns) == ["label", "score", "top_k"]
    assert list(out["label"]) == want
    assert out["score"].tolist() == pytest.approx(probs.max(dim=-1).values.tolist(), abs=1e-6)
    first = out["top_k"][0]
    assert len(first) == 5 and first[0]["label"] == want[0]
    assert [t["score"] for t in first] == sorted((t["score"] for t in first), reverse=True)
    as_text = [base64.b64encode(b).decode() for b in images]  # what a JSON client sends
    again = model.predict(pd.DataFrame({"image": as_text}), params={"top_k": 2})
    assert list(again["label"]) == want and all(len(t) == 2 for t in again["top_k"])


def test_its_signature_and_example_are_logged(served) -> None:
    _, model, _, info, _ = served
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["image"] and str(schema.inputs[0].type) == "DataType.binary"
    outputs = model.metadata.get_output_schema().input_names()
    assert outputs == ["label", "score", "top_k"]
    assert model.metadata.get_params_schema().params[0].name == "top_k"
    assert info.saved_input_example_info is not None


@pytest.mark.parametrize(
    ("frame", "params", "message"),
    [
        (pd.DataFrame({"image": ["not base64!"]}), None, "row 0: column 'image' holds text that"),
        (pd.DataFrame({"image": [b"no image here"]}), None, "row 0: column 'image' is not a read"),
        (None, {"top_k": 9}, "top_k = 9: use 1 .. 5"),
    ],
)
def test_bad_requests_are_answered_in_one_line(served, frame, params, message: str) -> None:
    _, model, images, _, _ = served
    frame = pd.DataFrame({"image": images[:1]}) if frame is None else frame
    with pytest.raises(MlflowException, match=message):
        model.predict(frame, params=params)


@pytest.mark.slow
def test_mlflow_models_serve_answers_on_loopback_with_class_names(served) -> None:
    """The documented command serves the logged model on 127.0.0.1; a JSON request with two
    base64 images gets the labels the model gives in Python."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from .sockets import listening, loopback

    _, model, images, info, uri = served
    want = list(model.predict(pd.DataFrame({"image": images[:2]}))["label"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # uvicorn, as activated
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", info.model_uri,
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    body = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(b).decode()] for b in images[:2]],
        }
    }
    try:
        deadline, answer = time.monotonic() + 90, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    answer = json.loads(reply.read())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        why = proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no answer"
        assert answer is not None, why
        assert [p["label"] for p in answer["predictions"]] == want
        assert all(len(p["top_k"]) == 5 for p in answer["predictions"])
        seen = listening(proc.pid)
        assert seen and all(loopback(address) for address, _, _ in seen), seen
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_model_of_fewer_classes_than_the_default_top_k_logs_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks of two digits: 4 classes, fewer than top_k's default 5, which then means every
    class (the signature's default too, which `mlflow models serve` passes)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    net = timm.create_model("vit_tiny_patch16_224", num_classes=4, **kwargs).eval()
    data = {"mean": MEAN, "std": STD, "crop_pct": 224 / 256, "interpolation": "bicubic"}
    export_timm(net, tmp_path / "timm", data_config=data, label_names=LABELS[:4])
    images = [_png(s, (16, 16), "RGB") for s in range(2)]
    tracker = SequenceTracker()
    tracker.open(None, "served", root=tmp_path, params={})
    info = tracker.log_classifier(tmp_path / "timm", images)
    tracker.close()
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert model.metadata.get_params_schema().params[0].default == 4
    assert [len(t) for t in model.predict(pd.DataFrame({"image": images}))["top_k"]] == [4, 4]
