"""Continual-learning methods as policies over one model and one training loop.

A method is the short list of things it does differently at the moments of the task lifecycle
(STYLE: Mammoth's ``begin_task`` / ``end_task``, without Avalanche's dozens of callbacks):

- ``adds_component(t)``: whether task ``t`` adds a LoRA pair (and a magnitude);
- ``before_task(model, t)``: changes to earlier state when task ``t`` begins;
- ``trainable(model)``: the tensors that train during the task;
- ``end_task(model)``: what happens once the task is trained, before it is evaluated;
- ``fit_head(model, means)``: for methods with ``head_from_features``, set the task's
  classifier rows from its class means of the current features (the loop computes them, with
  an all-reduce of the class sums under DDP);
- ``end_changed_function(model)``: for methods with ``end_may_change_function`` (SD-LoRA-KD's
  fold), whether this ``end_task`` did; :func:`sdlora.core.evaluate.finish_task` then records the
  current task's accuracy just before and after it (``note_end_accuracy``).

``trains_jointly`` marks the joint upper reference: the sequence runner gives it every task's
data as one task (:func:`sdlora.core.sequence.run_sequence`).

:class:`sdlora.core.model.SDLoRAViT` calls these hooks from its public lifecycle (``begin_task``,
``set_trainable``, ``end_task``); :func:`sdlora.core.train.fit_task` never looks at the method. A
new
method is a new class here plus its name in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT

_EPS = 1e-12
COMPATS = ("paper", "reference_code")


class Method:
    """The default hooks: no component, only the current task's head rows train."""

    name: ClassVar[str] = ""
    head_init: ClassVar[str] = "torch"  # how new classifier rows start (sdlora.core.head)
    head_from_features: ClassVar[bool] = False  # the loop calls fit_head after the epochs
    end_may_change_function: ClassVar[bool] = False  # end_task may change the logits (KD fold)
    trains_jointly: ClassVar[bool] = False  # every task's data at once, as one task (joint)

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


def _current_pairs(model: SDLoRAViT) -> Iterator[Tensor]:
    for m in model.matrices():
        if m.A_cur is not None:
            yield m.A_cur
            yield m.B_cur


class Frozen(Method):
    """Frozen backbone with the growing head: the lower reference (SPEC §4)."""

    name = "frozen"


class Prototype(Method):
    """Frozen backbone with a prototype classifier, "SimpleCIL" (SPEC §4): no gradient training.

    Each class's row is the unit mean of its frozen features and the bias is 0, so the head's
    arg-max is the cosine nearest class mean (||f|| is the same for every class). The merged
    model is a plain timm ViT with that Linear head.
    """

    name = "prototype"
    head_from_features = True

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield from ()

    @torch.no_grad()
    def fit_head(self, model: SDLoRAViT, means: Tensor) -> None:
        model.head.weight.copy_(torch.nn.functional.normalize(means, dim=1))
        model.head.bias.zero_()


class SeqLoRA(Method):
    """Sequential LoRA: one pair per adapted matrix, scale 1, trained on every task in turn."""

    name = "seq_lora"

    def adds_component(self, task: int) -> bool:
        return task == 0

    def magnitude_init(self, model: SDLoRAViT) -> float:
        return 1.0  # plain LoRA: a fixed scale, never trained

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield from _current_pairs(model)
        yield from super().trainable(model)


class SDLoRA(Method):
    """SD-LoRA as the paper writes it (SPEC §2): a new pair per task, old directions frozen,
    every magnitude trained, and a function-preserving switch at the end of each task."""

    name = "sdlora"

    def adds_component(self, task: int) -> bool:
        return True

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield from _current_pairs(model)
        yield model.magnitudes.alpha
        yield from super().trainable(model)

    @torch.no_grad()
    def end_task(self, model: SDLoRAViT) -> None:
        """Freeze D_t = B_t A_t / ||B_t A_t||_F, keeping the function (SPEC §2 "End of task t").

        ``magnitude_scope: matrix``: alpha_t^m <- alpha_t^m ||B A||; ``task``: with
        n^m = ||B^m A^m||, nbar = mean n^m, store c^m = n^m / nbar and alpha_t <- alpha_t nbar.
        """
        mats = _in_progress(model)
        t = model.num_tasks - 1
        norms = torch.stack([m.current_norm() for m in mats])  # (M,)
        alpha = model.magnitudes.alpha
        if model.magnitude_scope == "matrix":
            alpha[t] *= torch.where(norms > _EPS, norms, torch.ones_like(norms))
            factors = torch.ones_like(norms)
        else:
            nbar = norms.mean()
            if nbar > _EPS:
                factors = norms / nbar
                alpha[t] *= nbar
            else:
                factors = torch.zeros_like(norms)
        for m, n, c in zip(mats, norms, factors, strict=True):
            m.freeze_current(n, c)


