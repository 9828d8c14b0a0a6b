"""The class-incremental classifier: one Linear over every class seen, grown per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class IncrementalHead(nn.Module):
    """Linear head whose earlier tasks' rows are frozen buffers and whose current rows train.

    SPEC §2 "Classifier": grown by one task's classes at a time, old rows copied and frozen.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.register_buffer("old_weight", torch.zeros(0, in_features))  # (C_old, d)
        self.register_buffer("old_bias", torch.zeros(0))  # (C_old,)
        self.weight = nn.Parameter(torch.zeros(0, in_features))  # (n_t, d) current task
        self.bias = nn.Parameter(torch.zeros(0))  # (n_t,)

    @property
    def num_classes(self) -> int:
        return self.old_weight.shape[0] + self.weight.shape[0]

    @torch.no_grad()
    def grow(self, num_new: int, init: str = "torch") -> None:
        """Freeze the current rows and add ``num_new`` fresh ones.

        ``init``: ``torch`` (nn.Linear's default) or ``kaiming_linear`` (the public code's
        SimpleLinear: Kaiming-normal with the linear gain, std 1/sqrt(d), bias 0; SPEC §2).
        """
        if num_new < 1:
            raise ValueError(f"a task needs at least one class, got {num_new}")
        if init not in ("torch", "kaiming_linear"):
            raise ValueError(f"head init {init!r}: use 'torch' or 'kaiming_linear'")
        self.old_weight = torch.cat([self.old_weight, self.weight.detach()])
        self.old_bias = torch.cat([self.old_bias, self.bias.detach()])
        fresh = nn.Linear(
            self.in_features, num_new, device=self.old_weight.device, dtype=self.old_weight.dtype
        )
        if init == "kaiming_linear":
            nn.init.kaiming_normal_(fresh.weight, nonlinearity="linear")
            nn.init.zeros_(fresh.bias)
        self.weight = nn.Parameter(fresh.weight.detach().clone())
        self.bias = nn.Parameter(fresh.bias.detach().clone())

    def full_weight(self) -> tuple[Tensor, Tensor]:
        """(C, d) weight and (C,) bias over every class seen."""
        return torch.cat([self.old_weight, self.weight]), torch.cat([self.old_bias, self.bias])

    def forward(self, x: Tensor) -> Tensor:
        # x (B, d) -> (B, C)
        w, b = self.full_weight()
        return F.linear(x, w, b)
