"""SD-LoRA-KD (SPEC §3): fold a new direction into the old ones when least squares explains it.

After task t's direction D_t is frozen, find delta = argmin || D_t - sum_k delta_k D_k ||_F over
the earlier tasks that kept a direction. With ``magnitude_scope: task`` the fit is joint over
every adapted matrix m (task k's vector concatenates c_k^m D_k^m, c the frozen per-matrix
factors); with ``matrix`` each matrix is fitted alone. The relative residual
rho = || D_t - sum_k delta_k D_k ||_F / || D_t ||_F decides: rho <= tau folds the new direction
into the old magnitudes (alpha_k += alpha_t delta_k, ``fold: scaled``; the paper's Eq. 8 adds
delta_k alone, ``fold: paper``) and drops it, so nothing new is stored for task t. The function
then changes by alpha_t times the residual.

Every inner product comes from the low-rank factors (:func:`sdlora.core.lora.lowrank_inner`),
never from d_out x d_in products, and the solve runs in float64. ``model.method: sdlora_kd``
(:class:`SDLoRAKD`, settings ``model.kd_tau`` and ``model.kd_fold``) runs it at the end of every
task and records rho and the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sdlora.core.lora import DecoupledLoRA, lowrank_inner
from sdlora.core.methods.base import Method, register_method
from sdlora.core.methods.sdlora import SDLoRA

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT

Fold = Literal["scaled", "paper"]


@dataclass
class KDGroup:
    """One least-squares fit: all matrices (``magnitude_scope: task``) or one (``matrix``)."""

    matrices: list[int]  # indices into model.matrices()
    kept: list[int]  # the earlier tasks that kept a direction here, the fit's basis
    delta: list[float]  # one coefficient per kept task
    rho: float  # relative residual (1.0 with no basis; 0.0 for a zero direction)
    residual: float  # absolute residual || D_t - sum delta_k D_k ||_F
    folded: bool


@dataclass
class KDDecision:
    """What SD-LoRA-KD decided for task ``task`` (logged per task)."""

    task: int
    tau: float
    groups: list[KDGroup] = field(default_factory=list)

    @property
    def folded(self) -> bool:
        """Whether every group folded: task t stores no direction at all."""
        return bool(self.groups) and all(g.folded for g in self.groups)

    @property
    def rho(self) -> float:
        """The largest relative residual over the groups (the one that decided last)."""
        return max((g.rho for g in self.groups), default=float("nan"))

    def summary(self) -> dict[str, object]:
        """What the task's record and MLflow get: rho, residual, how many groups folded."""
        return {
            "task": self.task,
            "tau": self.tau,
            "rho": self.rho,
            "residual": max((g.residual for g in self.groups), default=float("nan")),
            "folded": self.folded,
            "groups_folded": sum(g.folded for g in self.groups),
            "groups": len(self.groups),
        }


def _factor(layer: DecoupledLoRA, task: int) -> Tensor:
    return (
        layer.factor[task].double() if task < layer.factor.numel() else layer.factor.new_zeros(())
    )


def gram(layers: list[DecoupledLoRA], tasks: list[int]) -> Tensor:
    """G_jk = sum_m c_j^m c_k^m <D_j^m, D_k^m>_F over ``layers``, (K, K) float64, from factors."""
    g = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    for layer in layers:
        parts = [layer.stored(k) for k in tasks]
        for i, pi in enumerate(parts):
            for j in range(i, len(parts)):
                pj = parts[j]
                if pi is None or pj is None:
                    continue
                c = _factor(layer, tasks[i]) * _factor(layer, tasks[j])
                value = c * lowrank_inner(
                    pi[0].double(), pi[1].double(), pj[0].double(), pj[1].double()
                )
                g[i, j] += value
                if i != j:
                    g[j, i] += value
    return g


