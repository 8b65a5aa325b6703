"""GSPO loss math against hand-computed values, a plain-Python twin and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stgrl.learner.gspo import (
    get_loss,
    group_advantages,
    group_advantages_reference,
    gspo_loss,
    gspo_token_loss,
    k3_kl,
    loss_names,
    register_loss,
    truncated_is_weights,
)

# Two sequences: row 0 has 2 completion tokens (third is padding), row 1 has 3.
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
OLD = torch.tensor([[-1.0, -2.0, -3.0], [-1.5, -0.5, -2.0]], dtype=torch.float64)
# log-ratios per token: row 0 [0.2, 0.0, (999 on padding: must be ignored)], row 1 [-0.3, 0, 0]
DIFF = torch.tensor([[0.2, 0.0, 999.0], [-0.3, 0.0, 0.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
EPS_LOW, EPS_HIGH = 0.2, 0.05  # clip range [0.8, 1.05]


def test_group_advantages_hand_values_and_zero_std():
    adv, zero = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]]))
    # group 0: mean 0.5, population std 0.5; group 2: mean 2, std sqrt(0.5)
    assert torch.allclose(adv[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-6))
    assert torch.equal(adv[1], torch.zeros(4))
    s = math.sqrt(0.5)
    assert torch.allclose(adv[2], torch.tensor([1.0, -1.0, 0.0, 0.0]) / (s + 1e-6))
    assert zero.tolist() == [False, True, False]


def test_group_advantages_match_reference_twin():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(16, 6, generator=g, dtype=torch.float64)
    rewards[3] = 0.25  # a zero-std group
    rewards[5] = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    adv, zero = group_advantages(rewards)
    ref = torch.tensor(group_advantages_reference(rewards.tolist()), dtype=torch.float64)
    assert torch.allclose(adv, ref, atol=1e-12)
    assert zero.nonzero().flatten().tolist() == [3]


def test_group_advantages_without_std_scaling_hand_values():
    """Dr. GRPO scale: a 0.02 wobble stays a 0.01 advantage instead of becoming +-1."""
    adv, zero = group_advantages(torch.tensor([[0.80, 0.82, 0.80, 0.82], [2.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]),
                                 scale="none")
    assert torch.allclose(adv[0], torch.tensor([-0.01, 0.01, -0.01, 0.01]), atol=1e-6)
    assert torch.allclose(adv[1], torch.tensor([1.0, -1.0, 0.0, 0.0]))
    assert torch.equal(adv[2], torch.zeros(4)) and zero.tolist() == [False, False, True]
    std_scaled, _ = group_advantages(torch.tensor([[0.80, 0.82, 0.80, 0.82]]))
    assert torch.allclose(std_scaled[0].abs(), torch.ones(4), atol=1e-3)


@given(st.lists(st.lists(st.floats(-4, 4), min_size=2, max_size=8), min_size=1, max_size=6)
       .filter(lambda gs: len({len(g) for g in gs}) == 1))
def test_group_advantages_unscaled_match_twin_and_sum_to_zero(groups):
    adv, _ = group_advantages(torch.tensor(groups, dtype=torch.float64), scale="none")
    ref = torch.tensor(group_advantages_reference(groups, scale="none"), dtype=torch.float64)
    assert torch.allclose(adv, ref, atol=1e-9)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(len(groups), dtype=torch.float64), atol=1e-9)


def test_group_advantages_reject_unknown_scale():
    with pytest.raises(ValueError, match="advantage scale"):
        group_advantages(torch.zeros(1, 2), scale="rank")


def test_gspo_loss_hand_computed():
    logp = (OLD + DIFF).clone().requires_grad_(True)
    loss, m = gspo_loss(logp, OLD, ADV, MASK, EPS_LOW, EPS_HIGH)
    s0, s1 = math.exp(0.1), math.exp(-0.1)  # length-normalised: 0.2/2 and -0.3/3
    # row 0: A=+1, s0=1.105 > 1.05 -> clipped term -1.05 wins; row 1: A=-1, s1=0.905 inside range
    assert loss.item() == pytest.approx((-1.05 + s1) / 2, abs=1e-12)
    assert m["clip_fraction"] == pytest.approx(0.5)
    assert m["ratio_max"] == pytest.approx(s0) and m["ratio_min"] == pytest.approx(s1)
    assert m["ratio_mean"] == pytest.approx((s0 + s1) / 2)
    loss.backward()
    # clipped row has no gradient; row 1: d/dlogp_t of (1/2) * s1 = (1/2) * s1 / 3 on each of its 3 tokens
    assert torch.equal(logp.grad[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(logp.grad[1], torch.full((3,), s1 / 6, dtype=torch.float64), atol=1e-12)


def test_gspo_lower_clip_and_padding_ignored():
    # row 1 with positive advantage and ratio below 1 - eps_low: the unclipped (smaller) value wins
    diff = torch.tensor([[0.0, 0.0, -5.0], [-0.9, 0.0, 0.0]], dtype=torch.float64)
    logp = (OLD + diff).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, m = gspo_loss(logp, OLD, adv, MASK, EPS_LOW, EPS_HIGH)
    s1 = math.exp(-0.3)  # 0.741 < 0.8, A = -1: -A*s = 0.741 vs -A*clip = 0.8 -> clipped 0.8 wins
    assert loss.item() == pytest.approx((-1.0 + 0.8) / 2, abs=1e-12)
    assert m["clip_fraction"] == pytest.approx(0.5)
    assert s1 < 0.8


def test_token_variant_hand_computed_equal_value_and_gradient_with_sequence_advantage():
    a = (OLD + DIFF).clone().requires_grad_(True)
    b = (OLD + DIFF).clone().requires_grad_(True)
    la, _ = gspo_loss(a, OLD, ADV, MASK, EPS_LOW, EPS_HIGH)
    lb, mb = gspo_token_loss(b, OLD, ADV, MASK, EPS_LOW, EPS_HIGH)
    la.backward()
    lb.backward()
    assert lb.item() == pytest.approx(la.item(), abs=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert mb["clip_fraction"] == pytest.approx(2 / 5)  # row 0's two tokens clipped, row 1's three not


def test_token_variant_per_token_advantages_hand_computed():
    logp = (OLD + DIFF).clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 7.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, m = gspo_token_loss(logp, OLD, adv, MASK, EPS_LOW, EPS_HIGH)
    s1 = math.exp(-0.1)
    # row 0: both tokens clipped at 1.05 -> mean -1.05; row 1: tokens s1, -s1, 0 -> mean 0
    assert loss.item() == pytest.approx((-1.05 + 0.0) / 2, abs=1e-12)
    loss.backward()
    # row 1 token t: d/dlogp of (1/2)(1/3)(-A_t s_{1,t}) = -(A_t) s1 / 6
    assert torch.allclose(logp.grad[1], torch.tensor([s1 / 6, -s1 / 6, 0.0], dtype=torch.float64), atol=1e-12)
    assert m["clip_fraction"] == pytest.approx(2 / 5)


def test_truncated_is_weights_hand_computed():
    behav = OLD - torch.tensor([[0.5, 0.3, 50.0], [1.0, 1.2, 1.1]], dtype=torch.float64)
    w = truncated_is_weights(OLD, behav, MASK, cap=2.0)
    assert w.tolist() == pytest.approx([math.exp(0.4), 2.0])  # exp(1.1) = 3.0 truncated to C = 2
    logp = (OLD + DIFF).clone().requires_grad_(True)
    loss, m = gspo_loss(logp, OLD, ADV, MASK, EPS_LOW, EPS_HIGH, is_weights=w)
    assert loss.item() == pytest.approx((-1.05 * math.exp(0.4) + math.exp(-0.1) * 2.0) / 2, abs=1e-12)
    assert m["is_weight_max"] == pytest.approx(2.0) and m["is_weight_min"] == pytest.approx(math.exp(0.4))


def test_k3_kl_hand_computed_and_in_loss():
    logp = OLD.clone()
    ref = OLD + torch.tensor([[0.5, -0.5, 9.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    k3 = k3_kl(logp, ref, MASK)
    f = lambda d: math.exp(d) - d - 1  # noqa: E731
    assert k3.tolist() == pytest.approx([(f(0.5) + f(-0.5)) / 2, f(1.0) / 3])
    base, _ = gspo_loss(logp, OLD, ADV, MASK, EPS_LOW, EPS_HIGH)
    with_kl, m = gspo_loss(logp, OLD, ADV, MASK, EPS_LOW, EPS_HIGH, ref_logp=ref, kl_beta=0.1)
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * k3.mean().item(), abs=1e-12)
    assert m["kl"] == pytest.approx(k3.mean().item())


def test_k3_kl_clamps_the_log_ratio_to_ten_as_the_reference():
    """One token far off the reference (d = 800 in float64, 100 in float32) made exp(d) inf and the
    loss with it; clamped to +-10 before exp, it costs what d = 10 costs."""
    f = lambda d: math.exp(d) - d - 1  # noqa: E731
    for dtype, far in ((torch.float64, 800.0), (torch.float32, 100.0)):
        logp = OLD.to(dtype).clone().requires_grad_(True)
        ref = OLD.to(dtype) + torch.tensor([[far, -far, 0.0], [0.0, 0.5, 0.0]], dtype=dtype)
        k3 = k3_kl(logp, ref, MASK)
        assert k3.tolist() == pytest.approx([(f(10.0) + f(-10.0)) / 2, f(0.5) / 3], rel=1e-6)
        loss, m = gspo_loss(logp, OLD.to(dtype), ADV.to(dtype), MASK, EPS_LOW, EPS_HIGH, ref_logp=ref,
                            kl_beta=0.04)
        assert math.isfinite(loss.item()) and math.isfinite(m["kl"])
        loss.backward()
        assert torch.isfinite(logp.grad).all()
        alone = OLD.to(dtype).clone().requires_grad_(True)
        k3_kl(alone, ref, MASK).sum().backward()
        assert alone.grad[0, 0].item() == 0.0 and alone.grad[0, 1].item() == 0.0  # clamped: no gradient
        assert alone.grad[1, 1].item() == pytest.approx(-(math.exp(0.5) - 1) / 3, rel=1e-6)


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_finite_difference_gradient(name):
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    # ratios spread so some rows sit clipped, some not, none at the clip boundary
    diff = torch.tensor([[0.3, 0.1, 0.2, 0, 0], [-0.05, 0.0, 0.05, 0.02, -0.01], [-0.4, 0, 0, 0, 0],
                         [0.01, 0.0, 0.0, -0.02, 0]], dtype=torch.float64)
    logp = (old + diff).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    ref = old + 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    isw = torch.tensor([1.0, 0.5, 1.5, 2.0], dtype=torch.float64)
    fn = get_loss(name)
    assert torch.autograd.gradcheck(
        lambda lp: fn(lp, old, adv, mask, 0.1, 0.15, is_weights=isw, ref_logp=ref, kl_beta=0.3)[0], (logp,),
        eps=1e-6, atol=1e-8)
    _, m = fn(logp, old, adv, mask, 0.1, 0.15)
    assert 0.0 < m["clip_fraction"] < 1.0, "the gradient check must cover clipped and unclipped rows"


def test_registry_names_and_unknown_name_error():
    assert {"gspo", "gspo_token"} <= set(loss_names())
    assert get_loss("gspo") is gspo_loss
    with pytest.raises(KeyError, match="valid names: .*gspo"):
        get_loss("ppo")
    with pytest.raises(ValueError, match="twice"):
        register_loss("gspo")(gspo_loss)
