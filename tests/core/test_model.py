"""SDLoRAViT's task lifecycle, trainable set, merge and the reference-code compat (SPEC §2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdlora.core.methods import build_method
from sdlora.core.model import SDLoRAViT


def _perturb_current(model: SDLoRAViT, seed: int) -> None:
    """Stand in for training: give the current pairs and the magnitudes non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.matrices():
            if m.A_cur is not None:
                m.B_cur.copy_(torch.randn(m.B_cur.shape, generator=g))
                m.A_cur.copy_(torch.randn(m.A_cur.shape, generator=g) * 0.3)
        a = model.magnitudes.alpha
        a.copy_(torch.rand(a.shape, generator=g) + 0.5)


def _run_tasks(model: SDLoRAViT, ranks: list[int], finish_last: bool = True) -> None:
    for t, r in enumerate(ranks):
        model.begin_task(3, r)
        _perturb_current(model, seed=t)
        if finish_last or t < len(ranks) - 1:
            model.end_task()


@pytest.mark.parametrize("scope", ["task", "matrix"])
def test_end_task_preserves_logits(
    tiny_backbone: Callable[..., nn.Module], scope: str, images: torch.Tensor
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope=scope)
    for t, rank in enumerate([4, 2, 3]):
        model.begin_task(3, rank)
        _perturb_current(model, seed=t)
        before = model(images)
        model.end_task()
        after = model(images)
        assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
        # The switch must really have happened: the pair is gone, the directions are stored.
        assert all(m.A_cur is None for m in model.matrices())
        assert model.matrices()[0].stored_rank == sum([4, 2, 3][: t + 1])


@pytest.mark.parametrize("scope", ["task", "matrix"])
def test_task_scope_factors_and_matrix_scope_magnitudes(
    tiny_backbone: Callable[..., nn.Module], scope: str
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope=scope)
    model.begin_task(3, 2)
    _perturb_current(model, seed=0)
    norms = torch.stack([m.current_norm() for m in model.matrices()])
    alpha0 = model.magnitudes.alpha.detach().clone()
    model.end_task()
    factors = torch.stack([m.factor[0] for m in model.matrices()])
    if scope == "task":
        nbar = norms.mean()
        assert torch.allclose(factors, norms / nbar)
        assert torch.allclose(model.magnitudes.alpha[0, 0], alpha0[0, 0] * nbar)
    else:
        assert torch.allclose(factors, torch.ones_like(factors))
        assert torch.allclose(model.magnitudes.alpha[0], alpha0[0] * norms)


@pytest.mark.parametrize("scope", ["task", "matrix"])
@pytest.mark.parametrize("method", ["sdlora", "seq_lora", "frozen"])
def test_merged_model_matches_unmerged(
    tiny_backbone: Callable[..., nn.Module], scope: str, method: str, images: torch.Tensor
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope=scope, method=build_method(method))
    _run_tasks(model, [4, 2, 3], finish_last=False)  # a pair still in progress is merged too
    merged = model.merge()
    assert type(merged.blocks[0].attn.qkv) is torch.nn.Linear
    assert sum(p.numel() for p in merged.parameters()) == sum(
        p.numel() for p in tiny_backbone().parameters()
    ) + model.head.num_classes * (model.head.in_features + 1)
    assert torch.allclose(merged(images), model(images), atol=1e-5)
    if method != "frozen":  # the adapters really change the function
        plain = tiny_backbone()
        assert not torch.allclose(merged.forward_features(images), plain.forward_features(images))


