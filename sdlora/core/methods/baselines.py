"""The references SD-LoRA is compared with (SPEC §4): a frozen backbone with a trained head,
the prototype classifier (SimpleCIL), and sequential LoRA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sdlora.core.methods.base import Method, current_pairs, register_method

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT


@register_method
class Frozen(Method):
    """Frozen backbone with the growing head: the lower reference (SPEC §4)."""

    name = "frozen"


@register_method
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


@register_method
class SeqLoRA(Method):
    """Sequential LoRA: one pair per adapted matrix, scale 1, trained on every task in turn."""

    name = "seq_lora"

    def adds_component(self, task: int) -> bool:
        return task == 0

    def magnitude_init(self, model: SDLoRAViT) -> float:
        return 1.0  # plain LoRA: a fixed scale, never trained

    def trainable(self, model: SDLoRAViT) -> Iterator[Tensor]:
        yield from current_pairs(model)
        yield from super().trainable(model)
