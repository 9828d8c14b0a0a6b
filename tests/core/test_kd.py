"""SD-LoRA-KD (SPEC §3): the least-squares fit on old directions, the fold and what it keeps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sdlora.core.lora import DecoupledLoRA
from sdlora.core.methods import build_method
from sdlora.core.methods.kd import distill, gram
from sdlora.core.model import SDLoRAViT


def _random_tasks(model: SDLoRAViT, ranks: list[int], seed: int = 0) -> None:
    """Tasks with random pairs and magnitudes (standing in for training), each ended."""
    g = torch.Generator().manual_seed(seed)
    for r in ranks:
        model.begin_task(3, r)
        with torch.no_grad():
            for m in model.matrices():
                m.B_cur.copy_(torch.randn(m.B_cur.shape, generator=g))
                m.A_cur.copy_(torch.randn(m.A_cur.shape, generator=g) * 0.3)
            a = model.magnitudes.alpha
            a.copy_(torch.rand(a.shape, generator=g) + 0.5)
        model.end_task()


def _combination_task(model: SDLoRAViT, coef: Callable[[int], list[float]]) -> None:
    """A new task whose pair is, in each matrix m, sum_k coef(m)[k] * c_k^m D_k^m exactly."""
    mats = model.matrices()
    rank = mats[0].stored_rank
    model.begin_task(3, rank)
    with torch.no_grad():
        for i, m in enumerate(mats):
            scale = torch.stack(
                [coef(i)[int(k)] * m.factor[int(k)] for k in m.col_task]
            )  # (R,) one per stored column
            m.B_cur.copy_(m.B * scale)
            m.A_cur.copy_(m.A)
        model.magnitudes.alpha[-1] = 0.7
    model.end_task()


def _adapter_sizes(model: SDLoRAViT) -> int:
    return sum(m.A.numel() + m.B.numel() for m in model.matrices())


def _state(model: SDLoRAViT) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_gram_matrix_equals_the_dense_products() -> None:
    torch.manual_seed(0)
    layer = DecoupledLoRA(7, 5)
    for task, rank in enumerate([2, 3, 1]):
        layer.add_current(rank, task)
        with torch.no_grad():
            layer.B_cur.normal_()
        layer.freeze_current(layer.current_norm(), torch.tensor(0.5 + task))
    dense = [
        layer.factor[k] * (layer.B[:, layer.col_task == k] @ layer.A[layer.col_task == k])
        for k in range(3)
    ]
    want = torch.tensor([[float((a * b).sum()) for b in dense] for a in dense], dtype=torch.float64)
    torch.testing.assert_close(gram([layer], [0, 1, 2]), want, rtol=1e-6, atol=1e-8)
    twice = gram([layer, layer], [2, 0])
    torch.testing.assert_close(twice, 2 * want[[2, 0]][:, [2, 0]], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("scope", ["task", "matrix"])
def test_an_exact_combination_folds_and_keeps_the_function(
    tiny_backbone: Callable[..., nn.Module], images: torch.Tensor, scope: str
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope=scope).eval()
    _random_tasks(model, [2, 3])
    before_task = _adapter_sizes(model)
    # task scope: one joint coefficient per task; matrix scope: each matrix its own
    _combination_task(
        model, (lambda m: [0.6, -1.3]) if scope == "task" else (lambda m: [m + 1.0, -0.5])
    )
    old_alpha = model.magnitudes.alpha.detach().clone()
    with torch.no_grad():
        logits = model(images)
    decision = distill(model, tau=1e-6)
    assert decision.folded and decision.rho < 1e-6
    assert all(g.kept == [0, 1] for g in decision.groups)
    with torch.no_grad():
        torch.testing.assert_close(model(images), logits, rtol=1e-4, atol=1e-4)
    assert _adapter_sizes(model) == before_task  # task 2 stores no direction
    assert all(m.stored_tasks() == [0, 1] for m in model.matrices())
    assert not torch.equal(model.magnitudes.alpha[:2], old_alpha[:2])  # the old ones absorbed it
    if scope == "task":  # the solve recovers the joint coefficients (up to the end_task rescale)
        d = decision.groups[0].delta
        assert d[0] / d[1] == pytest.approx(0.6 / -1.3, rel=1e-5)


def test_a_random_direction_is_kept_and_nothing_changes(
    tiny_backbone: Callable[..., nn.Module],
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny").eval()
    _random_tasks(model, [2, 2, 2])
    state = _state(model)
    decision = distill(model, tau=0.5)
    assert not decision.folded and 0.5 < decision.rho <= 1.0
    assert decision.groups[0].kept == [0, 1]
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_tau_zero_keeps_plain_sdlora_bit_for_bit(tiny_backbone: Callable[..., nn.Module]) -> None:
    plain = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope="matrix").eval()
    kd = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope="matrix").eval()
    for t in (0, 1, 2):
        for model in (plain, kd):
            torch.manual_seed(t)  # begin_task draws A and the head rows: the same for both
            _random_tasks(model, [3], seed=t)
        assert not distill(kd, tau=0.0).folded
    a, b = plain.state_dict(), kd.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_first_task_and_the_paper_fold(tiny_backbone: Callable[..., nn.Module]) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny").eval()
    _random_tasks(model, [2])
    first = distill(model, tau=1.0)
    assert not first.folded and first.groups[0].kept == [] and first.rho == 1.0
    _combination_task(model, lambda m: [2.0])
    alpha_t = float(model.magnitudes.alpha[1, 0].detach())
    alpha_0 = float(model.magnitudes.alpha[0, 0].detach())
    decision = distill(model, tau=1e-6, fold="paper")  # Eq. 8: alpha_k + delta_k, no alpha_t
    assert decision.folded
    delta = decision.groups[0].delta[0]
    assert float(model.magnitudes.alpha[0, 0].detach()) == pytest.approx(alpha_0 + delta)
    assert alpha_t != pytest.approx(1.0)  # so "scaled" would have given another value
    with pytest.raises(ValueError, match="kd fold"):
        distill(model, tau=0.1, fold="other")  # type: ignore[arg-type]


def test_the_sdlora_kd_method_folds_at_the_end_of_a_task_and_remembers_it(
    tiny_backbone: Callable[..., nn.Module], images: torch.Tensor, tmp_path
) -> None:
    """``model.method: sdlora_kd``: end_task freezes, then distils; the decision is in kd_log,
    the task's record and the adapter file, which loads back into the same function."""
    from sdlora.core.checkpoint import load_adapter, save_adapter
    from sdlora.core.records import task_metrics, task_record

    kd_method = build_method("sdlora_kd", params={"kd_tau": 1.0})

    def build() -> SDLoRAViT:
        return SDLoRAViT(tiny_backbone(), "tiny", method=kd_method).eval()

    model = build()
    _random_tasks(model, [2])
    assert model.kd_log == []  # task 0: nothing to fold into
    sizes = _adapter_sizes(model)
    _random_tasks(model, [2], seed=1)  # any direction has rho <= 1: tau 1 always folds
    (entry,) = model.kd_log
    assert entry["task"] == 1 and entry["folded"] and 0 < entry["rho"] <= 1
    assert _adapter_sizes(model) == sizes
    record = task_record(model, 1, 3, [50.0, 50.0], [4, 4], [])
    assert record["kd"] == entry
    assert task_metrics([task_record(model, 0, 3, [50.0], [4], []), record], 1)["kd_folded"] == 1
    save_adapter(model, tmp_path / "a.safetensors")
    again = build()
    load_adapter(again, tmp_path / "a.safetensors")
    assert again.kd_log == model.kd_log
    with torch.no_grad():
        torch.testing.assert_close(again(images), model(images))
    with pytest.raises(ValueError, match="sdlora_kd follows the paper"):
        build_method("sdlora_kd", "reference_code")