def test_stacked_forward_equals_per_task_loop(
    tiny_backbone: Callable[..., nn.Module], images: torch.Tensor
) -> None:
    """W = W0 + sum_k alpha_k c_k^m D_k^m + alpha_t B_t A_t, computed densely task by task."""
    model = SDLoRAViT(tiny_backbone(), "tiny", magnitude_scope="task")
    raw: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per task, per matrix (B, A)
    nbars = []
    for t, rank in enumerate([3, 2, 4]):
        model.begin_task(3, rank)
        _perturb_current(model, seed=10 + t)
        raw.append([(m.B_cur.detach().clone(), m.A_cur.detach().clone()) for m in model.matrices()])
        if t < 2:
            nbars.append(torch.stack([torch.linalg.norm(b @ a) for b, a in raw[-1]]).mean())
            model.end_task()
    with torch.no_grad():
        model.magnitudes.alpha.copy_(torch.tensor([[0.7], [1.3], [0.9]]))
    alpha = model.magnitudes.alpha[:, 0]
    wrapper = model.adapters()[1]
    x = torch.randn(2, 5, 32)
    w0 = wrapper.base.weight
    expected = []
    for _j, target in enumerate(model.targets):
        m_index = wrapper.matrix_index[target]
        delta = torch.zeros(32, 32)
        for k in range(2):  # frozen: alpha_k * c_k^m * D_k^m with c_k^m = n_k^m / nbar_k
            b, a = raw[k][m_index]
            n = torch.linalg.norm(b @ a)
            delta += alpha[k] * (n / nbars[k]) * (b @ a) / n
        b, a = raw[2][m_index]
        delta += alpha[2] * (b @ a)  # current pair, not normalised
        expected.append((target, delta))
    w = w0.clone()
    for target, delta in expected:
        i = {"q": 0, "v": 2}[target] * 32
        w[i : i + 32] += delta
    want = F.linear(x, w, wrapper.base.bias)
    assert torch.allclose(wrapper(x), want, atol=1e-5)


