"""Every params example in the README and docs/ is a valid params file (as written)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdlora.config import parse_config, read_yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{doc.name}:{i}")
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S))
]


def test_docs_have_params_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS)
def test_params_example_is_valid(block: str) -> None:
    parse_config(read_yaml(block), "example")
