"""The low-rank maths and the stacked SD-LoRA layer (SPEC §2)."""

from __future__ import annotations

import pytest
import torch

from sdlora.lora import DecoupledLoRA, Magnitudes, lowrank_fro_norm, lowrank_inner


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