class SDLoRAKD(SDLoRA):
    """SD-LoRA-KD (SPEC §3): SD-LoRA, then the new direction folds into the old ones when least
    squares explains it (relative residual <= ``tau``); the decision joins ``model.kd_log``."""

    name = "sdlora_kd"
    end_may_change_function = True

    def __init__(self, tau: float = 0.0, fold: str = "scaled") -> None:
        self.tau, self.fold = float(tau), fold

    @torch.no_grad()
    def end_task(self, model: SDLoRAViT) -> None:
        super().end_task(model)
        if model.num_tasks > 1:  # task 0 has nothing to fold into
            from sdlora.core.kd import distill  # kd reads the model's layers: imported when used

            model.kd_log.append(distill(model, self.tau, self.fold).summary())  # type: ignore[arg-type]

    def _entry(self, model: SDLoRAViT) -> dict | None:
        t = model.num_tasks - 1
        return next((e for e in model.kd_log if e["task"] == t), None)

    def end_changed_function(self, model: SDLoRAViT) -> bool:
        entry = self._entry(model)
        return entry is not None and entry["groups_folded"] > 0

    def note_end_accuracy(self, model: SDLoRAViT, before: float, after: float) -> None:
        entry = self._entry(model)
        if entry is not None:  # SPEC §3: "report accuracy before and after" the fold
            entry["accuracy_before_fold"], entry["accuracy_after_fold"] = before, after


class MagnitudeOnly(SDLoRA):
    """Magnitude-only ablation (SPEC §4, the paper's Finding 1): task 0 trains as SD-LoRA; its
    direction then stays fixed and later tasks train only its magnitude(s) and their head rows."""

    name = "magnitude_only"

    def adds_component(self, task: int) -> bool:
        return task == 0

    @torch.no_grad()
    def end_task(self, model: SDLoRAViT) -> None:
        if model.num_tasks == 1:  # only task 0 has a pair to freeze
            super().end_task(model)


class Joint(SDLoRA):
    """Joint training (SPEC §4, the upper reference): every task's data at once, as one task with
    SD-LoRA's single component; the accuracy matrix has one row."""

    name = "joint"
    trains_jointly = True


class SDLoRAReference(SDLoRA):
    """SD-LoRA as the public research code runs it (``compat: reference_code``, SPEC §2).

    The trained network is evaluated as it is (current pair raw, alpha_t B_t A_t); only when
    the next task begins is the pair normalised by ||B||_F ||A||_F, without rescaling (the
    function jumps), and every old magnitude reset to ``magnitude_init``. New classifier rows
    start as its SimpleLinear: Kaiming-normal with the linear gain, bias 0.
    """

    head_init = "kaiming_linear"

    @torch.no_grad()
    def before_task(self, model: SDLoRAViT, task: int) -> None:
        if task == 0:
            return
        for m in _in_progress(model):
            m.freeze_current(m.current_factor_norms(), torch.tensor(1.0))
        model.magnitudes.alpha[:task] = model.magnitude_init

    def end_task(self, model: SDLoRAViT) -> None:
        _in_progress(model)  # nothing changes: the trained network is what is evaluated


def _in_progress(model: SDLoRAViT) -> list:
    mats = model.matrices()
    if any(m.A_cur is None for m in mats):
        raise RuntimeError("no task in progress: call begin_task before end_task")
    return mats


METHODS: dict[str, type[Method]] = {
    m.name: m for m in (SDLoRA, SDLoRAKD, MagnitudeOnly, SeqLoRA, Frozen, Prototype, Joint)
}


def build_method(
    name: str, compat: str = "paper", kd_tau: float = 0.0, kd_fold: str = "scaled"
) -> Method:
    """The policy of ``model.method`` under ``model.compat`` (``kd_*``: ``sdlora_kd`` only)."""
    if name not in METHODS:
        raise ValueError(f"model.method = {name!r}: use one of {tuple(METHODS)}")
    if compat not in COMPATS:
        raise ValueError(f"model.compat = {compat!r}: use one of {COMPATS}")
    if name == "sdlora" and compat == "reference_code":
        return SDLoRAReference()
    if name == "sdlora_kd":
        if compat != "paper":
            raise ValueError("model.method sdlora_kd follows the paper: use model.compat: paper")
        return SDLoRAKD(kd_tau, kd_fold)
    method = METHODS[name]()
    if compat == "reference_code":
        method.head_init = "kaiming_linear"  # the public code's head, whatever the method
    return method
