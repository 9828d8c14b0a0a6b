"""The one typed configuration, loaded from ``params.yaml`` and validated once at start.

Every section mirrors a section of ``params.yaml``. Unknown keys, wrong types and values out of
range raise :class:`ConfigError`, whose message names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sdlora.errors import BadInput

EMBEDDED_DATASETS = {"digits": 10, "glyphs": 40, "glyphs-r": 40}  # class counts (tests check them)
# Read from disk by the prepare stage (sdlora.data.prepare); class counts known before reading.
ON_DISK_DATASETS = {
    "cifar100": 100,
    "imagenet-r": None,
    "imagenet-a": None,
    "domainnet": None,
    "cub200": 200,
    "imagefolder": None,
}
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
# glyphs-r's renditions by name (drawn by sdlora.data.renditions, which checks they agree)
RENDITION_NAMES = ("plain", "outline", "inverse", "texture", "stripes", "clutter", "stencil")


def check_renditions(names: Sequence[str]) -> None:
    """Refuse an empty list, a repeated name or one that is not a rendition."""
    if not names:
        raise ValueError("renditions must name at least one rendition")
    unknown = [n for n in names if n not in RENDITION_NAMES]
    if unknown:
        raise ValueError(f"unknown renditions {unknown}; known: {list(RENDITION_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"renditions must not repeat a name, got {list(names)}")


def known_num_classes(dataset: str) -> int | None:
    """The dataset's class count when it is fixed (embedded, CIFAR-100); None: read the folder."""
    return {**EMBEDDED_DATASETS, **ON_DISK_DATASETS}.get(dataset)


TASKS_COMMAND = "python -m sdlora tasks --write"  # regenerates the tasks section


class ConfigError(BadInput, ValueError):
    """A params file or override that does not describe a valid run."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # a list or mapping as a key: SafeLoader's own error says where
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """One line: where in ``text`` YAML stopped (1-based line and column), why, and the fix."""
    fix = "fix the syntax there (indentation, a ':' after each key, closed brackets and quotes)"
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML refuses: no mark, a position
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        why = f"character #x{err.character:04x}: {err.reason}"
        return f" at line {line}, column {column}: {why}; remove it"
    if not isinstance(err, yaml.MarkedYAMLError):
        return ": " + " ".join(str(err).split()) + f"; {fix}"
    if isinstance(err, yaml.constructor.ConstructorError):
        fix = "keep one of them" if "given twice" in str(err.problem) else "fix the value there"
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    why = err.problem or err.context or "syntax error"
    if err.context and err.problem:
        ctx = err.context_mark
        started = f" at line {ctx.line + 1}, column {ctx.column + 1}" if ctx else ""
        why += f" ({err.context}{started})"
    return f"{where}: " + " ".join(why.split()) + f"; {fix}"


def read_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML safely; a key repeated in one mapping is an error, not silently dropped.

    A syntax error raises :class:`ConfigError`: one line naming ``source``, line, column, why.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML{_yaml_problem(err, text)}") from None


def read_params(path: str | Path) -> dict[str, Any]:
    """The mapping in a params file; missing, unreadable, empty or not a mapping: ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the params file ({err.strerror})") from None
    raw = read_yaml(text, str(path))
    if raw is None:
        raise ConfigError(
            f"{path}: params file is empty; write the settings there (start from the "
            "repository's params.yaml)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def _has_bool(value: Any) -> bool:
    """Whether ``value`` is true/false, or a list holding one (at any depth)."""
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(_has_bool(v) for v in value)


def _scalars(value: Any) -> list[Any]:
    """The values in ``value`` (lists and mappings opened, at any depth)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [x for v in value for x in _scalars(v)]
    return [value]


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type takes true/false anywhere: bool, Any, or a model (which checks
    its own fields)."""
    if annotation is bool or annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_takes_bool(a) for a in get_args(annotation))


def _types_in(annotation: Any) -> list[Any]:
    """``annotation`` and every type inside it (``list[tuple[int, int]] | None``: all five)."""
    return [annotation, *(t for a in get_args(annotation) for t in _types_in(a))]


def _number_kind(annotation: Any) -> str:
    """What a number field takes, in words: 'a number', "an integer or 'auto'", ..."""
    types = _types_in(annotation)
    if str in types and int not in types and float not in types:
        return "text (quote a name such as 'yes')"
    words = ["a number" if float in types else "an integer"]
    words += [repr(v) for t in types if get_origin(t) is Literal for v in get_args(t)]
    return " or ".join(words)


