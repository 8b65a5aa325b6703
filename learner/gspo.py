"""GSPO loss math (docs/design.md §4) as pure functions on tensors: no Ray, no DeepSpeed, no model.

Shapes: ``B`` sequences (completions), ``T`` completion tokens (right-padded), ``N`` prompts with
``G`` completions each. Every loss returns ``(loss, metrics)`` where ``loss`` is a scalar tensor
that carries the gradient and ``metrics`` is a ``dict[str, float]`` of detached numbers.

Normalisation lives in one place (:func:`masked_seq_mean`): a sequence's terms are averaged over
its own completion tokens, and sequences are averaged with equal weight, i.e.
``L = -(1/B) sum_i min(s_i A_i, clip(s_i) A_i)`` — with groups of equal size this is the paper's
``1/G`` per group averaged over groups. Data-parallel ranks hold equal numbers of sequences per
minibatch (see :mod:`stgrl.learner.batch`), so DeepSpeed's gradient averaging gives the global mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

ADV_EPS = 1e-6
"""``A = (r - mean) / (std + ADV_EPS)`` as in docs/design.md §4."""
ADVANTAGE_SCALES = ("std", "none")
"""`group_advantages` scales: divide by the group's reward std (GRPO/GSPO) or not (Dr. GRPO)."""
ZERO_STD_TOL = 1e-8
"""A group whose reward std is below this gives no gradient (all its advantages are 0)."""


