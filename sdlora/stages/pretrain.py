"""Stage ``pretrain``: record the backbone, and pre-train the embedded one."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdlora.atomic import atomic_directory
from sdlora.config import Config, ConfigError
from sdlora.plan import BACKBONE_DIR
from sdlora.report import write_json
from sdlora.stages.records import BACKBONE_RECORD


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrain_stage(cfg: Config) -> dict[str, Any]:
    """Write ``artifacts/backbone``: ``backbone.json`` and, for the embedded default, the weights.

    Pre-training runs only when ``backbone.weights`` is a file inside ``artifacts/backbone``
    (the embedded default); with ``timm``, null or a file elsewhere it only records which
    backbone the run uses (and the file's SHA-256).
    """
    from sdlora.pretrain import pretrain_backbone

    out = Path(BACKBONE_DIR)
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
            record["sha256"] = _sha256(target)
        elif Path(weights).is_file():
            record.update(source="weights file", sha256=_sha256(Path(weights)))
        else:
            raise ConfigError(
                f"backbone.weights = {weights!r}: no such file; give a .pth/.safetensors path, "
                f"'timm' or null (or a path under {BACKBONE_DIR}/ to pre-train the embedded one)"
            )
        write_json(tmp / BACKBONE_RECORD, record)
    return record
