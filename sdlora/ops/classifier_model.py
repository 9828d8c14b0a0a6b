"""The served model: the merged timm ViT as an MLflow pyfunc that takes images and names classes.

MLflow logs this file with the model (a *model from code*,
:meth:`sdlora.ops.tracking.SequenceTracker.log_classifier`), so serving it needs torch, timm,
Pillow and MLflow, not sdlora: nothing here imports it, and the network is the plain timm
``VisionTransformer`` of the ``timm_model`` artifact (every adapter merged into its weights).

Input: a DataFrame with a column ``image``, one encoded image per row (PNG, JPEG, ...: any size
or mode; the scoring server decodes the base64 text a JSON request carries). The model applies
the preprocessing the timm folder's ``config.json`` records (the pipeline's test transform:
resize, centre crop, the backbone's mean and std). Output per row: ``label`` (the class name),
``score`` (its softmax probability) and ``top_k``, the ``top_k`` best (param, default 5, or
every class of a model that knows fewer) as ``{"label", "score"}`` objects, best first.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

import mlflow.models
import pandas as pd
import timm
import timm.data
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from PIL import Image, UnidentifiedImageError

TIMM_ARTIFACT = "timm_model"  # the artifact key of the merged model's timm folder
IMAGE_COLUMN = "image"
TOP_K = 5


class ImageClassifier(PythonModel):
    """Encoded images in, class names out, through the merged timm model."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[TIMM_ARTIFACT])
        self.model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        self.labels: list[str] = json.loads((folder / "config.json").read_text())["label_names"]
        data = timm.data.resolve_data_config(model=self.model)  # config.json's pretrained_cfg
        self.transform = timm.data.create_transform(**data, is_training=False)

    def _pixels(self, value: Any, row: int) -> torch.Tensor:
        """One row's encoded image -> the model's input, (3, H, W)."""
        if isinstance(value, str):  # base64 text, as a client sends it
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise MlflowException(
                    f"row {row}: column {IMAGE_COLUMN!r} holds text that is not base64",
                    INVALID_PARAMETER_VALUE,
                ) from None
        if not isinstance(value, bytes | bytearray):
            raise MlflowException(
                f"row {row}: column {IMAGE_COLUMN!r} holds {type(value).__name__}, not the "
                "bytes of an encoded image (or their base64 text)",
                INVALID_PARAMETER_VALUE,
            )
        try:
            with Image.open(io.BytesIO(value)) as image:
                return self.transform(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise MlflowException(
                f"row {row}: column {IMAGE_COLUMN!r} is not a readable image ({err})",
                INVALID_PARAMETER_VALUE,
            ) from None

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if IMAGE_COLUMN not in model_input:
            raise MlflowException(
                f"the input needs a column {IMAGE_COLUMN!r} (encoded images); it has "
                f"{list(model_input.columns)}",
                INVALID_PARAMETER_VALUE,
            )
        k = int((params or {}).get("top_k", min(TOP_K, len(self.labels))))
        if not 1 <= k <= len(self.labels):
            raise MlflowException(
                f"top_k = {k}: use 1 .. {len(self.labels)} (the classes the model knows)",
                INVALID_PARAMETER_VALUE,
            )
        images = [self._pixels(v, i) for i, v in enumerate(model_input[IMAGE_COLUMN])]
        if not images:
            return pd.DataFrame({"label": [], "score": [], "top_k": []})
        with torch.inference_mode():
            probs = self.model(torch.stack(images)).softmax(dim=-1)  # (N, classes)
        scores, indices = probs.topk(k, dim=-1)
        top = [
            [{"label": self.labels[i], "score": float(s)} for s, i in zip(ss, ii, strict=True)]
            for ss, ii in zip(scores.tolist(), indices.tolist(), strict=True)
        ]
        best = [t[0] for t in top]
        return pd.DataFrame(
            {"label": [b["label"] for b in best], "score": [b["score"] for b in best], "top_k": top}
        )


mlflow.models.set_model(ImageClassifier())
