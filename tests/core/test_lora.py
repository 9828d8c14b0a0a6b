"""The low-rank maths and the stacked SD-LoRA layer (SPEC §2)."""

from __future__ import annotations

import pytest
import torch

from sdlora.core.lora import DecoupledLoRA, Magnitudes, SDLoRAQKV, lowrank_fro_norm, lowrank_inner


@pytest.mark.parametrize(("d_out", "d_in", "r"), [(7, 5, 3), (64, 48, 10), (16, 16, 1)])
def test_lowrank_norm_equals_dense_norm(d_out: int, d_in: int, r: int) -> None:
    g = torch.Generator().manual_seed(d_out)
    b = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    a = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    assert torch.allclose(lowrank_fro_norm(b, a), torch.linalg.norm(b @ a), rtol=1e-12)


def test_lowrank_inner_equals_dense_inner() -> None:
    g = torch.Generator().manual_seed(3)
    b1, a1 = (
        torch.randn(9, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 6, generator=g, dtype=torch.float64),
    )
    b2, a2 = (
        torch.randn(9, 4, generator=g, dtype=torch.float64),
        torch.randn(4, 6, generator=g, dtype=torch.float64),
    )
    dense = ((b1 @ a1) * (b2 @ a2)).sum()
    assert torch.allclose(lowrank_inner(b1, a1, b2, a2), dense, rtol=1e-12)


def test_new_pair_is_lora_initialised() -> None:
    layer = DecoupledLoRA(d_in=12, d_out=8)
    layer.add_current(rank=3, task=0)
    assert layer.A_cur.shape == (3, 12) and layer.B_cur.shape == (8, 3)
    assert torch.count_nonzero(layer.B_cur) == 0
    bound = 1.0 / 12**0.5  # kaiming_uniform(a=sqrt 5) on fan_in 12
    assert layer.A_cur.abs().max() <= bound and layer.A_cur.std() > 0.3 * bound


def test_rank_larger_than_layer_is_an_error() -> None:
    layer = DecoupledLoRA(d_in=12, d_out=8)
    with pytest.raises(ValueError, match=r"rank 9 does not fit a 8 x 12 matrix; use 1..8"):
        layer.add_current(rank=9, task=0)


def test_freeze_stores_unit_direction_and_stacks() -> None:
    torch.manual_seed(0)
    layer = DecoupledLoRA(d_in=6, d_out=5)
    raw = []
    for task, rank in enumerate([2, 3]):
        layer.add_current(rank, task)
        with torch.no_grad():
            layer.B_cur.normal_()
        raw.append((layer.B_cur.detach().clone(), layer.A_cur.detach().clone()))
        layer.freeze_current(layer.current_norm(), torch.tensor(0.5 + task))
    assert layer.A.shape == (5, 6) and layer.B.shape == (5, 5)
    assert layer.col_task.tolist() == [0, 0, 1, 1, 1]
    assert layer.factor.tolist() == [0.5, 1.5]
    assert layer.A_cur is None and layer.B_cur is None
    # Each stored block is the normalised direction D_k = B_k A_k / ||B_k A_k||_F.
    for k, (b, a) in enumerate(raw):
        cols = layer.col_task == k
        d_stored = layer.B[:, cols] @ layer.A[cols]
        assert torch.allclose(d_stored, b @ a / torch.linalg.norm(b @ a), atol=1e-6)
        assert torch.isclose(torch.linalg.norm(d_stored), torch.tensor(1.0), atol=1e-6)


def test_zero_current_pair_freezes_to_nothing() -> None:
    layer = DecoupledLoRA(d_in=4, d_out=4)
    layer.add_current(2, 0)  # B is zero: the direction is undefined
    layer.freeze_current(layer.current_norm(), torch.tensor(1.0))
    assert torch.isfinite(layer.B).all() and layer.factor.tolist() == [0.0]
    assert torch.count_nonzero(layer.delta_weight(torch.tensor([3.0]))) == 0


def test_magnitudes_grow_per_task() -> None:
    mags = Magnitudes(num_matrices=4, scope="matrix")
    mags.add_task(1.0)
    mags.add_task(0.8)
    assert mags.alpha.shape == (2, 4)
    assert mags.alpha[:, 3].tolist() == pytest.approx([1.0, 0.8])
    assert Magnitudes(num_matrices=4, scope="task").num_columns == 1
    with pytest.raises(ValueError, match="scope"):
        Magnitudes(2, "block")


