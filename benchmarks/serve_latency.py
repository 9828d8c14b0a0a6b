"""What serving the merged model costs: `mlflow models serve` on loopback against the model itself.

Logs the report stage's merged model (``runs/pipeline/report/merged_model_timm``, from `make run`)
as the served classifier into a temporary MLflow store, starts the documented command
(``mlflow models serve -m ... --env-manager local --host 127.0.0.1``), and posts ``--requests``
requests of one image each (PNG bytes from the prepared test split, base64 in the JSON a client
sends), one at a time, after ``--warmup`` unmeasured ones. The same images then go through the
classifier in this process (decode, resize, normalise, forward: what the server does per
request, without HTTP) and through the merged timm model's forward alone (batch 1, tensors
ready). Prints one table: p50, p95 and mean per image.

    python benchmarks/serve_latency.py
    python benchmarks/serve_latency.py --requests 300 --threads 1
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import torch

from sdlora.data.prepare import open_prepared
from sdlora.ops import classifier_model as served
from sdlora.ops.tracking import SequenceTracker, resolve_tracking_uri

REPO = Path(__file__).resolve().parents[1]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50 ms": statistics.median(ms),
        "p95 ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
        "mean ms": statistics.fmean(ms),
    }


def _post(port: int, image: bytes) -> dict:
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timm-folder", type=Path,
                        default=REPO / "runs/pipeline/report/merged_model_timm")  # fmt: skip
    parser.add_argument("--prepared", type=Path, default=REPO / "data/prepared")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and served")
    args = parser.parse_args()
    if not (args.timm_folder / "config.json").is_file():
        sys.exit(f"serve_latency: no merged model at {args.timm_folder}; run `make run` first")
    torch.set_num_threads(args.threads)
    prepared = open_prepared(args.prepared)
    images = pq.read_table(prepared.files(0, "test")[0], columns=["image"]).column("image")
    images = images.to_pylist()
    pick = [images[i % len(images)] for i in range(args.warmup + args.requests)]

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path.cwd()
        os.chdir(tmp)
        try:
            tracker = SequenceTracker()
            tracker.open(None, "serve-latency", root=tmp, params={})
            info = tracker.log_classifier(args.timm_folder, images[:2])
            tracker.close()
        finally:
            os.chdir(old)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "MLFLOW_TRACKING_URI": resolve_tracking_uri(None, tmp),
               "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": str(args.threads),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", info.model_uri,
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip
        try:
            while True:
                try:
                    _post(port, pick[0])
                    break
                except (urllib.error.URLError, ConnectionError):
                    if proc.poll() is not None:
                        sys.exit(proc.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
                    time.sleep(0.2)
            up = time.perf_counter() - began
            seconds = []
            for i, image in enumerate(pick):
                start = time.perf_counter()
                _post(port, image)
                if i >= args.warmup:
                    seconds.append(time.perf_counter() - start)
            rows["mlflow models serve, HTTP on loopback, 1 image/request"] = _percentiles(seconds)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

        local = served.ImageClassifier()
        local.load_context(SimpleNamespace(artifacts={served.TIMM_ARTIFACT: str(args.timm_folder)}))
        seconds = []
        for i, image in enumerate(pick):
            start = time.perf_counter()
            local.predict(None, pd.DataFrame({"image": [image]}))
            if i >= args.warmup:
                seconds.append(time.perf_counter() - start)
        rows["the classifier in-process (decode, preprocess, forward)"] = _percentiles(seconds)
        x = [local._pixels(image, 0).unsqueeze(0) for image in pick]
        seconds = []
        with torch.inference_mode():
            for i, xi in enumerate(x):
                start = time.perf_counter()
                local.model(xi)
                if i >= args.warmup:
                    seconds.append(time.perf_counter() - start)
        rows["the merged timm model's forward alone"] = _percentiles(seconds)

    print(f"{args.requests} images (after {args.warmup} warm-up), {args.threads} torch thread(s); "
          f"server up in {up:.1f} s\n")  # fmt: skip
    print("| path | p50 ms | p95 ms | mean ms |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50 ms']:.2f} | {r['p95 ms']:.2f} | {r['mean ms']:.2f} |")


if __name__ == "__main__":
    main()
