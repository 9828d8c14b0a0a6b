"""SD-LoRA (SPEC §2) as the paper writes it and as the public code runs it, and the two
variants over the same lifecycle: magnitude-only (Finding 1) and joint training."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sdlora.core.methods.base import Method, current_pairs, in_progress, register_method

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT

_EPS = 1e-12


@register_method
class SDLoRA(Method):
    """SD-LoRA as the paper writes it (SPEC §2): a new pair per task, old directions frozen,
    every magnitude trained, and a function-preserving switch at the end of each task."""

    name = "sdlora"

    @classmethod
    def variant(cls, compat: str) -> type[Method]:
        # only SD-LoRA itself has a public-code variant; its subclasses keep their own hooks
        return SDLoRAReference if cls is SDLoRA and compat == "reference_code" else cls

    def adds_component(self, task: int) -> bool:
        return True

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield from current_pairs(model)
        yield model.magnitudes.alpha
        yield from super().trainable(model)

    @torch.no_grad()
    def end_task(self, model: SDLoRAViT) -> None:
        """Freeze D_t = B_t A_t / ||B_t A_t||_F, keeping the function (SPEC §2 "End of task t").

        ``magnitude_scope: matrix``: alpha_t^m <- alpha_t^m ||B A||; ``task``: with
        n^m = ||B^m A^m||, nbar = mean n^m, store c^m = n^m / nbar and alpha_t <- alpha_t nbar.
        """
        mats = in_progress(model)
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


class SDLoRAReference(SDLoRA):
    """SD-LoRA as the public research code runs it (``compat: reference_code``, SPEC §2).

    The trained network is evaluated as it is (current pair raw, alpha_t B_t A_t); only when
    the next task begins is the pair normalised by ||B||_F ||A||_F, without rescaling (the
    function jumps), and every old magnitude reset to ``magnitude_init``. New classifier rows
    start as its SimpleLinear: Kaiming-normal with the linear gain, bias 0.
    """

    @torch.no_grad()
    def before_task(self, model: SDLoRAViT, task: int) -> None:
        if task == 0:
            return
        for m in in_progress(model):
            m.freeze_current(m.current_factor_norms(), torch.tensor(1.0))
        model.magnitudes.alpha[:task] = model.magnitude_init

    def end_task(self, model: SDLoRAViT) -> None:
        in_progress(model)  # nothing changes: the trained network is what is evaluated


@register_method
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


@register_method
class Joint(SDLoRA):
    """Joint training (SPEC §4, the upper reference): every task's data at once, as one task with
    SD-LoRA's single component; the accuracy matrix has one row."""

    name = "joint"
    trains_jointly = True
