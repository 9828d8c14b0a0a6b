"""The method interface, its registry and how a method is built from params.

The hooks (:class:`sdlora.core.model.SDLoRAViT` calls them from its public lifecycle;
:func:`sdlora.core.train.fit_task` never looks at the method):

- ``adds_component(t)``: whether task ``t`` adds a LoRA pair (and a magnitude);
- ``before_task(model, t)``: changes to earlier state when task ``t`` begins;
- ``trainable(model)``: the tensors that train during the task;
- ``end_task(model)``: what happens once the task is trained, before it is evaluated;
- ``fit_head(model, means)``: for methods with ``head_from_features``, set the task's
  classifier rows from its class means of the current features (the loop computes them, with
  an all-reduce of the class sums under DDP);
- ``end_changed_function(model)``: for methods with ``end_may_change_function`` (SD-LoRA-KD's
  fold), whether this ``end_task`` did; :func:`sdlora.core.evaluate.finish_task` then records
  the current task's accuracy just before and after it (``note_end_accuracy``).

``trains_jointly`` marks the joint upper reference: the task loop gives it every task's data
as one task (:func:`sdlora.core.loop.run_sequence`), and the per-task pipeline refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT

COMPATS = ("paper", "reference_code")  # model.compat: the paper's protocol or the public code's


class NoParams(BaseModel):
    """A method without settings of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


METHODS: dict[str, type[Method]] = {}  # filled by @register_method: the only list of names


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` the method ``model.method: <cls.name>``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    for other in METHODS.values():  # params share the model section: one meaning per key
        for key in set(cls.Params.model_fields) & set(other.Params.model_fields):
            if other.Params is not cls.Params:
                raise ValueError(f"model.{key} is declared by {other.name} and {cls.name}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered class of ``model.method = name``; a ValueError naming the choices."""
    if name not in METHODS:
        raise ValueError(f"model.method = {name!r}: use one of {tuple(sorted(METHODS))}")
    return METHODS[name]


def param_models() -> list[type[BaseModel]]:
    """Every registered method's ``Params`` model, once each: their fields are the method keys
    of params' ``model`` section."""
    return list({id(m.Params): m.Params for m in METHODS.values()}.values())


def build_method(
    name: str, compat: str = "paper", params: Mapping[str, Any] | None = None
) -> Method:
    """The policy of ``model.method = name`` under ``model.compat``, with its own settings taken
    from ``params`` (the ``model`` section, or any mapping: other keys are ignored)."""
    cls = method_class(name)
    if compat not in COMPATS:
        raise ValueError(f"model.compat = {compat!r}: use one of {COMPATS}")
    own = {k: v for k, v in (params or {}).items() if k in cls.Params.model_fields}
    return cls.variant(compat)(cls.Params.model_validate(own), compat)


class Method:
    """The default hooks: no component, only the current task's head rows train."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams  # the method's own settings (model.<field>)
    head_init: ClassVar[str] = "torch"  # how new classifier rows start (sdlora.core.head)
    head_from_features: ClassVar[bool] = False  # the loop calls fit_head after the epochs
    end_may_change_function: ClassVar[bool] = False  # end_task may change the logits (KD fold)
    trains_jointly: ClassVar[bool] = False  # every task's data at once, as one task (joint)

    def __init__(self, params: BaseModel | None = None, compat: str = "paper") -> None:
        self.params = params if params is not None else self.Params()
        self.compat = compat
        if compat == "reference_code":
            self.head_init = "kaiming_linear"  # the public code's head, whatever the method

    @classmethod
    def variant(cls, compat: str) -> type[Method]:
        """The class that runs this method under ``model.compat`` (the same one by default)."""
        return cls

    def adds_component(self, task: int) -> bool:
        return False

    def magnitude_init(self, model: SDLoRAViT) -> float:
        return model.magnitude_init

    def before_task(self, model: SDLoRAViT, task: int) -> None:
        """Called when task ``task`` begins, before its component and head rows are added."""

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield model.head.weight
        yield model.head.bias

    def end_task(self, model: SDLoRAViT) -> None:
        """Called when the current task is trained, before it is evaluated."""

    def fit_head(self, model: SDLoRAViT, means: Tensor) -> None:
        """Set the current task's head rows from its class means (C_task, d) of the features."""
        raise NotImplementedError(f"{self.name} trains its head by gradient descent")

    def end_changed_function(self, model: SDLoRAViT) -> bool:
        """Whether the last ``end_task`` changed the function (only asked when it may)."""
        return False

    def note_end_accuracy(self, model: SDLoRAViT, before: float, after: float) -> None:
        """The current task's test accuracy just before and just after ``end_task``."""


def current_pairs(model: SDLoRAViT) -> Iterator[Tensor]:
    """The current task's (A_t, B_t) of every adapted matrix."""
    for m in model.matrices():
        if m.A_cur is not None:
            yield m.A_cur
            yield m.B_cur


def in_progress(model: SDLoRAViT) -> list:
    """Every adapted matrix, after checking a task is in progress (begun, not ended)."""
    mats = model.matrices()
    if any(m.A_cur is None for m in mats):
        raise RuntimeError("no task in progress: call begin_task before end_task")
    return mats