def group_advantages(rewards: Tensor, scale: str = "std") -> tuple[Tensor, Tensor]:
    """Group-normalised advantages ``A_i = (r_i - mean(r)) / (std(r) + 1e-6)`` per prompt.

    ``rewards``: ``[N, G]``. Returns ``(adv [N, G], zero_std [N] bool)``. The std is the population
    std (``correction=0``) so a group of 2 is well defined; zero-std groups get exactly 0 advantage
    (not ``0 / 1e-6`` noise) and are flagged so the caller can count them.

    ``scale="none"`` drops the division (``A_i = r_i - mean(r)``, Dr. GRPO). Why: our rewards have
    continuous components (IoU, proximity), so almost every group has a small nonzero std, and dividing
    by it blows a 0.01 IoU wobble up to a +-1 advantage — as loud as a right-vs-wrong answer in another
    group. Without it a group's weight is its real reward spread.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, G], got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float64)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=0)
    zero_std = std.squeeze(1) < ZERO_STD_TOL
    adv = (r - mean) / (std + ADV_EPS) if scale == "std" else r - mean
    adv = torch.where(zero_std.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), zero_std


def group_advantages_reference(rewards: list[list[float]], scale: str = "std") -> list[list[float]]:
    """Plain-Python twin of :func:`group_advantages` (STYLE 8), used by tests to check the vector code."""
    out = []
    for group in rewards:
        mean = sum(group) / len(group)
        std = (sum((x - mean) ** 2 for x in group) / len(group)) ** 0.5
        div = std + ADV_EPS if scale == "std" else 1.0
        out.append([0.0 if std < ZERO_STD_TOL else (x - mean) / div for x in group])
    return out


def masked_seq_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values [B, T]`` over each row's masked tokens -> ``[B]`` (0 for an empty row)."""
    m = mask.to(values.dtype)
    return (values * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised log importance ratio ``log s_i = mean_t(logp - old_logp)`` -> ``[B]``."""
    return masked_seq_mean(logp - old_logp, mask)


def truncated_is_weights(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated sequence-level importance weight ``w_i = min(exp(mean_t(old - behav)), cap)``.

    Corrects for samples drawn by a stale policy version or by an engine whose numerics differ from
    the learner's (docs/design.md §4, off-policy correction). Detached: weights scale the loss, they are not
    optimised. Returns ``[B]``.
    """
    with torch.no_grad():
        return torch.exp(masked_seq_mean(old_logp - behaviour_logp, mask)).clamp(max=cap)


K3_LOG_RATIO_CLAMP = 10.0
"""``|ref - logp|`` per token is clamped to this before ``exp`` in the k3 KL, as the reference does:
one token the policy has moved far from the reference (``d = 800``) would otherwise make
``exp(d)`` overflow to inf and the loss with it."""


def k3_kl(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence k3 estimator of KL(pi_theta || pi_ref): mean_t[exp(d) - d - 1] with
    ``d = clamp(ref - logp, -10, 10)`` (:data:`K3_LOG_RATIO_CLAMP`; a clamped token gives no
    gradient, which bounds what one far-off token can do to the update)."""
    d = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return masked_seq_mean(torch.exp(d) - d - 1.0, mask)


def _clip_terms(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """Per-element PPO-style pessimistic loss ``max(-A s, -A clip(s))`` and whether the clip branch won."""
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _common_metrics(
    log_ratio: Tensor,
    clip_active: Tensor,
    valid: Tensor,
    is_weights: Tensor | None,
    kl: Tensor | None,
) -> dict[str, float]:
    """Ratio / clip / IS-weight / KL statistics over the sequences that have at least one token."""
    with torch.no_grad():
        ratio = torch.exp(log_ratio[valid]) if bool(valid.any()) else torch.ones(1, dtype=log_ratio.dtype)
        metrics = {
            "clip_fraction": float(clip_active[valid].float().mean()) if bool(valid.any()) else 0.0,
            "ratio_mean": float(ratio.mean()),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
            "ratio_abs_dev": float((ratio - 1.0).abs().mean()),
        }
        if is_weights is not None:
            w = is_weights[valid] if bool(valid.any()) else is_weights
            metrics |= {"is_weight_mean": float(w.mean()), "is_weight_min": float(w.min()),
                        "is_weight_max": float(w.max())}
        if kl is not None:
            metrics["kl"] = float(kl[valid].mean()) if bool(valid.any()) else 0.0
    return metrics


class PolicyLoss(Protocol):
    """Signature shared by every registered policy loss (shapes as in the module docstring)."""

    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        adv: Tensor,
        mask: Tensor,
        eps_low: float,
        eps_high: float,
        is_weights: Tensor | None = None,
        ref_logp: Tensor | None = None,
        kl_beta: float = 0.0,
    ) -> tuple[Tensor, dict[str, float]]: ...


_LOSSES: dict[str, PolicyLoss] = {}


def register_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: make a policy loss selectable by ``LearnerConfig.loss``."""

    def deco(fn: PolicyLoss) -> PolicyLoss:
        if name in _LOSSES:
            raise ValueError(f"policy loss '{name}' registered twice")
        _LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> PolicyLoss:
    """The registered loss called ``name``; an unknown name fails listing the valid ones."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown policy loss '{name}'; valid names: {sorted(_LOSSES)}") from None


def loss_names() -> list[str]:
    """Names of the registered policy losses."""
    return sorted(_LOSSES)


def _kl_term(logp: Tensor, ref_logp: Tensor | None, mask: Tensor, kl_beta: float) -> Tensor | None:
    if ref_logp is None or kl_beta == 0.0:
        return None
    return k3_kl(logp, ref_logp, mask)


@register_loss("gspo")
def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    is_weights: Tensor | None = None,
    ref_logp: Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Sequence-level GSPO: ``-(1/B) sum_i w_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)``.

    ``logp``, ``old_logp``, ``mask``, ``ref_logp``: ``[B, T]``; ``adv``, ``is_weights``: ``[B]``.
    ``s_i = exp(mean_t(logp - old_logp))`` over completion tokens only (``mask``). With ``kl_beta``
    > 0 and ``ref_logp`` given, adds ``kl_beta * mean_i k3_i``. Sequences with no completion token
    contribute nothing but still count in ``B`` (so every rank's normaliser is the same).
    """
    log_ratio = sequence_log_ratio(logp, old_logp, mask)
    ratio = torch.exp(log_ratio)
    per_seq, clip_active = _clip_terms(ratio, adv.to(ratio.dtype), eps_low, eps_high)
    valid = mask.sum(dim=-1) > 0
    per_seq = per_seq * valid.to(per_seq.dtype)
    if is_weights is not None:
        per_seq = per_seq * is_weights.detach().to(per_seq.dtype)
    loss = per_seq.mean()
    kl = _kl_term(logp, ref_logp, mask, kl_beta)
    if kl is not None:
        loss = loss + kl_beta * (kl * valid.to(kl.dtype)).mean()
    metrics = _common_metrics(log_ratio.detach(), clip_active, valid, is_weights, kl)
    metrics["policy_loss"] = float(per_seq.detach().mean())
    return loss, metrics


@register_loss("gspo_token")
def gspo_token_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    is_weights: Tensor | None = None,
    ref_logp: Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """GSPO-token: per-token ratio ``s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]`` with token advantages.

    ``adv`` is ``[B]`` (broadcast over tokens) or ``[B, T]`` (per-token advantages). The value of
    ``s_{i,t}`` equals ``s_i``, so clipping is decided per sequence; with a per-sequence advantage
    the gradient equals :func:`gspo_loss`'s. Loss
    ``-(1/B) sum_i w_i (1/|y_i|) sum_t min(s_{i,t} A_{i,t}, clip(s_{i,t}) A_{i,t})``.
    """
    log_ratio = sequence_log_ratio(logp, old_logp, mask)
    token_ratio = torch.exp(logp - logp.detach() + log_ratio.detach().unsqueeze(-1))
    adv_t = adv.to(token_ratio.dtype)
    if adv_t.dim() == 1:
        adv_t = adv_t.unsqueeze(-1).expand_as(token_ratio)
    per_tok, clip_tok = _clip_terms(token_ratio, adv_t, eps_low, eps_high)
    per_seq = masked_seq_mean(per_tok, mask)
    valid = mask.sum(dim=-1) > 0
    if is_weights is not None:
        per_seq = per_seq * is_weights.detach().to(per_seq.dtype)
    loss = per_seq.mean()
    kl = _kl_term(logp, ref_logp, mask, kl_beta)
    if kl is not None:
        loss = loss + kl_beta * kl.mean()
    metrics = _common_metrics(log_ratio.detach(), clip_tok.any(dim=-1), valid, is_weights, kl)
    m = mask.bool()
    # token variant: the clip fraction is over completion tokens (per-token advantages may differ in sign)
    metrics["clip_fraction"] = float(clip_tok[m].float().mean()) if bool(m.any()) else 0.0
    metrics["policy_loss"] = float(per_seq.detach().mean())
    return loss, metrics