def _bool_problem(value: Any, annotation: Any) -> str | None:
    """The message for true/false given where a number belongs (YAML's ``true`` would pass as
    1, so ``batch_size: true`` trained with batches of one); None when ``value`` is fine."""
    if _has_bool(value) and not _takes_bool(annotation):
        return f"expected {_number_kind(annotation)}, not true/false"
    return None


class _Section(BaseModel):
    # allow_inf_nan: every float refuses inf and nan (`lr: .inf` trained to NaN and exited 0)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        problem = _bool_problem(v, cls.model_fields[info.field_name].annotation)
        if problem:
            raise ValueError(problem)
        return v


SEED_MAX = 2**32 - 1  # numpy's RandomState (the class order, SPEC §1) takes 0 .. 2**32 - 1


def _seed(v: int) -> int:
    if not 0 <= v <= SEED_MAX:
        raise ValueError(f"must be a seed in 0 .. {SEED_MAX} (numpy's range)")
    return v


Seed = Annotated[int, AfterValidator(_seed)]

# The tracking stores MLflow 3.17 registers (mlflow/tracking/_tracking_service/utils.py,
# _register_tracking_stores), less the Unity Catalog schemes it registers only to refuse them;
# "" is a folder path (and the bare word "databricks"). Plugins add theirs as entry points.
MLFLOW_SCHEMES = frozenset(
    {"", "file", "databricks", "http", "https", "sqlite", "postgresql", "mysql", "mssql"}
)
MLFLOW_SCHEMES_SHOWN = (
    "null, a folder path, file:, sqlite:, postgresql:, mysql:, mssql:, http:, https: or databricks"
)


def _tracking_scheme(uri: str) -> str:
    """The store MLflow picks for ``uri`` (as mlflow.utils.uri.get_uri_scheme reads it)."""
    scheme = urlparse(uri).scheme
    if len(scheme) == 1:  # a Windows drive letter (C:\\mlruns): a folder path
        return ""
    db = re.fullmatch(r"(sqlite|postgresql|mysql|mssql)(\+\w+)?", scheme)
    return db.group(1) if db else scheme


class DataConfig(_Section):
    """Which benchmark, and how its classes are cut into tasks (SPEC §1)."""

    dataset: Literal[
        "digits",
        "glyphs",
        "glyphs-r",
        "cifar100",
        "imagenet-r",
        "imagenet-a",
        "domainnet",
        "cub200",
        "imagefolder",
    ] = "digits"
    root: str | None = Field(
        None, description="on-disk datasets: the folder the dataset was downloaded into"
    )
    init_cls: int = Field(2, ge=1, description="classes in task 0")
    increment: int = Field(2, ge=1, description="classes in every later task")
    tasks: list[list[str]] | None = Field(
        None,
        description="the tasks by name, each a list of the dataset's class names; replaces "
        "init_cls, increment and the seeded class order (classes left out are not used)",
    )
    image_size: int = Field(16, ge=4, description="side of the square model input, pixels")
    input_norm: Literal["backbone", "none"] = "backbone"
    augment: Literal["crop_flip", "none"] = Field(
        "crop_flip",
        description="streamed training images: crop_flip (SPEC §6: random resized crop + "
        "horizontal flip) or none (the test transform)",
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="digits and unsplit folder layouts: held-out share"
    )
    split_seed: Seed = Field(
        0, description="digits and unsplit folder layouts: seed of the train/test split"
    )
    train_per_class: int = Field(60, ge=1, description="glyphs: rendered training images")
    test_per_class: int = Field(20, ge=1, description="glyphs: rendered test images")
    renditions: list[str] | None = Field(
        None,
        description="glyphs-r: the renditions samples are drawn in, cycled evenly per class "
        "(sdlora.data.renditions); null: the benchmark's own set",
    )
    skip_corrupt: bool = Field(
        False, description="prepare: skip unreadable images (counted in the manifest), not fail"
    )
    domains: list[str] = Field(
        default_factory=lambda: list(DOMAINNET_DOMAINS),
        description="domainnet: the domains whose {domain}_train/test.txt lists are merged",
    )
    row_group_size: int = Field(
        512, ge=1, description="prepare: Parquet rows per row group (the streaming read unit)"
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader processes that decode and transform images for each training "
        "process (0: in the training process); auto: 0 on CPU, where they would take the "
        "step's cores, else up to 8 of the CPUs this process may use",
    )

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 'auto' or a count >= 0")
        return v

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_as_text(cls, v: Any) -> Any:
        """YAML reads digits' class names 0..9 as numbers: they name the classes "0".."9"."""
        if not isinstance(v, list):
            return v
        return [
            [str(c) if type(c) is int else c for c in t] if isinstance(t, list) else t for t in v
        ]

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one task, or be null (init_cls and increment)")
        first: dict[str, int] = {}
        for t, names in enumerate(v):
            if not names:
                raise ValueError(f"task {t} is empty: give it at least one class name")
            for name in names:
                if not name.strip():
                    raise ValueError(f"task {t} holds an empty class name")
                if name in first:
                    where = f"twice in task {t}" if first[name] == t else (
                        f"in task {first[name]} and in task {t}")  # fmt: skip
                    raise ValueError(f"class {name!r} is {where}: a class belongs to one task")
                first[name] = t
        return v

    @field_validator("renditions")
    @classmethod
    def _renditions(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            check_renditions(v)
        return v

    @model_validator(mode="after")
    def _renditions_apply(self) -> DataConfig:
        if self.renditions is not None and self.dataset != "glyphs-r":
            raise ValueError(
                f"data.renditions applies to dataset 'glyphs-r' only (data.dataset is "
                f"{self.dataset!r}); remove it or set data.dataset: glyphs-r"
            )
        return self

    def num_named_tasks(self) -> int | None:
        """How many tasks ``tasks`` names (None: init_cls and increment decide)."""
        return None if self.tasks is None else len(self.tasks)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a folder path or null, not empty")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"must name at least one domain, e.g. {list(DOMAINNET_DOMAINS)}")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a domain")
        bad = [d for d in v if not d or "/" in d or "\\" in d or d.startswith(".")]
        if bad:
            raise ValueError(f"domain names are plain folder names, got {bad}")
        return v


