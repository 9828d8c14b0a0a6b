"""The smoke runs' shared params (test_smoke.py and test_smoke_paper.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml as shipped but tracking into a fresh SQLite store, without progress bars."""
    folder = tmp_path_factory.mktemp("smoke")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["progress"] = False
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path
