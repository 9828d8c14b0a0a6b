"""Stage ``validate``: the whole params file against the config, before anything else runs.

DVC re-runs a stage only when something it tracks changes, and every other stage tracks only
the keys its code reads: a misspelt key (``progres: true``) changes none of them, so without
this stage ``dvc repro`` would call the pipeline up to date and ignore the typo. This stage
tracks the whole file (``params: [params.yaml: ]`` in dvc.yaml), so any edit re-runs it: it
loads the file with :func:`sdlora.config.load_config` (unknown keys, wrong types, values out of
range: an error naming the key) and writes a file whose bytes depend only on the params file's
path. ``prepare`` depends on that file, so a valid edit re-runs nothing else and an invalid one
stops ``dvc repro`` here.

It also runs on every ``dvc repro`` (``always_changed``) to hash a ``backbone.weights`` file that
lies outside the project's tracked folders (:func:`weights_record`): DVC does not track such a
file, so without this a file replaced under the same path would re-run nothing. ``pretrain``
depends on the record, which changes only when the file's bytes do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlora.config import Config, ConfigError, check_pipeline_method
from sdlora.core.train import check_settings
from sdlora.data.benchmarks import check_named_tasks
from sdlora.files import file_sha256, write_json
from sdlora.pipeline.layout import (
    BACKBONE_DIR,
    DATA_RECORD,
    VALIDATED,
    WEIGHTS_RECORD,
    check_data_root,
    check_known_num_tasks,
    require_plan,
)


def weights_record(cfg: Config, backbone: str | Path = BACKBONE_DIR) -> dict[str, Any]:
    """``backbone.weights`` and, for a file outside ``backbone`` (which the pretrain stage
    writes and DVC tracks), its SHA-256; None for timm's weights or none. A file outside that
    is not there is refused: nothing would ever write it."""
    weights = cfg.backbone.weights
    path = None if weights in (None, "timm") else Path(weights)
    outside = path is not None and not path.resolve().is_relative_to(Path(backbone).resolve())
    if outside and not path.is_file():
        raise ConfigError(
            f"backbone.weights = {weights!r}: no such file; give the path of a .pth or "
            f".safetensors file, 'timm' for timm's weights of backbone.name, or a path under "
            f"{backbone}/ for the weights the pretrain stage makes"
        )
    sha = file_sha256(path) if outside else None
    return {"weights": weights, "sha256": sha}


def data_record(cfg: Config) -> dict[str, Any]:
    """Every ``data.*`` setting but ``data.tasks``, defaults filled in: what every task's
    ``prepare@k`` and ``train@k`` share. They depend on this file rather than on the params
    (each tracks its own task's classes in ``tasks.<k>``), so a task appended to ``data.tasks``
    re-runs none of them, and a params file need not spell out every data key."""
    return cfg.data.model_dump(mode="json", exclude={"tasks"})


def validate_stage(
    cfg: Config,
    *,
    params: str | Path = "params.yaml",
    out: str | Path = VALIDATED,
    weights: str | Path = WEIGHTS_RECORD,
    data: str | Path = DATA_RECORD,
) -> dict[str, Any]:
    """Write ``out`` for the already validated ``cfg`` (the same bytes whatever its values),
    ``weights`` (:func:`weights_record`) and ``data`` (:func:`data_record`)."""
    check_pipeline_method(cfg)  # load_config validated the rest; the next needs torch, timm
    check_settings(cfg, cfg.ray.num_workers)  # the backbone on the meta device, blocks, batch
    require_plan(cfg)  # the task list matches the pipeline's layout
    check_data_root(cfg)  # before prepare: a missing folder is named, not a task count
    check_named_tasks(cfg.data)  # data.tasks names classes the dataset has
    check_known_num_tasks(cfg, "the data")  # else prepare counts the classes, train@k checks
    payload = {"params": str(params), "valid": True}
    records = ((out, payload), (weights, weights_record(cfg)), (data, data_record(cfg)))
    for path, content in records:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # DVC creates no output's parent
        write_json(path, content)
    return payload