def test_exactly_the_spec_parameters_train(tiny_backbone: Callable[..., nn.Module]) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    model.begin_task(3, 2)
    model.end_task()
    model.begin_task(4, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pairs = {
        f"backbone.blocks.{b}.attn.qkv.lora.{t}.{ab}_cur"
        for b in (0, 1)
        for t in ("q", "v")
        for ab in ("A", "B")
    }
    assert trainable == pairs | {"magnitudes.alpha", "head.weight", "head.bias"}
    assert model.head.weight.shape == (4, 32)  # only the current task's rows
    assert model.magnitudes.alpha.shape == (2, 1)  # alpha_0 and alpha_1 both train


@pytest.mark.parametrize(("method", "expected_extra"), [("seq_lora", set()), ("frozen", set())])
def test_baselines_train_no_magnitudes(
    tiny_backbone: Callable[..., nn.Module], method: str, expected_extra: set[str]
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny", method=build_method(method))
    model.begin_task(3, 2)
    model.end_task()
    model.begin_task(3, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora." in n}
    assert "magnitudes.alpha" not in trainable
    assert {"head.weight", "head.bias"} <= trainable
    # seq_lora keeps training its one pair (task 0's); frozen has none.
    assert len(lora) == (8 if method == "seq_lora" else 0)
    assert model.task_ranks == ([2, 0] if method == "seq_lora" else [0, 0])


def test_frozen_directions_and_old_head_rows_are_bit_identical_after_training(
    tiny_backbone: Callable[..., nn.Module],
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    model.begin_task(3, 2)
    _perturb_current(model, 0)
    model.end_task()
    directions = {n: b.clone() for n, b in model.named_buffers() if ".lora." in n}
    model.begin_task(3, 2)  # task 0's head rows become frozen here
    frozen = {n: b.clone() for n, b in model.named_buffers() if ".lora." in n or "old_" in n}
    assert all(torch.equal(frozen[n], directions[n]) for n in directions if "cur_task" not in n)
    assert frozen["head.old_weight"].shape == (3, 32)
    base = {n: p.clone() for n, p in model.named_parameters() if ".base." in n}
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=0.1
    )
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    alpha_before = model.magnitudes.alpha.detach().clone()
    for _ in range(3):
        loss = F.cross_entropy(model(x)[:, 3:6], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.magnitudes.alpha, alpha_before)  # training did happen
    for n, b in model.named_buffers():
        if n in frozen and not n.endswith("cur_task"):
            assert torch.equal(b, frozen[n]), n
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_reference_code_compat_hand_computed(tiny_backbone: Callable[..., nn.Module]) -> None:
    """The public code: norm ||B|| ||A||, no rescale, old alphas reset to init (SPEC §2).

    One rank-2 component per matrix with A = B^T = [e0; e1] (2 x 32): B A = diag(1, 1, 0, ...),
    so ||B A||_F = sqrt(2) but ||B||_F ||A||_F = 2. With alpha_0 = 1.5 trained, the paper
    stores D_0 = BA / sqrt 2 with alpha_0 = 1.5 sqrt 2 at end_task (delta = 1.5 BA, unchanged).
    The public code evaluates the trained network (1.5 BA after end_task) and only when task 1
    begins stores D_0 = BA / 2 and re-initialises alpha_0 to 0.8 (delta = 0.4 BA: the jump).
    """
    e = torch.zeros(2, 32)
    e[0, 0] = e[1, 1] = 1.0
    ba = torch.zeros(32, 32)
    ba[0, 0] = ba[1, 1] = 1.0
    results = {}
    for compat in ("paper", "reference_code"):
        model = SDLoRAViT(
            tiny_backbone(), "tiny", method=build_method("sdlora", compat), magnitude_init=0.8
        )
        model.begin_task(3, 2)
        with torch.no_grad():
            for m in model.matrices():
                m.A_cur.copy_(e)
                m.B_cur.copy_(e.T)
            model.magnitudes.alpha.fill_(1.5)
        layer = model.matrices()[0]
        before = layer.delta_weight(model.magnitudes.alpha[:, 0]).clone()
        model.end_task()
        after_switch = layer.delta_weight(model.magnitudes.alpha[:, 0]).clone()
        model.begin_task(3, 2)
        after_begin = layer.delta_weight(model.magnitudes.alpha[:, 0]).clone()
        results[compat] = (before, after_switch, after_begin, model.magnitudes.alpha[0, 0].item())
    before, switch, begin, a0 = results["paper"]
    assert torch.allclose(before, 1.5 * ba) and torch.allclose(switch, 1.5 * ba)
    assert torch.allclose(begin, 1.5 * ba) and a0 == pytest.approx(1.5 * 2**0.5)
    before, switch, begin, a0 = results["reference_code"]
    assert torch.allclose(before, 1.5 * ba) and torch.allclose(switch, 1.5 * ba)
    assert torch.allclose(begin, 0.4 * ba) and a0 == pytest.approx(0.8)


def _public_logits(
    backbone: nn.Module,
    pairs: list[dict[int, tuple[torch.Tensor, torch.Tensor]]],
    alpha: list[float],
    head: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """The public code's forward, written from SPEC §2 on raw pairs: old pairs divided by
    ||B||_F ||A||_F, the last pair raw, each times its alpha; q and v of every block."""
    with torch.no_grad():
        for b, block in enumerate(backbone.blocks):
            w = block.attn.qkv.weight
            d = w.shape[1]
            for slot, start in (("q", 0), ("v", 2 * d)):
                delta = torch.zeros(d, d)
                for k, task_pairs in enumerate(pairs):
                    B, A = task_pairs[(b, slot)]
                    scale = 1.0 if k == len(pairs) - 1 else 1.0 / (B.norm() * A.norm())
                    delta += alpha[k] * scale * (B @ A)
                w[start : start + d] += delta
        return F.linear(backbone(x), *head)


def test_reference_code_matches_the_public_formula(
    tiny_backbone: Callable[..., nn.Module], images: torch.Tensor
) -> None:
    """Trained network evaluated as trained; the jump happens at the next begin_task."""
    model = SDLoRAViT(
        tiny_backbone(), "tiny", method=build_method("sdlora", "reference_code"), magnitude_init=0.8
    )
    pairs: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []
    for t, rank in enumerate([3, 2, 4]):
        model.begin_task(3, rank)
        if t > 0:  # just begun: the previous task jumped, alphas reset, new pair B = 0
            alpha = [0.8] * t + [model.magnitudes.alpha[t, 0].item()]
            want = _public_logits(
                tiny_backbone(), [*pairs, {k: (B, 0 * A) for k, (B, A) in pairs[-1].items()}],
                alpha, model.head.full_weight(), images,
            )  # fmt: skip
            torch.testing.assert_close(model(images), want, atol=1e-5, rtol=1e-5)
        _perturb_current(model, seed=t)  # stands in for training
        model.end_task()
        pairs.append(
            {
                (b, slot): (layer.B_cur.detach().clone(), layer.A_cur.detach().clone())
                for b, adapter in enumerate(model.adapters())
                for slot, layer in adapter.lora.items()
            }
        )
        alpha = model.magnitudes.alpha[:, 0].tolist()
        want = _public_logits(tiny_backbone(), pairs, alpha, model.head.full_weight(), images)
        torch.testing.assert_close(model(images), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.merge()(images), want, atol=1e-5, rtol=1e-5)


def test_head_init_follows_compat(tiny_backbone: Callable[..., nn.Module]) -> None:
    """reference_code: Kaiming-normal rows with the linear gain (std 1/sqrt(d)), zero bias."""
    torch.manual_seed(0)
    public = SDLoRAViT(tiny_backbone(), "tiny", method=build_method("sdlora", "reference_code"))
    public.begin_task(2000, 2)
    paper = SDLoRAViT(tiny_backbone(), "tiny")
    paper.begin_task(2000, 2)
    d = 32
    assert public.head.weight.std().item() == pytest.approx(d**-0.5, rel=0.05)
    assert torch.equal(public.head.bias, torch.zeros(2000))
    # torch's Linear: uniform in +-1/sqrt(d), so std 1/sqrt(3d), and a non-zero bias
    assert paper.head.weight.std().item() == pytest.approx((3 * d) ** -0.5, rel=0.05)
    assert paper.head.bias.abs().max() > 0


def test_storage_counts_components_magnitudes_and_head(
    tiny_backbone: Callable[..., nn.Module],
) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    _run_tasks(model, [4, 2])
    s = model.storage()
    lora = 2 * 2 * (6 * 32 + 32 * 6 + 2)  # 2 blocks x {q, v}: A, B (rank 6 total), 2 factors
    head = 6 * 33
    assert s["stored_params"] == lora + head + 2  # + alpha_0, alpha_1
    assert s["stored_bytes"] == 4 * s["stored_params"]
    assert s["backbone_params"] == sum(p.numel() for p in tiny_backbone().parameters())


def test_bad_blocks_and_method_are_errors(tiny_backbone: Callable[..., nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"model.blocks = \[0, 5\]: use distinct indices in 0..1"):
        SDLoRAViT(tiny_backbone(), "tiny", blocks=[0, 5])
    with pytest.raises(ValueError, match=r"model\.method"):
        build_method("ewc")


def test_end_task_without_begin_is_an_error(tiny_backbone: Callable[..., nn.Module]) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    with pytest.raises(RuntimeError, match="begin_task"):
        model.end_task()


def test_rank_larger_than_the_layer_names_the_key(tiny_backbone: Callable[..., nn.Module]) -> None:
    model = SDLoRAViT(tiny_backbone(), "tiny")
    with pytest.raises(ValueError, match=r"model\.rank .* rank 33 for task 0 .* use 1\.\.32"):
        model.begin_task(3, 33)
    assert model.num_tasks == 0 and model.magnitudes.num_tasks == 0  # nothing half-begun
