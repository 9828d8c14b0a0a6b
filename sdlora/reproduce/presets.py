"""The published protocols as presets: ``presets/<benchmark>.yaml`` over ``presets/protocol.yaml``.

A preset is a benchmark (its data, split and published figures) in one of two flavours, the
paper's protocol and the public code's (SPEC §6). ``protocol.yaml`` holds what every benchmark
shares (``common``, then per flavour: settings, ``seeds``, ``variants``); a benchmark file adds
its ``data``, ``images`` (train/test counts, for the time estimate) and per flavour what
differs (params sections, ``seeds``, ``published``), and may replace a flavour's variants under
``variants: {flavour: {label: changes}}``. Params are merged section by section in that
order; a variant's changes (dotted keys, as ``compare/params.yaml``'s methods) come last.
Every (variant, seed) is validated as a whole params file when the preset loads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlora.config import Config, ConfigError, parse_config, read_params, with_overrides

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
PROTOCOL = "protocol.yaml"
FLAVOURS = ("paper", "code")
SECTIONS = ("data", "backbone", "model", "train")  # params sections a preset may set
METRICS = ("final_accuracy", "average_anytime_accuracy")
# Training images a GPU gets through per second under the public code, measured from its own
# log (ImageNet-R, 5 tasks: 24,000 images x 20 epochs in 78.6 min on one GPU, evaluation every
# 5 epochs included; logs/InR-T5.log of the public code). The time estimates scale from it.
LOG_IMAGES_PER_SECOND = 24_000 * 20 / (78.6 * 60)

_BENCHMARK_KEYS = {"title", "data", "images", "flavours", "variants"}
_FLAVOUR_KEYS = {*SECTIONS, "seeds", "published", "variants"}


@dataclass(frozen=True)
class Preset:
    """One benchmark in one flavour: the params of each variant, its seeds, what was published."""

    benchmark: str
    flavour: str
    title: str
    params: dict[str, Any]  # params.yaml sections (no seed)
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, Any]]  # label -> dotted changes
    published: dict[str, float] | None  # SPEC §6's figures for the ``sdlora`` variant
    images: dict[str, int]

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.flavour}"

    def raw(self, variant: str, seed: int) -> dict[str, Any]:
        """The params mapping of ``variant`` at ``seed`` (a fresh copy)."""
        raw = copy.deepcopy(self.params)
        raw["seed"] = seed
        return with_overrides(raw, copy.deepcopy(self.variants[variant]))

    def config(self, variant: str, seed: int) -> Config:
        """``variant`` at ``seed`` as a validated config."""
        return parse_config(self.raw(variant, seed), f"preset {self.name}, variant {variant}")

    @property
    def num_tasks(self) -> int:
        d = self.params["data"]
        classes = self.images.get("classes")
        if classes is None:
            raise ValueError(f"{self.name}: images.classes is needed to count tasks")
        return 1 + -(-(classes - d["init_cls"]) // d["increment"])

    @property
    def epochs(self) -> int:
        return int(self.params["train"]["epochs"])

    def gpu_hours(self) -> float:
        """Estimated GPU hours of the whole preset (every variant and seed): each training image
        is seen ``epochs`` times, at the public code's logged rate (``LOG_IMAGES_PER_SECOND``)."""
        per_run = self.images["train"] * self.epochs / LOG_IMAGES_PER_SECOND / 3600
        return per_run * len(self.seeds) * len(self.variants)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s sections merged in key by key (nested mappings recursively)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _mapping(node: Any, where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(node).__name__}")
    return node


def _check_keys(
    node: dict[str, Any], allowed: set[str], where: str, required: tuple[str, ...] = ()
) -> None:
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(allowed)})")
    missing = [k for k in required if k not in node]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")


def _sections(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k in SECTIONS}


def benchmarks(folder: str | Path = PRESETS_DIR) -> list[str]:
    """The benchmark names: every ``<name>.yaml`` of ``folder`` but the protocol."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.name != PROTOCOL)


def load_preset(name: str, folder: str | Path = PRESETS_DIR) -> Preset:
    """The preset ``<benchmark>/<flavour>``, every variant and seed validated; ConfigError
    names what is wrong (an unknown preset lists the known ones)."""
    folder = Path(folder)
    benchmark, _, flavour = name.partition("/")
    known = [f"{b}/{f}" for b in benchmarks(folder) for f in FLAVOURS]
    if benchmark not in benchmarks(folder) or flavour not in FLAVOURS:
        hint = ("name a flavour too: " if benchmark in benchmarks(folder) and not flavour
                else "known: ")  # fmt: skip
        options = [k for k in known if k.startswith(f"{benchmark}/")] if flavour == "" else known
        raise ConfigError(f"preset {name!r} not found; {hint}{', '.join(options or known)}")
    protocol_file = folder / PROTOCOL
    protocol = _mapping(read_params(protocol_file), str(protocol_file))
    _check_keys(protocol, {"common", "flavours"}, str(protocol_file), ("common", "flavours"))
    proto = _mapping(protocol["flavours"].get(flavour), f"{protocol_file}: flavours.{flavour}")
    _check_keys(proto, {*SECTIONS, "seeds", "variants"}, f"{protocol_file}: flavours.{flavour}",
                ("seeds", "variants"))  # fmt: skip

    file = folder / f"{benchmark}.yaml"
    spec = _mapping(read_params(file), str(file))
    _check_keys(spec, _BENCHMARK_KEYS, str(file), ("title", "data", "images", "flavours"))
    own = _mapping(spec["flavours"].get(flavour), f"{file}: flavours.{flavour}")
    _check_keys(own, _FLAVOUR_KEYS, f"{file}: flavours.{flavour}")

    params = _merge(_sections(protocol["common"]), _sections(proto))
    params = _merge(params, {"data": spec["data"]})
    params = _merge(params, _sections(own))
    variants = {**proto["variants"], **(spec.get("variants") or {}).get(flavour, {})}
    variants = {**variants, **(own.get("variants") or {})}
    published = own.get("published")
    if published is not None:
        _check_keys(_mapping(published, f"{file}: published"), set(METRICS), f"{file}: published")
    preset = Preset(
        benchmark=benchmark,
        flavour=flavour,
        title=str(spec["title"]),
        params=params,
        seeds=tuple(own.get("seeds", proto["seeds"])),
        variants=variants,
        published=published,
        images=dict(spec["images"]),
    )
    for label in variants:  # every variant at every seed is a valid params file
        for seed in preset.seeds:
            preset.config(label, seed)
    return preset


def all_presets(folder: str | Path = PRESETS_DIR) -> list[Preset]:
    """Every benchmark in every flavour, loaded and validated."""
    return [load_preset(f"{b}/{f}", folder) for b in benchmarks(folder) for f in FLAVOURS]