def _qkv_with_tasks(d: int, ranks: list[int], scope: str = "task") -> SDLoRAQKV:
    """A float64 fused qkv Linear with SD-LoRA on q and v: ``ranks[:-1]`` stored, the last
    one current, magnitudes random and trainable."""
    torch.manual_seed(0)
    mags = Magnitudes(2, scope)
    qkv = SDLoRAQKV(torch.nn.Linear(d, 3 * d), ["q", "v"], {"q": 0, "v": 1}, mags)
    qkv.requires_grad_(False)
    for task, rank in enumerate(ranks):
        mags.add_task(0.5 + task)
        for layer in qkv.lora.values():
            layer.add_current(rank, task)
            with torch.no_grad():
                layer.B_cur.normal_()
            if task < len(ranks) - 1:
                layer.freeze_current(layer.current_norm(), torch.tensor(1.0 + 0.1 * task))
    qkv.double()
    mags.alpha = torch.nn.Parameter(torch.rand(mags.alpha.shape, dtype=torch.float64) + 0.5)
    return qkv


def _step(qkv: SDLoRAQKV, x: torch.Tensor, path: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and the gradients of alpha, A_t, B_t and x on ``path``."""
    qkv.set_path(path)
    x = x.clone().requires_grad_(True)
    out = qkv(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    mags = qkv._magnitudes
    params = [mags.alpha, *(p for layer in qkv.lora.values() for p in (layer.A_cur, layer.B_cur))]
    grads = [p.grad.clone() for p in params] + [x.grad]
    for p in params:
        p.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("scope", ["task", "matrix"])
def test_dense_and_stacked_paths_agree(scope: str) -> None:
    """SPEC §2 "Forward cost": the dense delta gives the stacked product's outputs and
    gradients (magnitudes, current pair, input) to float tolerance."""
    qkv = _qkv_with_tasks(16, [3, 2, 4, 2], scope).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    out_s, grads_s = _step(qkv, x, "stacked")
    out_d, grads_d = _step(qkv, x, "dense")
    assert torch.allclose(out_s, out_d, rtol=1e-10, atol=1e-10)
    for gs, gd in zip(grads_s, grads_d, strict=True):
        assert torch.allclose(gs, gd, rtol=1e-9, atol=1e-10), (gs - gd).abs().max()
    assert grads_d[0].abs().min() > 0  # every magnitude really gets a gradient


@pytest.mark.parametrize("path", ["stacked", "dense"])
def test_hand_written_backward_gradcheck(path: str) -> None:
    """The fused qkv's hand-written backward against finite differences (input and alpha)."""
    qkv = _qkv_with_tasks(6, [2, 3, 1])
    qkv.set_path(path)
    x = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: qkv(x), (x,))
    alpha = qkv._magnitudes.alpha
    qkv(x.detach()).sum().backward()
    eps, numeric = 1e-6, torch.zeros_like(alpha)
    for i in range(alpha.shape[0]):
        with torch.no_grad():
            alpha[i, 0] += eps
            hi = qkv(x.detach()).sum()
            alpha[i, 0] -= 2 * eps
            lo = qkv(x.detach()).sum()
            alpha[i, 0] += eps
        numeric[i, 0] = (hi - lo) / (2 * eps)
    assert torch.allclose(alpha.grad, numeric, rtol=1e-6, atol=1e-8)


def test_path_is_chosen_by_cost() -> None:
    """Dense when many tokens meet a large total rank (or nothing trains); low-rank for few
    tokens, or a small rank on a wide matrix."""
    wide = DecoupledLoRA(d_in=2048, d_out=2048)
    assert not wide.dense_is_cheaper(tokens=3152, weight_grad=True)  # nothing to add
    wide.A, wide.B = torch.zeros(10, 2048), torch.zeros(2048, 10)
    assert not wide.dense_is_cheaper(tokens=3152, weight_grad=True)  # rank 10 of 2048
    wide.A, wide.B = torch.zeros(1000, 2048), torch.zeros(2048, 1000)
    assert wide.dense_is_cheaper(tokens=3152, weight_grad=True)
    assert not wide.dense_is_cheaper(tokens=8, weight_grad=True)  # the build dominates
    # nothing to carry a gradient to (evaluation): building delta W alone decides
    wide.A, wide.B = torch.zeros(10, 2048), torch.zeros(2048, 10)
    assert wide.dense_is_cheaper(tokens=3152, weight_grad=False)
    assert not wide.dense_is_cheaper(tokens=2, weight_grad=False)


def test_unknown_path_is_refused() -> None:
    qkv = _qkv_with_tasks(6, [2])
    with pytest.raises(ValueError, match="forward path must be one of"):
        qkv.set_path("fast")
