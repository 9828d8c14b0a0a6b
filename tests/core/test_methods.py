"""The method registry: the decorator is the list of names, a method's settings are validated
from params by the method's own model, and a new method is one file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdlora.config import ConfigError, parse_config
from sdlora.core.methods import METHODS, build_method, method_class, register_method
from sdlora.core.methods.base import Method
from sdlora.core.methods.kd import SDLoRAKD
from sdlora.core.methods.sdlora import SDLoRAReference

PACKAGE = Path(__file__).resolve().parents[2] / "sdlora"


def test_the_registry_is_the_list_of_names() -> None:
    assert set(METHODS) == {"sdlora", "sdlora_kd", "magnitude_only", "seq_lora", "frozen",
                            "prototype", "joint"}  # fmt: skip
    assert [n for n, m in METHODS.items() if m.trains_jointly] == ["joint"]
    with pytest.raises(ValueError, match="registered twice"):
        register_method(type("Again", (Method,), {"name": "sdlora"}))


def test_a_method_is_built_with_its_own_settings_and_compat() -> None:
    kd = build_method("sdlora_kd", params={"kd_tau": 0.5, "rank": 3})  # other keys ignored
    assert isinstance(kd, SDLoRAKD) and kd.tau == 0.5 and kd.params.kd_fold == "scaled"
    assert type(build_method("sdlora", "reference_code")) is SDLoRAReference
    joint = build_method("joint", "reference_code")  # a subclass of SD-LoRA keeps its hooks
    assert type(joint) is method_class("joint") and joint.head_init == "kaiming_linear"
    with pytest.raises(ValueError, match="sdlora_kd follows the paper"):
        build_method("sdlora_kd", "reference_code")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"method": "ewc"},
            "model.method = 'ewc': use one of ('frozen', 'joint', 'magnitude_only'",
        ),
        ({"kd_tau": -0.1}, "model.kd_tau = -0.1: Input should be greater than or equal to 0"),
        ({"kd_taus": 1}, "model.kd_taus: unknown key"),
    ],
)
def test_params_name_the_bad_method_key(model: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model": model}, "params.yaml")
    assert f"  {expected}" in str(err.value)


def test_method_settings_get_their_defaults_in_the_section() -> None:
    model = parse_config({"model": {"method": "sdlora"}}).model
    assert model.model_dump()["kd_tau"] == 0.1  # present, so the identity sees the default


def test_a_new_method_with_settings_is_one_file(tmp_path: Path) -> None:
    """What the package docstring promises: a file in sdlora/core/methods/ and nothing else."""
    shutil.copytree(PACKAGE, tmp_path / "sdlora", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sdlora" / "core" / "methods" / "toy.py").write_text(
        textwrap.dedent("""
        from pydantic import BaseModel, Field
        from sdlora.core.methods.base import Method, register_method

        class ToyParams(BaseModel):
            toy_gain: float = Field(1.0, gt=0)

        @register_method
        class Toy(Method):
            name = "toy"
            Params = ToyParams
    """)
    )
    check = textwrap.dedent("""
        import timm, torch
        from sdlora.config import ConfigError, parse_config
        from sdlora.core.model import SDLoRAViT
        cfg = parse_config({"model": {"method": "toy", "toy_gain": 2.0}})
        backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=16,
                                     patch_size=4, embed_dim=32, depth=1, num_heads=2)
        model = SDLoRAViT.from_config(backbone, "tiny", cfg.model)
        assert model.policy.name == "toy" and model.policy.params.toy_gain == 2.0
        try:
            parse_config({"model": {"method": "toy", "toy_gain": 0}}, "p.yaml")
        except ConfigError as err:
            assert "model.toy_gain = 0: Input should be greater than 0" in str(err), err
        else:
            raise AssertionError("toy_gain 0 accepted")
    """)
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
