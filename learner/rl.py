"""One GSPO update on a rank's shard of a rollout batch (docs/design.md §4).

Order of work, the fix of the reference code's defect: ``log pi_old`` is computed ONCE for the whole
shard with the weights the batch starts from (no grad; minibatch 0 reuses its own first forward), then
``num_minibatches`` optimizer steps follow — so from the second minibatch on the ratios differ from 1
and clipping can act.

The model is run in eval mode (dropout off) for both the old and the current log-probs, so a ratio
measures only how the weights moved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from stgrl.learner.batch import ScoredGroup, minibatches, token_budget_split
from stgrl.learner.engine import LearnerEngine, train_without_dropout
from stgrl.learner.gspo import get_loss, group_advantages, truncated_is_weights
from stgrl.learner.logprobs import batched_completion_logprobs

logger = logging.getLogger(__name__)


def pad_rows(rows: Sequence[Sequence[float]], width: int) -> Tensor:
    """Right-pad float lists with 0 into ``[len(rows), width]`` float32."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.float32)
    return out


def _pairs(groups: Sequence[ScoredGroup]):
    return [(g.model_inputs, g.completion_ids) for g in groups]


def _advantages(groups: Sequence[ScoredGroup], scale: str) -> tuple[Tensor, int]:
    """Per-sequence advantages (groups may differ in size) and the number of zero-std groups."""
    advs, zero = [], 0
    for g in groups:
        adv, zs = group_advantages(torch.as_tensor([g.rewards], dtype=torch.float32), scale)
        advs.append(adv[0])
        zero += int(zs.sum())
    return torch.cat(advs), zero


def rl_update(engine: LearnerEngine, groups: Sequence[ScoredGroup], temperature: float = 1.0) -> dict[str, float]:
    """Old log-probs once, then one optimizer step per minibatch; returns this rank's metrics.

    A minibatch above ``cfg.micro_batch_tokens`` is run as micro-batches of whole groups
    (:func:`~stgrl.learner.batch.token_budget_split`): each micro-batch's loss is weighted by its
    share of the minibatch's sequences, so the accumulated gradient equals the whole minibatch's
    (the loss is a mean of per-sequence terms), then one optimizer step.

    Metrics: means over minibatches of the loss metrics (``clip_fraction``, ``ratio_*``,
    ``is_weight_*``, ``kl``), ``ratio_abs_dev_first``/``_last`` (first minibatch is exactly on-policy
    w.r.t. the learner), ``behaviour_gap`` (mean |old - behaviour| per token: engine/learner parity),
    ``zero_std_groups``, ``num_sequences``, ``tokens``, ``reward_mean``, ``num_micro_batches``,
    timings ``time_*_s``.
    """
    cfg = engine.cfg
    for g in groups:
        g.validate()
    loss_fn = get_loss(cfg.loss)
    model = engine.module
    if cfg.gradient_checkpointing:
        train_without_dropout(model)  # checkpointing is active in training mode only
    else:
        model.eval()
    device = next(model.parameters()).device
    mbs = [token_budget_split(mb, cfg.micro_batch_tokens) for mb in minibatches(list(groups), cfg.num_minibatches)]

    t0 = time.perf_counter()
    # Minibatch 0 is trained with the weights the batch starts from, so its old log-probs are its own
    # forward's, detached (bit-identical to a separate no-grad pass, tested): only minibatches 1.. need
    # the extra pass, which saves 1/num_minibatches of it.
    old: list[list[Tensor | None]] = []
    refs: list[list[Tensor | None]] = []
    with torch.no_grad():
        for i, parts in enumerate(mbs):
            old.append([None if i == 0 else batched_completion_logprobs(model, _pairs(p), engine.pad_id,
                                                                         temperature)[0] for p in parts])
            refs.append([None if engine.ref_model is None else
                         batched_completion_logprobs(engine.ref_model, _pairs(p), engine.pad_id, temperature)[0]
                         for p in parts])
    t_old = time.perf_counter() - t0

    per_mb: list[dict[str, float]] = []
    time_fwd = time_bwd = 0.0
    gap_sum, gap_tokens = 0.0, 0
    tokens = 0
    for parts, old_parts, ref_parts in zip(mbs, old, refs):
        n_seq = sum(len(g.completion_ids) for p in parts for g in p)
        sums: dict[str, float] = {}
        loss_total = 0.0
        for k, (part, old_lp, ref_lp) in enumerate(zip(parts, old_parts, ref_parts)):
            share = sum(len(g.completion_ids) for g in part) / n_seq
            adv, _ = _advantages(part, cfg.advantage_scale)
            tf = time.perf_counter()
            logp, mask = batched_completion_logprobs(model, _pairs(part), engine.pad_id, temperature)
            old_lp = logp.detach() if old_lp is None else old_lp
            behav = pad_rows([lp for g in part for lp in g.behaviour_logprobs], mask.shape[1]).to(device)
            gap_sum += float(((old_lp - behav).abs() * mask).sum())
            gap_tokens += int(mask.sum())
            is_w = truncated_is_weights(old_lp, behav, mask, cfg.is_cap) if cfg.use_is_weights else None
            loss, metrics = loss_fn(logp, old_lp, adv.to(device), mask, cfg.eps_low, cfg.eps_high,
                                    is_weights=is_w, ref_logp=ref_lp, kl_beta=cfg.kl_beta)
            time_fwd += time.perf_counter() - tf
            time_bwd += engine.accumulate(loss * share if len(parts) > 1 else loss, last=k == len(parts) - 1)
            loss_total += float(loss.detach()) * share
            for key, value in metrics.items():  # sequence-weighted means over the micro-batches
                sums[key] = sums.get(key, 0.0) + value * share
            tokens += sum(int(g.model_inputs["input_ids"].shape[1]) * len(g.completion_ids)
                          + sum(len(c) for c in g.completion_ids) for g in part)
        sums |= engine.optimizer_step()
        sums["loss"] = loss_total
        sums["num_micro_batches"] = float(len(parts))
        per_mb.append(sums)

    out: dict[str, float] = {}
    for key in per_mb[0]:
        vals = [m[key] for m in per_mb if key in m]
        out[key] = sum(vals) if key.startswith("time_") else sum(vals) / len(vals)
    _, zero_std = _advantages(groups, cfg.advantage_scale)
    out |= {
        "ratio_abs_dev_first": per_mb[0]["ratio_abs_dev"],
        "ratio_abs_dev_last": per_mb[-1]["ratio_abs_dev"],
        "clip_fraction_last": per_mb[-1]["clip_fraction"],
        "behaviour_gap": gap_sum / max(1, gap_tokens),
        "zero_std_groups": float(zero_std),
        "num_groups": float(len(groups)),
        "num_sequences": float(sum(len(g.completion_ids) for g in groups)),
        "num_minibatches": float(len(mbs)),
        "num_micro_batches": float(sum(len(parts) for parts in mbs)),
        "tokens": float(tokens),
        "reward_mean": sum(sum(g.rewards) for g in groups) / max(1, sum(len(g.rewards) for g in groups)),
        "time_old_logprobs_s": t_old,
        "time_forward_s": time_fwd,
        "time_backward_s": time_bwd,
    }
    return out
