"""Stage ``pretrain``: record the backbone, and pre-train the embedded one."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdlora.config import Config, ConfigError
from sdlora.files import atomic_directory, file_sha256, write_json
from sdlora.pipeline.layout import BACKBONE_DIR, BACKBONE_RECORD


def pretrain_stage(cfg: Config, *, out: str | Path = BACKBONE_DIR) -> dict[str, Any]:
    """Write ``out`` (``artifacts/backbone``): ``backbone.json`` and, for the embedded default,
    the weights.

    Pre-training runs only when ``backbone.weights`` is a file inside ``out`` (the embedded
    default); with ``timm``, null or a file elsewhere it only records which backbone the run
    uses (and the file's SHA-256).
    """
    from sdlora.core.pretrain import pretrain_backbone

    out = Path(out)
    weights = cfg.backbone.weights
    record: dict[str, Any] = {
        "name": cfg.backbone.name,
        "kwargs": dict(cfg.backbone.kwargs),
        "weights": weights,
        "sha256": None,
    }
    with atomic_directory(out, marker=BACKBONE_RECORD) as tmp:
        if weights in (None, "timm"):
            record["source"] = "timm pretrained weights" if weights else "random initialisation"
        elif Path(weights).resolve().is_relative_to(out.resolve()):
            target = tmp / Path(weights).resolve().relative_to(out.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            report = pretrain_backbone(cfg, target, progress=cfg.progress)
            report.path = weights
            write_json(target.with_suffix(".json"), asdict(report))
            record.update(source="pre-trained by this stage", pretrain=asdict(report))
            record["sha256"] = file_sha256(target)
        elif Path(weights).is_file():
            record.update(source="weights file", sha256=file_sha256(Path(weights)))
        else:
            raise ConfigError(
                f"backbone.weights = {weights!r}: no such file; give a .pth/.safetensors path, "
                f"'timm' or null (or a path under {out}/ to pre-train the embedded one)"
            )
        write_json(tmp / BACKBONE_RECORD, record)
    return record
