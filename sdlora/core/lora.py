"""SD-LoRA layers: decoupled low-rank components on the q and v slices of a fused qkv Linear.

Notation follows SPEC §2. For one adapted matrix m, task k's component is a pair
A_k (r_k x d_in), B_k (d_out x r_k). Frozen components are kept *stacked*: every stored A_k in one
(R x d_in) buffer and every B_k in one (d_out x R) buffer, R = sum r_k, each column tagged with its
task, so the forward is one low-rank product of rank R however many tasks there are.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-12
# A matmul with fewer inner columns than this streams its tokens x d operands at memory speed,
# so it costs about what one this wide costs. Measured with benchmarks/step_cost.py on CPU:
# at 128, ViT-B/16 took the low-rank path at t = 1-10 and its steps cost 4.3-4.6 s against
# 4.2 s on the dense path at t = 20 (docs/performance.md).
MEMORY_BOUND_RANK = 256


def lowrank_inner(b1: Tensor, a1: Tensor, b2: Tensor, a2: Tensor) -> Tensor:
    """<B1 A1, B2 A2>_F from the factors: trace((B1^T B2)(A2 A1^T)), an r1 x r2 computation."""
    # b (d_out, r), a (r, d_in); sum_ij (B1^T B2)_ij (A1 A2^T)_ij
    return ((b1.T @ b2) * (a1 @ a2.T)).sum()


def lowrank_fro_norm(b: Tensor, a: Tensor) -> Tensor:
    """||B A||_F without forming the d_out x d_in product (SPEC §2, "Norms")."""
    return lowrank_inner(b, a, b, a).clamp_min(0.0).sqrt()


class Magnitudes(nn.Module):
    """The learnable magnitudes alpha: one row per task, one column per matrix or one shared.

    Kept as a single (T, M) Parameter (M = 1 for ``scope="task"``) so adapters index it without a
    Python loop over tasks. It grows by a row at every task; the optimiser is rebuilt per task.
    """

    def __init__(self, num_matrices: int, scope: str) -> None:
        super().__init__()
        if scope not in ("task", "matrix"):
            raise ValueError(f"magnitude scope must be 'task' or 'matrix', got {scope!r}")
        self.scope = scope
        self.num_columns = 1 if scope == "task" else num_matrices
        self.alpha = nn.Parameter(torch.zeros(0, self.num_columns))  # (T, M)

    @property
    def num_tasks(self) -> int:
        return self.alpha.shape[0]

    def column_of(self, matrix_index: int) -> int:
        """The alpha column used by adapted matrix ``matrix_index``."""
        return 0 if self.scope == "task" else matrix_index

    @torch.no_grad()
    def add_task(self, init: float) -> None:
        """Append alpha_t = init (every column)."""
        row = torch.full(
            (1, self.num_columns), float(init), dtype=self.alpha.dtype, device=self.alpha.device
        )
        grad = self.alpha.requires_grad
        self.alpha = nn.Parameter(torch.cat([self.alpha.detach(), row]), requires_grad=grad)


class DecoupledLoRA(nn.Module):
    """SD-LoRA for one adapted matrix W0 (d_out x d_in): stored directions plus the current pair.

    delta W = sum_k alpha_k c_k D_k + alpha_t B_t A_t, where the stored factors satisfy
    B_k A_k = D_k (already normalised at ``freeze_current``) and c_k is the frozen per-matrix
    factor of ``magnitude_scope: task`` (1 otherwise; SPEC §2 "End of task t").
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.register_buffer("A", torch.zeros(0, d_in))  # (R, d_in) stored A_k, stacked
        self.register_buffer("B", torch.zeros(d_out, 0))  # (d_out, R) stored B_k, normalised
        self.register_buffer("col_task", torch.zeros(0, dtype=torch.long))  # (R,) task of column
        self.register_buffer("factor", torch.zeros(0))  # (T_frozen,) c_k, indexed by task
        self.register_parameter("A_cur", None)  # (r, d_in) current task's A
        self.register_parameter("B_cur", None)  # (d_out, r) current task's B
        self.register_buffer("cur_task", torch.tensor(-1))  # task index of the current pair

    @property
    def stored_rank(self) -> int:
        return self.A.shape[0]

    @property
    def current_rank(self) -> int:
        return 0 if self.A_cur is None else self.A_cur.shape[0]

    def add_current(self, rank: int, task: int) -> None:
        """Start task ``task``'s pair: A Kaiming-uniform (a = sqrt 5), B zeros, as LoRA."""
        if not 1 <= rank <= min(self.d_in, self.d_out):
            raise ValueError(
                f"rank {rank} does not fit a {self.d_out} x {self.d_in} matrix; "
                f"use 1..{min(self.d_in, self.d_out)}"
            )
        a = torch.empty(rank, self.d_in, device=self.A.device, dtype=self.A.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.A_cur = nn.Parameter(a)
        self.B_cur = nn.Parameter(torch.zeros(self.d_out, rank, device=a.device, dtype=a.dtype))
        self.cur_task.fill_(task)

    def current_norm(self) -> Tensor:
        """||B_t A_t||_F of the current pair (0 when there is none)."""
        if self.A_cur is None:
            return self.A.new_zeros(())
        return lowrank_fro_norm(self.B_cur.detach(), self.A_cur.detach())

    def current_factor_norms(self) -> Tensor:
        """||B_t||_F * ||A_t||_F: the public code's normaliser (``compat: reference_code``)."""
        if self.A_cur is None:
            return self.A.new_zeros(())
        return self.B_cur.detach().norm() * self.A_cur.detach().norm()

    @torch.no_grad()
    def freeze_current(self, norm: Tensor, factor: Tensor) -> None:
        """Store the current pair as direction B A / norm with frozen factor c; drop the pair.

        A zero norm (B never moved) stores a zero direction with c = 0: it contributes nothing,
        as before, instead of dividing by zero.
        """
        if self.A_cur is None:
            raise RuntimeError("freeze_current called with no current component")
        ok = bool(norm > _EPS)
        b = self.B_cur.detach() / norm if ok else torch.zeros_like(self.B_cur)
        rank = self.current_rank
        self.A = torch.cat([self.A, self.A_cur.detach()])
        self.B = torch.cat([self.B, b], dim=1)
        task = int(self.cur_task)
        self.col_task = torch.cat([self.col_task, self.col_task.new_full((rank,), task)])
        if self.factor.numel() <= task:  # one slot per task index, zeros for gaps
            self.factor = torch.cat(
                [self.factor, self.factor.new_zeros(task + 1 - self.factor.numel())]
            )
        self.factor[task] = factor if ok else 0.0
        self.A_cur = self.B_cur = None
        self.cur_task.fill_(-1)

    def stored(self, task: int) -> tuple[Tensor, Tensor] | None:
        """Task ``task``'s stored direction as factors (B (d_out, r), A (r, d_in)); None if none."""
        cols = self.col_task == task
        if not bool(cols.any()):
            return None
        return self.B[:, cols], self.A[cols]

    def stored_tasks(self) -> list[int]:
        """The tasks whose direction is stored, in order."""
        return sorted(set(self.col_task.tolist()))

    @torch.no_grad()
    def drop_stored(self, task: int) -> None:
        """Forget task ``task``'s stored direction (SD-LoRA-KD folded it into older ones)."""
        keep = self.col_task != task
        self.A, self.B, self.col_task = self.A[keep], self.B[:, keep], self.col_task[keep]
        if task < self.factor.numel():
            self.factor[task] = 0.0

    def stored_scales(self, alpha: Tensor) -> Tensor:
        """(R,) scale of every stored column: alpha_k c_k of its task k."""
        # alpha (T,) for this matrix
        return alpha[self.col_task] * self.factor[self.col_task]

    def dense_is_cheaper(self, tokens: int, weight_grad: bool) -> bool:
        """Whether delta W built densely and folded into W0 costs less than the low-rank product.

        Multiply-add equivalents per step (SPEC §2 "Forward cost"), R the total rank (stored
        and current). Low-rank: 2 matmuls forward and 4 backward, each ``tokens x R x d``;
        below :data:`MEMORY_BOUND_RANK` columns such a skinny matmul takes as long as one of
        that many (it streams the ``tokens x d`` activations either way). Dense: ``R d_in
        d_out`` to build delta W, and when it trains (``weight_grad``) ``tokens d_in d_out``
        for its gradient plus ``R d_in d_out`` to carry that to alpha and the current pair;
        folded into W0 it adds nothing to the backbone's own matmul.
        """
        rank, area = self.stored_rank + self.current_rank, self.d_in * self.d_out
        if rank == 0:
            return False
        width = max(rank, MEMORY_BOUND_RANK)
        lowrank = (6 if weight_grad else 2) * tokens * width * (self.d_in + self.d_out) // 2
        dense = rank * area * (2 if weight_grad else 1) + (tokens * area if weight_grad else 0)
        return dense < lowrank

    def _factors(self, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Stacked (A, s, B) of every component, stored and current; None if there is none."""
        # alpha (T,) for this matrix
        parts_a, parts_b, parts_s = [], [], []
        if self.stored_rank:
            parts_a.append(self.A)
            parts_b.append(self.B)
            parts_s.append(self.stored_scales(alpha))  # (R,)
        if self.A_cur is not None:
            parts_a.append(self.A_cur)
            parts_b.append(self.B_cur)
            parts_s.append(alpha[self.cur_task].expand(self.current_rank))  # (r,)
        if not parts_a:
            return None
        if len(parts_a) == 1:
            return parts_a[0], parts_s[0], parts_b[0]
        return torch.cat(parts_a), torch.cat(parts_s), torch.cat(parts_b, dim=1)

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor | None:
        """delta W x for x (..., d_in) -> (..., d_out) as one low-rank product of rank R;
        None when there is no component."""
        f = self._factors(alpha)
        if f is None:
            return None
        a, s, b = f
        return F.linear(F.linear(x, a) * s, b)  # (..., R) -> (..., d_out)

    def delta_weight(self, alpha: Tensor) -> Tensor:
        """delta W (d_out x d_in): for merging, and the dense path (autograd reaches alpha and
        the current pair through it). The stored factors are used in place, not concatenated
        with the current pair's: the backward then keeps no copy of them."""
        delta = None
        if self.stored_rank:
            delta = (self.B * self.stored_scales(alpha)) @ self.A  # (d_out, R) @ (R, d_in)
        if self.A_cur is not None:
            current = (self.B_cur * alpha[self.cur_task]) @ self.A_cur  # (d_out, r) @ (r, d_in)
            delta = current if delta is None else delta + current
        return self.A.new_zeros(self.d_out, self.d_in) if delta is None else delta


class _DeltaLinear(torch.autograd.Function):
    """y = x (W0 + delta)^T + b + extra for a frozen W0, per row block at ``starts``.

    Each row block (a q or v slice, d rows) may get a dense ``delta`` (d, d_in) folded into the
    weight and an ``extra`` (..., d) added to its outputs (the low-rank part); either may be
    None. One matmul, as the backbone's own; the backward computes the weight gradient of the
    delta rows only (not of the untouched k rows, nor of W0), so a dense delta costs
    ``tokens d_in d`` per adapted matrix on top of the backbone's step.
    """

    @staticmethod
    def forward(ctx, x, w0, bias, starts, *blocks):  # type: ignore[override]
        # x (..., d_in), w0 (d_out_total, d_in); blocks = delta_0, extra_0, delta_1, extra_1, ...
        deltas, extras = blocks[0::2], blocks[1::2]
        w = w0.detach()
        if any(delta is not None for delta in deltas):
            w = w.clone()
            for i, delta in zip(starts, deltas, strict=True):
                if delta is not None:
                    w[i : i + delta.shape[0]] += delta.to(w.dtype)
        out = F.linear(x, w, bias)
        for i, extra in zip(starts, extras, strict=True):
            if extra is not None:
                out[..., i : i + extra.shape[-1]] += extra.to(out.dtype)
        ctx.save_for_backward(x, w)
        ctx.starts = starts
        ctx.shapes = [(None if t is None else (t.shape[-1], t.dtype)) for t in blocks]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = (grad @ w.to(grad.dtype)).to(x.dtype) if need[0] else None
        g2 = grad.reshape(-1, grad.shape[-1])  # (tokens, d_out_total)
        x2 = x.reshape(-1, x.shape[-1]).to(grad.dtype)  # (tokens, d_in)
        blocks = []
        for j, shape in enumerate(ctx.shapes):
            i = ctx.starts[j // 2]
            if shape is None or not need[4 + j]:
                blocks.append(None)
            elif j % 2 == 0:  # delta (d, d_in): its weight gradient only
                blocks.append((g2[:, i : i + shape[0]].T @ x2).to(shape[1]))
            else:  # extra (..., d): the slice of the output gradient
                blocks.append(grad[..., i : i + shape[0]].to(shape[1]))
        grad_w0 = (g2.T @ x2).to(w.dtype) if need[1] else None  # only if W0 were trained
        grad_b = g2.sum(0).to(w.dtype) if need[2] else None
        return (grad_x, grad_w0, grad_b, None, *blocks)


class SDLoRAQKV(nn.Module):
    """Wraps a timm fused ``qkv`` Linear (d -> 3d) and adds SD-LoRA to its q and/or v slices.

    The base Linear is kept by reference and never modified; ``merged()`` returns a plain Linear.
    ``magnitudes`` is owned by the model and shared by every wrapper, so it is held unregistered.
    """

    SLICES: ClassVar[dict[str, int]] = {"q": 0, "k": 1, "v": 2}

    def __init__(
        self,
        base: nn.Linear,
        targets: list[str],
        matrix_index: dict[str, int],
        magnitudes: Magnitudes,
    ) -> None:
        super().__init__()
        d = base.in_features
        if base.out_features != 3 * d:
            raise ValueError(f"expected a fused qkv Linear (d -> 3d), got {base}")
        self.base = base
        self.dim = d
        self.lora = nn.ModuleDict({t: DecoupledLoRA(d, d) for t in targets})
        self.matrix_index = dict(matrix_index)
        self.path = "auto"
        object.__setattr__(self, "_magnitudes", magnitudes)  # shared, not a submodule

    def _alpha(self, target: str) -> Tensor:
        mags = self._magnitudes
        return mags.alpha[:, mags.column_of(self.matrix_index[target])]  # (T,)

    PATHS: ClassVar[tuple[str, ...]] = ("auto", "stacked", "dense")

    def set_path(self, path: str) -> None:
        """How stored directions enter the forward: ``auto`` (by cost, the default),
        ``stacked`` (one low-rank product) or ``dense`` (one delta folded into W0); the
        last two exist to compare and test the paths."""
        if path not in self.PATHS:
            raise ValueError(f"forward path must be one of {self.PATHS}, got {path!r}")
        self.path = path

    def _dense(self, layer: DecoupledLoRA, tokens: int, alpha: Tensor) -> bool:
        if self.path != "auto":
            return self.path == "dense" and layer.stored_rank + layer.current_rank > 0
        trains = alpha.requires_grad or (layer.A_cur is not None and layer.A_cur.requires_grad)
        return layer.dense_is_cheaper(tokens, torch.is_grad_enabled() and trains)

    def forward(self, x: Tensor) -> Tensor:
        # x (B, N, d) -> (B, N, 3d)
        tokens = x.numel() // self.dim
        alphas = {t: self._alpha(t) for t in self.lora}
        dense = {t for t, layer in self.lora.items() if self._dense(layer, tokens, alphas[t])}
        blocks: list[Tensor | None] = []  # per target: dense delta W (d, d), low-rank output
        for t, layer in self.lora.items():
            if t in dense:
                blocks += [layer.delta_weight(alphas[t]), None]
            else:
                blocks += [None, layer(x, alphas[t])]  # (B, N, d) or None
        if all(b is None for b in blocks):
            return self.base(x)
        starts = tuple(self.SLICES[t] * self.dim for t in self.lora)
        return _DeltaLinear.apply(x, self.base.weight, self.base.bias, starts, *blocks)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear with W0 + delta W folded in (inference costs what the backbone costs)."""
        lin = nn.Linear(
            self.dim,
            3 * self.dim,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        w = self.base.weight.detach().clone()
        for t, layer in self.lora.items():
            i = self.SLICES[t] * self.dim
            w[i : i + self.dim] += layer.delta_weight(self._alpha(t)).to(w.dtype)
        lin.weight.copy_(w)
        if self.base.bias is not None:
            lin.bias.copy_(self.base.bias)
        lin.requires_grad_(False)
        return lin
