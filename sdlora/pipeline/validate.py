"""Stage ``validate``: the whole params file against the config, before anything else runs.

DVC re-runs a stage only when something it tracks changes, and every other stage tracks only
the keys its code reads: a misspelt key (``progres: true``) changes none of them, so without
this stage ``dvc repro`` would call the pipeline up to date and ignore the typo. This stage
tracks the whole file (``params: [params.yaml: ]`` in dvc.yaml), so any edit re-runs it: it
loads the file with :func:`sdlora.config.load_config` (unknown keys, wrong types, values out of
range: an error naming the key) and writes a file whose bytes depend only on the params file's
path. ``prepare`` depends on that file, so a valid edit re-runs nothing else and an invalid one
stops ``dvc repro`` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdlora.config import Config, check_pipeline_method
from sdlora.files import atomic_path
from sdlora.pipeline.layout import VALIDATED, require_plan


def validate_stage(
    cfg: Config, *, params: str | Path = "params.yaml", out: str | Path = VALIDATED
) -> dict[str, Any]:
    """Write ``out`` for the already validated ``cfg``: the same bytes whatever its values."""
    check_pipeline_method(cfg)  # load_config validated the rest
    require_plan(cfg)  # the task list matches the pipeline's layout
    payload = {"params": str(params), "valid": True}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # DVC creates no parent of an output
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return payload
