"""Serve the registered champion with Ray Serve: the same JSON as `mlflow models serve`.

Needs Ray Serve beside the project (`pip install -c constraints.txt -e '.[serve]'`; no sdlora
import). One machine:

    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db python docs/examples/ray_serve_champion.py \
        --model sdlora-glyphs --replicas 2          # http://127.0.0.1:8000/invocations

On a Ray cluster (`ray start --head`; an MLflow server that every node reaches):

    serve run --app-dir docs/examples --route-prefix /invocations ray_serve_champion:build \
        model=sdlora-glyphs replicas=2 tracking_uri=http://MLFLOW_HOST:5000

POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"], ...]},
"params": {"top_k": 3}} ("params" optional) -> {"predictions": [{"label", "score", "top_k"}]}
(a bad request: 400). Each replica loads `models:/<model>@<alias>` once, when it starts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Champion:
    """One replica: the registered model, loaded once, answering HTTP requests."""

    def __init__(self, model_uri: str, tracking_uri: str | None = None) -> None:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.model = mlflow.pyfunc.load_model(model_uri)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            split = body["dataframe_split"]
            column = split["columns"].index("image")
            images = [base64.b64decode(row[column], validate=True) for row in split["data"]]
            out = self.model.predict(pd.DataFrame({"image": images}), params=body.get("params"))
        except (ValueError, KeyError, TypeError, IndexError, MlflowException) as err:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": str(err)}, 400)
        return JSONResponse({"predictions": out.to_dict(orient="records")})


def build(args: dict[str, str]) -> serve.Application:
    """`serve run ...:build model=NAME alias=champion replicas=1 tracking_uri=URI`."""
    uri = f"models:/{args.get('model', 'sdlora-glyphs')}@{args.get('alias', 'champion')}"
    tracking = args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    return Champion.options(num_replicas=int(args.get("replicas", 1))).bind(uri, tracking)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdlora-glyphs")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default="", help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--replicas", default="1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="if Serve starts here")
    args = parser.parse_args()
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build({k: v for k, v in vars(args).items() if k not in ("host", "port")})
    with contextlib.suppress(KeyboardInterrupt):  # serve until Ctrl-C
        serve.run(app, route_prefix="/invocations", blocking=True)
    serve.shutdown()


if __name__ == "__main__":
    main()