class BackboneConfig(_Section):
    """A timm ViT by name, with weights from timm, a local file, or none (random)."""

    name: str = "vit_tiny_patch16_224"
    weights: str | None = Field(
        "artifacts/backbone/glyph_vit.safetensors",
        description="'timm' for the name's pretrained weights, a .pth/.safetensors path, or null",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="timm.create_model kwargs")

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():  # Any: allow_inf_nan does not reach timm's arguments
            if any(isinstance(x, float) and not math.isfinite(x) for x in _scalars(value)):
                raise ValueError(f"backbone.kwargs.{key} = {value!r}: timm takes finite numbers")
        return v


class PretrainConfig(_Section):
    """Pre-training of the embedded backbone on rendered Latin letters (offline)."""

    per_class: int = Field(600, ge=1)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    seed: Seed = 0
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of pre-training (one process, no Ray workers beside "
        "it); null: train.threads. The backbone's floats depend on the count",
    )

    def thread_count(self, train_threads: int) -> int:
        """The threads pre-training runs with: its own count, else the tasks' ``train_threads``."""
        return train_threads if self.threads is None else self.threads


class ModelConfig(_Section):
    """The SD-LoRA adapter and its baselines (SPEC §2, §4).

    ``method`` names a method of the registry (:mod:`sdlora.core.methods`); the settings a
    method declares (its ``Params``: ``kd_tau``, ``kd_fold``, ...) are keys of this section too,
    validated by their method and filled in with its defaults.
    """

    model_config = ConfigDict(extra="allow", frozen=True)  # extras: the methods' own settings

    method: str = "sdlora"
    rank: int = Field(10, ge=1)
    rank_schedule: list[tuple[int, int]] | None = Field(
        None, description="[[first_task, rank], ...] for SD-LoRA-RR; null = `rank` for every task"
    )
    blocks: list[int] | None = Field(None, description="adapted block indices; null = all")
    targets: list[Literal["q", "v"]] = Field(default_factory=lambda: ["q", "v"])
    magnitude_scope: Literal["task", "matrix"] = "task"
    magnitude_init: float = 1.0
    compat: Literal["paper", "reference_code"] = "paper"

    @model_validator(mode="before")
    @classmethod
    def _method_settings(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        from sdlora.core.methods import METHODS, param_models  # the registry (imports torch)

        raw = dict(raw)
        name = raw.get("method", "sdlora")
        if not isinstance(name, str) or name not in METHODS:
            raise ValueError(f"model.method = {name!r}: use one of {tuple(sorted(METHODS))}")
        for params in param_models():
            given = {k: raw.pop(k) for k in list(raw) if k in params.model_fields}
            for key, value in given.items():  # the methods' models are not _Sections
                problem = _bool_problem(value, params.model_fields[key].annotation)
                if problem:
                    raise ValueError(f"model.{key} = {value!r}: {problem}")
            try:
                own = params.model_validate(given)
            except ValidationError as err:
                e = err.errors()[0]
                key = ".".join(str(p) for p in e["loc"])
                raise ValueError(f"model.{key} = {e.get('input')!r}: {e['msg']}") from None
            for key, value in own:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(
                        f"model.{key} = {given[key]!r}: Input should be a finite number"
                    )
            raw.update(own.model_dump(mode="json"))
        unknown = sorted(set(raw) - set(cls.model_fields) - _method_keys(), key=str)
        if unknown:
            raise ValueError(f"model.{unknown[0]}: unknown key (check the spelling; see "
                             "params.yaml for the keys)")  # fmt: skip
        return raw

    @field_validator("rank_schedule")
    @classmethod
    def _schedule(cls, v: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if v is None:
            return v
        if not v or v[0][0] != 0:
            raise ValueError("must start with an entry for task 0, e.g. [[0, 10], [4, 8]]")
        firsts = [f for f, _ in v]
        if firsts != sorted(set(firsts)):
            raise ValueError(f"first tasks must be strictly increasing, got {firsts}")
        if any(r < 1 for _, r in v):
            raise ValueError("every rank must be >= 1")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list 'q' and/or 'v' once each")
        return v

    def rank_for_task(self, task: int) -> int:
        """Rank of task ``task``'s component: the last schedule entry at or before it."""
        if self.rank_schedule is None:
            return self.rank
        return [r for first, r in self.rank_schedule if first <= task][-1]


class TrainConfig(_Section):
    """One task's optimisation (SPEC §6: the public code uses SGD, momentum 0.9, constant lr)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: every forward (training and evaluation) under torch.autocast with "
        "bfloat16, weights and optimizer in fp32; for GPUs with bf16 (Ampere and later)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward (compiled once per task; pays off on "
        "a GPU over long tasks, not on the embedded default)",
    )
    threads: int = Field(
        1,
        ge=1,
        description="torch CPU threads of every process that trains a task (`sdlora run`, each "
        "Ray worker): float results, and so the accuracy matrix, are bit-identical only "
        "between equal thread counts",
    )


class RayConfig(_Section):
    """Where and how wide each ``train@k`` stage runs (Ray Train's ScalingConfig, FailureConfig)."""

    address: str | None = Field(
        None,
        description="null: RAY_ADDRESS if set, else Ray starts in-process; 'host:port' or "
        "'ray://host:port': that cluster (RAY_ADDRESS is ignored); 'auto': RAY_ADDRESS if set, "
        "else the cluster last started by `ray start` on this machine (Ray's precedence: "
        "sdlora.ops.ray_session)",
    )
    num_workers: int = Field(1, ge=1, description="DDP workers; the global batch stays the same")
    use_gpu: bool = Field(False, description="one GPU per worker (nccl); false: CPU (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    max_failures: int = Field(
        2, ge=-1, description="worker-group restarts from the last epoch checkpoint; -1: no limit"
    )
    storage_path: str = Field(
        "runs/ray", min_length=1, description="Ray Train's run folders (per-epoch checkpoints)"
    )
    poll_interval_s: float = Field(
        0.2,
        gt=0,
        description="how often Ray Train's controller polls the workers "
        "(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; Ray's 1 s default costs up to 1 s per epoch report)",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be null, 'auto', 'host:port' or 'ray://host:port', not empty")
        return v


class GateConfig(_Section):
    """When a new version of the registered model becomes its ``champion`` (the report stage)."""

    max_forgetting_points: float = Field(
        5.0, ge=0.0, le=100.0,
        description="the most the accuracy on the tasks the champion knows may fall against "
        "the champion's, in percentage points",
    )  # fmt: skip
    min_new_task_accuracy: float = Field(
        0.0, ge=0.0, le=100.0,
        description="the least accuracy (%) the tasks the champion does not know must reach",
    )  # fmt: skip


class MlflowConfig(_Section):
    """Where runs are tracked: one MLflow run per task sequence; each finished sequence a version
    of a registered model, promoted by the gate."""

    tracking_uri: str | None = Field(
        None, description="null: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db here"
    )
    experiment: str = Field("sdlora", min_length=1)
    registered_model: str | None = Field(
        None,
        min_length=1,
        description="the Model Registry name every finished sequence is a version of; null: "
        "sdlora-<data.dataset>",
    )
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("registered_model")
    @classmethod
    def _registered_model(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(
                "use letters, digits and _ . - only (it goes into URIs such as "
                "models:/NAME@champion)"
            )
        return v

    def model_name(self, dataset: str) -> str:
        """The registered model's name."""
        return self.registered_model or f"sdlora-{dataset}"

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError(f"must be a tracking URI: {MLFLOW_SCHEMES_SHOWN}; not empty")
        scheme = _tracking_scheme(v)
        if scheme in MLFLOW_SCHEMES:
            return v
        if scheme in {e.name for e in entry_points(group="mlflow.tracking_store")}:
            return v  # an installed MLflow plugin's store
        raise ValueError(
            f"scheme {scheme!r} is not an MLflow tracking store; use {MLFLOW_SCHEMES_SHOWN}"
        )


# What every variant of a comparison and every trial of a sweep shares with the pipeline: the
# splits (seed, data, tasks), the backbone, and where it runs and is tracked. A compare method
# or a tune key cannot change them.
SHARED_BY_VARIANTS = (
    "seed", "data", "backbone", "pretrain", "tasks", "final_task", "ray", "mlflow", "progress",
)  # fmt: skip


def _check_variant_key(key: str, where: str) -> None:
    if str(key).split(".")[0] in SHARED_BY_VARIANTS:
        raise ValueError(
            f"{key}: every {where} shares it with the pipeline (splits, backbone, cluster, "
            "tracking); set it in params.yaml"
        )


class CompareConfig(_Section):
    """The compare stage (``dvc repro compare/dvc.yaml``), read from ``compare/params.yaml``:
    every entry of ``methods`` over ``seeds`` on the same splits. An entry is a label and the
    params it changes (dotted keys, applied over params.yaml), so variants such as SD-LoRA-RR
    are a rank schedule away."""

    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label, overrides in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label)):
                raise ValueError(f"label {label!r}: use letters, digits and _ . - only")
            if not isinstance(overrides, dict):
                raise ValueError(
                    f"{label}: give a mapping of params to change, e.g. {{}} or "
                    "{model.method: seq_lora}"
                )
            for key in overrides:
                try:
                    _check_variant_key(key, "method of a comparison")
                except ValueError as err:
                    raise ValueError(f"{label}: {err}") from None
        return v


# The tune stage's search space kinds: Ray Tune's sampler and how many arguments it takes
# (None: a list of values). sdlora.ops.ray_tune turns them into Tune's objects.
SPACE_KINDS: dict[str, int | None] = {"loguniform": 2, "uniform": 2, "choice": None, "grid": None}


class TuneSettings(_Section):
    """The tune stage (``dvc repro tune/dvc.yaml``), read from ``tune/params.yaml``: a Ray Tune
    sweep of whole task sequences on the pipeline's splits and backbone, ASHA stopping weak
    trials after early tasks."""

    space: dict[str, Any] = Field(
        min_length=1,
        description="dotted params key: {kind: arguments}, kinds loguniform/uniform [low, high],"
        " choice/grid [values]",
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict, description="dotted params key: value, the same in every trial"
    )
    num_samples: int = Field(8, ge=1, description="trials (times every grid's values)")
    objective: Literal["final_accuracy", "average_anytime_accuracy"] = "final_accuracy"
    storage_budget: int | None = Field(
        None, ge=1, description="the best trial stores at most this many parameters; null: any"
    )
    grace_period: int = Field(2, ge=1, description="tasks every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/this of a rung's trials")
    trial_mode: Literal["process", "ray_train"] = Field(
        "process",
        description="process: the sequence in the trial's own process (world size 1); "
        "ray_train: a TorchTrainer per task with ray.num_workers workers (the train stages')",
    )
    cpus_per_trial: float = Field(
        1.0, gt=0, description="CPUs a trial holds (ray_train: its driver, besides the workers')"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="null: as many as the cluster's CPUs hold"
    )
    seed: Seed = Field(0, description="the search's random state: the same trials for one seed")
    storage_path: str = Field(
        "runs/tune/ray", min_length=1, description="Ray Tune's experiment folders (restored)"
    )

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, entry in v.items():
            _check_variant_key(key, "trial")
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(
                    f"{key}: give one of {sorted(SPACE_KINDS)} as {{kind: arguments}}, e.g. "
                    f"{{loguniform: [0.0001, 0.01]}}; got {entry!r}"
                )
            ((kind, args),) = entry.items()
            if kind not in SPACE_KINDS:
                raise ValueError(f"{key}: unknown kind {kind!r}; use {sorted(SPACE_KINDS)}")
            arity = SPACE_KINDS[kind]
            if not isinstance(args, list) or not args or (arity and len(args) != arity):
                shape = "[low, high]" if arity else "[value, value, ...]"
                raise ValueError(f"{key}: {kind} takes a list {shape}, got {args!r}")
            if arity and not all(
                isinstance(a, int | float) and not isinstance(a, bool) for a in args
            ):
                raise ValueError(f"{key}: {kind} takes numbers, got {args!r}")
            if arity and not all(math.isfinite(a) for a in args):
                raise ValueError(f"{key}: {kind} takes finite numbers, got {args!r}")
            positive = kind == "loguniform"
            if arity and not (args[0] < args[1] and (args[0] > 0 or not positive)):
                need = "0 < low < high" if positive else "low < high"
                raise ValueError(f"{key}: {kind} needs {need}, got {args!r}")
        return v

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            _check_variant_key(key, "trial")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> TuneSettings:
        both = sorted(set(self.space) & set(self.fixed))
        if both:
            raise ValueError(f"{both} are both searched (space) and fixed; keep one")
        return self


class TaskEntry(_Section):
    """One ``train@k`` stage: its split, what it starts from, and optional overrides."""

    split: str = Field(description="the task's prepared split folder (a DVC dependency)")
    prev: str = Field(description="the backbone folder (task 0) or the previous task's output")
    rank: int | None = Field(None, ge=1, description="this task's LoRA rank (else model.*)")
    epochs: int | None = Field(None, ge=1, description="this task's epochs (else train.epochs)")
    lr: float | None = Field(None, gt=0, description="this task's lr (else train.lr)")
    label_offset: int | None = Field(
        None, ge=0, description="the task's first label: the classes of the tasks before it"
    )
    classes: list[str] | None = Field(
        None, description="the task's classes by name (data.tasks' entry; null: the seeded order)"
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _names_as_text(cls, v: Any) -> Any:
        """As in data.tasks: YAML's numbers name the classes "0".."9"."""
        return [str(c) if type(c) is int else c for c in v] if isinstance(v, list) else v


class Config(_Section):
    """A whole run: data, backbone, model, training, and how the pipeline runs it."""

    seed: Seed = 0
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    tasks: dict[int, TaskEntry] | None = Field(
        None, description="the pipeline's train@k stages; generated by `sdlora tasks --write`"
    )
    final_task: str | None = Field(None, description="the last task's output (evaluate reads it)")

    def rank_for_task(self, task: int) -> int:
        """Task ``task``'s rank: its ``tasks`` override, else ``model.rank``/``rank_schedule``."""
        entry = (self.tasks or {}).get(task)
        if entry is not None and entry.rank is not None:
            return entry.rank
        return self.model.rank_for_task(task)

    def for_task(self, task: int) -> Config:
        """This config with task ``task``'s ``epochs``/``lr`` overrides applied to ``train``."""
        entry = (self.tasks or {}).get(task)
        if entry is None:
            return self
        update = {k: v for k, v in (("epochs", entry.epochs), ("lr", entry.lr)) if v is not None}
        return self.model_copy(update={"train": self.train.model_copy(update=update)})

    @model_validator(mode="after")
    def _task_keys(self) -> Config:
        if self.tasks is not None and sorted(self.tasks) != list(range(len(self.tasks))):
            raise ValueError(
                f'tasks must have the keys "0" .. "{len(self.tasks) - 1}" in order, got '
                f"{sorted(self.tasks)}; run `{TASKS_COMMAND}`"
            )
        return self

    def check_num_tasks(self, num_tasks: int, source: str) -> None:
        """Raise ConfigError unless ``tasks`` has one entry per task of the data (``source``)."""
        have = len(self.tasks or {})
        if have != num_tasks:
            d = self.data
            cut = (f"data.init_cls = {d.init_cls}, data.increment = {d.increment}"
                   if d.tasks is None else "data.tasks")  # fmt: skip
            raise ConfigError(
                f"tasks: params.yaml lists {have} task(s) but {source} has {num_tasks} "
                f"({cut}); run `{TASKS_COMMAND}` to regenerate the stage list"
            )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be 'cpu', 'cuda', 'cuda:N' or 'auto'")

    @model_validator(mode="after")
    def _classes_fit(self) -> Config:
        name = self.data.dataset
        if name in ON_DISK_DATASETS and self.data.root is None:
            raise ValueError(
                f"data.root is required for dataset {name!r} (the folder it was downloaded "
                "into; see docs/data.md for the layout)"
            )
        total = known_num_classes(name)
        named = self.data.tasks
        if named is not None and total is not None and sum(map(len, named)) > total:
            raise ValueError(
                f"data.tasks names {sum(map(len, named))} classes but dataset {name!r} has "
                f"only {total}"
            )
        if named is None and total is not None and self.data.init_cls > total:
            raise ValueError(
                f"data.init_cls = {self.data.init_cls} but dataset {self.data.dataset!r} has "
                f"only {total} classes; use 1..{total}"
            )
        return self

    @model_validator(mode="after")
    def _schedule_fits(self) -> Config:
        d, total = self.data, known_num_classes(self.data.dataset)
        num_tasks = d.num_named_tasks()
        if self.model.rank_schedule is None or (num_tasks is None and total is None):
            return self  # the class count is known once prepare has read the folder
        if num_tasks is None:
            num_tasks = 1 + -(-(total - d.init_cls) // d.increment)  # SPEC §1: init_cls, ...
            why = (f"dataset {d.dataset!r} has {total} classes, data.init_cls = {d.init_cls}, "
                   f"data.increment = {d.increment}")  # fmt: skip
        else:
            why = "data.tasks lists them"
        late = [list(e) for e in self.model.rank_schedule if e[0] >= num_tasks]
        if late:
            raise ValueError(
                f"model.rank_schedule entry {late[0]} starts at task {late[0][0]}, but the data "
                f"make {num_tasks} tasks (0 .. {num_tasks - 1}: {why}); drop the entry or "
                f"start it at a task <= {num_tasks - 1}"
            )
        return self

    @model_validator(mode="after")
    def _patches_fit(self) -> Config:
        # The ViT gets data.image_size pixels (the transforms resize to it); a patch size that
        # does not divide it makes timm's patch embedding drop the last rows and columns.
        kwargs, size = self.backbone.kwargs, self.data.image_size
        patch = kwargs.get("patch_size")
        where = f"backbone.kwargs.patch_size = {patch!r}"
        if "patch_size" not in kwargs:
            named = re.search(r"patch(\d+)", self.backbone.name)
            if named is None:
                return self  # no patch size in the name (a hybrid ViT): timm decides
            patch = int(named.group(1))
            where = (
                f"backbone.name = {self.backbone.name!r} has patch size {patch} (backbone.kwargs "
                "has no patch_size), which"
            )
        if type(patch) is not int or kwargs.get("dynamic_img_pad"):
            return self  # a (h, w) pair, or timm pads the last patch
        if patch < 1:
            raise ValueError(f"{where}: a patch size is a positive number of pixels")
        if size % patch:
            fits = [str(k) for k in range(2, min(size, 64) + 1) if size % k == 0]  # ViT patches
            some = f" (e.g. {', '.join(fits)})" if fits else ""
            raise ValueError(
                f"{where} does not divide data.image_size = {size}: the ViT would leave out the "
                f"last {size % patch} pixel row(s) and column(s); use a patch size that divides "
                f"{size}{some}, or data.image_size a multiple of {patch}"
            )
        return self


def check_pipeline_method(cfg: Config) -> None:
    """The per-task pipeline (``train@k`` stages) cannot run joint training, which learns every
    task at once; raise ConfigError saying where it runs instead."""
    from sdlora.core.methods import method_class

    if method_class(cfg.model.method).trains_jointly:
        raise ConfigError(
            f"model.method = {cfg.model.method!r} trains every task at once, which the pipeline's "
            "one stage per task cannot express; run it with `python -m sdlora run` or as a method "
            "of compare/params.yaml (`dvc repro compare/dvc.yaml`), and keep a per-task method here"
        )


def _method_keys() -> set[str]:
    from sdlora.core.methods import param_models

    return {k for params in param_models() for k in params.model_fields}


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(f"{key}."):  # a section's validator named the key itself
            lines.append(f"  {msg}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see params.yaml for the keys)")
        elif e["loc"]:
            lines.append(f"  {key} = {e.get('input')!r}: {msg}")
        else:
            lines.append(f"  {msg}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def _load_section(model: type[_Section], path: str | Path) -> Any:
    """A stage's own params file (``compare/params.yaml``, ``tune/params.yaml``), validated."""
    raw = read_params(path)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, str(path))) from None


def load_compare(path: str | Path = "compare/params.yaml") -> CompareConfig:
    """The compare stage's settings (its own file, so the pipeline's tables stay its own)."""
    return _load_section(CompareConfig, path)


def load_tune(path: str | Path = "tune/params.yaml") -> TuneSettings:
    """The tune stage's settings (its own file, so the pipeline's tables stay its own)."""
    return _load_section(TuneSettings, path)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``params.yaml`` (plus dotted-key overrides such as ``{"train.lr": 0.1}``)."""
    return parse_config(with_overrides(read_params(path), overrides or {}), str(path))


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a params file's mapping) with dotted-key ``overrides`` set in place; returns it."""
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


# ---- the experiment's identity ---------------------------------------------------------------

# The keys that say where and how a run is carried out, never what it computes. Everything
# else in the config (DDP width, device, precision and threads included), the data and the
# backbone weights decide the numbers: that is the run's identity.
RUNTIME_KEYS = frozenset({
    "progress",
    "ray.address", "ray.storage_path", "ray.poll_interval_s", "ray.max_failures",
    "ray.cpus_per_worker",
    "mlflow.tracking_uri", "mlflow.experiment", "mlflow.registered_model", "mlflow.gate",
    "final_task",  # where the last task's output lies (the layout's, checked against tasks)
})  # fmt: skip
_TASK_PATHS = ("split", "prev")  # a tasks entry's folders: the layout's, not the run's
# tune/params.yaml's keys that say where or how wide a sweep runs, not what its trials compute
TUNE_RUNTIME_KEYS = frozenset({"cpus_per_trial", "max_concurrent_trials", "storage_path"})


def combine_hashes(hashes: Sequence[str]) -> str:
    """One content hash for prepared tasks whose own hashes are ``hashes``, in task order."""
    return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()


@dataclass(frozen=True)
class RunInputs:
    """What a run reads besides its params, by content: each prepared task's content hash, in
    task order (empty: the data are not counted, as in the sequence's MLflow key), and the
    backbone weights' SHA-256 (None: timm's or random)."""

    task_hashes: tuple[str, ...]
    weights_sha256: str | None

    def data_hash(self, upto: int | None = None) -> str | None:
        """The hash of tasks ``0..upto``' data (default: every task given); None if none given."""
        if not self.task_hashes:
            return None
        wanted = self.task_hashes if upto is None else self.task_hashes[: upto + 1]
        if upto is not None and len(wanted) < upto + 1:
            raise ValueError(f"the data of tasks 0..{upto} is wanted, {len(wanted)} given")
        return combine_hashes(wanted)

    def without_data(self) -> RunInputs:
        """These inputs with the data not counted (the weights still are)."""
        return RunInputs((), self.weights_sha256)


def identity(cfg: Config, inputs: RunInputs, upto: int | None = None) -> dict[str, Any]:
    """What decides the results of tasks ``0..upto`` (default: the whole sequence): the config
    without :data:`RUNTIME_KEYS` and the entries of tasks after ``upto``, plus the inputs'
    hashes (a weights file counts by its SHA-256, not its path). Checkpoint resume, the Ray run
    folder, the MLflow run, the tune sweep and the compare runs are all named by it
    (:func:`identity_key`)."""
    raw = cfg.model_dump(mode="json")
    for key in RUNTIME_KEYS:
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    if raw["data"]["tasks"] is None:  # data.tasks came later: unset, earlier identities stay
        del raw["data"]["tasks"]
    elif upto is not None:  # a later task decides nothing about the earlier ones
        raw["data"]["tasks"] = raw["data"]["tasks"][: upto + 1]
    tasks = raw.pop("tasks") or {}
    raw["tasks"] = {
        k: {n: v for n, v in entry.items() if n not in _TASK_PATHS}
        for k, entry in tasks.items()
        if upto is None or int(k) <= upto
    }
    if inputs.weights_sha256 is not None:  # a weights file: known by its content, not its path
        raw["backbone"]["weights"] = "file"
    raw["inputs"] = {"data_hash": inputs.data_hash(upto), "weights_sha256": inputs.weights_sha256}
    return raw


def digest(payload: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def identity_key(cfg: Config, inputs: RunInputs, upto: int | None = None) -> str:
    """:func:`identity` as 16 hex digits: equal keys, equal results."""
    return digest(identity(cfg, inputs, upto))
