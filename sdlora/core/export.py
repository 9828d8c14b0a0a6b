"""The merged model as a plain timm checkpoint: ``model.safetensors`` and timm's ``config.json``.

:func:`export_timm` writes a timm ViT (``SDLoRAViT.merge()``: every adapter folded into the
weights, the head as its classifier) with timm's own exporter (``timm.models.save_for_hf``), so
the folder loads back with nothing but timm, as a plain ``VisionTransformer``:

>>> model = timm.create_model(f"local-dir:{folder}", pretrained=True)      # config.json + weights
>>> cfg = json.loads((folder / "config.json").read_text())
>>> model = timm.create_model(cfg["architecture"], pretrained=True,
...     pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"),
...                                 num_classes=cfg["num_classes"]), **cfg["model_args"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from torch import nn

WEIGHTS = "model.safetensors"  # timm's file names for a checkpoint folder
CONFIG = "config.json"


class ExportError(ValueError):
    """A model that cannot be written as a timm checkpoint."""


def export_timm(
    model: nn.Module,
    folder: str | Path,
    *,
    data_config: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``model`` (a timm model with its head) to ``folder``; return the two files' paths.

    ``config.json`` holds the timm name (``architecture``), ``num_classes``, the constructor
    arguments (``model_args``: img_size, patch_size, embed_dim, depth, num_heads, ...) and the
    input preprocessing (``pretrained_cfg``: what ``timm.data.resolve_data_config`` reads).
    ``data_config``: the preprocessing the model was trained with where it is not the
    backbone's own (timm's keys: ``mean``, ``std``, ``crop_pct``, ``interpolation``, ...).
    ``label_names``: one name per output, in output order.
    """
    if not hasattr(model, "pretrained_cfg") or not hasattr(model, "num_classes"):
        raise ExportError(
            f"{type(model).__name__} is not a model built by timm.create_model (no "
            "pretrained_cfg); export the merged model, SDLoRAViT.merge()"
        )
    if model.num_classes == 0:
        raise ExportError("the model has no classifier head (num_classes = 0); nothing to load")
    if label_names is not None and len(label_names) != model.num_classes:
        raise ExportError(
            f"{len(label_names)} label names for a head of {model.num_classes} outputs"
        )
    # the tag of the architecture's default weights would name weights this file does not hold
    model_config: dict = {"pretrained_cfg": {"tag": "sdlora_merged"}}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    folder = Path(folder)
    timm.models.save_for_hf(
        model,
        folder,
        model_config=model_config,
        safe_serialization=True,
        data_config=dict(data_config or {}),
    )
    return [folder / WEIGHTS, folder / CONFIG]