def fit(layers: list[DecoupledLoRA], task: int, kept: list[int]) -> tuple[Tensor, float, float]:
    """delta (K,), the absolute residual and rho of task ``task``'s direction on ``kept``'s."""
    basis = [*kept, task]
    g = gram(layers, basis)  # (K+1, K+1): the old directions' Gram, then the new one's row
    norm2 = float(g[-1, -1])
    if norm2 <= 0.0:  # a zero direction (B never moved): nothing to keep, nothing to fold
        return torch.zeros(len(kept), dtype=torch.float64), 0.0, 0.0
    if not kept:
        return torch.zeros(0, dtype=torch.float64), norm2**0.5, 1.0
    gk, b = g[:-1, :-1], g[:-1, -1]
    delta = torch.linalg.pinv(gk, hermitian=True) @ b  # least squares, singular Gram allowed
    res2 = max(norm2 - 2 * float(delta @ b) + float(delta @ gk @ delta), 0.0)
    return delta, res2**0.5, (res2 / norm2) ** 0.5


@torch.no_grad()
def distill(model: SDLoRAViT, tau: float, fold: Fold = "scaled") -> KDDecision:
    """Decide, and fold where rho <= tau, the direction of the task that just ended.

    Call after :meth:`SDLoRAViT.end_task` froze task t = ``model.num_tasks - 1``. ``tau = 0``
    folds only a direction the old ones reproduce exactly, so it keeps plain SD-LoRA's model.
    """
    if fold not in ("scaled", "paper"):
        raise ValueError(f"kd fold must be 'scaled' or 'paper', got {fold!r}")
    task = model.num_tasks - 1
    mats = model.matrices()
    if any(m.A_cur is not None for m in mats):
        raise RuntimeError("distill() runs after end_task(): the current pair is still training")
    groups = (
        [list(range(len(mats)))]
        if model.magnitude_scope == "task"
        else [[i] for i in range(len(mats))]
    )
    alpha = model.magnitudes.alpha
    decision = KDDecision(task=task, tau=float(tau))
    for idx in groups:
        layers = [mats[i] for i in idx]
        kept = sorted({k for m in layers for k in m.stored_tasks() if k < task})
        delta, residual, rho = fit(layers, task, kept)
        stored = any(m.stored(task) is not None for m in layers)
        folded = stored and bool(kept) and rho <= tau
        if folded:
            col = model.magnitudes.column_of(idx[0])
            scale = alpha[task, col].double() if fold == "scaled" else 1.0
            for k, d in zip(kept, delta, strict=True):
                alpha[k, col] += (scale * d).to(alpha.dtype)
            for m in layers:
                m.drop_stored(task)
        decision.groups.append(KDGroup(idx, kept, [float(d) for d in delta], rho, residual, folded))
    return decision


class KDParams(BaseModel):
    """SD-LoRA-KD's settings, the ``model.kd_*`` keys of params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kd_tau: float = Field(
        0.1, ge=0, description="fold a new direction when its relative residual is <= this"
    )
    kd_fold: Fold = Field(
        "scaled", description="scaled: alpha_k += alpha_t delta_k | paper (Eq. 8): + delta_k"
    )


@register_method
class SDLoRAKD(SDLoRA):
    """SD-LoRA-KD (SPEC §3): SD-LoRA, then the new direction folds into the old ones when least
    squares explains it (relative residual <= ``kd_tau``); the decision joins ``model.kd_log``."""

    name = "sdlora_kd"
    Params = KDParams
    end_may_change_function = True

    @classmethod
    def variant(cls, compat: str) -> type[Method]:
        if compat != "paper":
            raise ValueError("model.method sdlora_kd follows the paper: use model.compat: paper")
        return cls

    @property
    def tau(self) -> float:
        return float(self.params.kd_tau)

    @torch.no_grad()
    def end_task(self, model: SDLoRAViT) -> None:
        super().end_task(model)
        if model.num_tasks > 1:  # task 0 has nothing to fold into
            model.kd_log.append(distill(model, self.tau, self.params.kd_fold).summary())

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
