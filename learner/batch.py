"""What the learner trains on: scored groups for RL, prepared examples for SFT, how a batch is split
over data-parallel ranks and minibatches, and which rank trains which group of an RL step
(`plan_ranks`, fixed before the step is generated, so workers send each group straight to its rank).

Tensors are held as ``torch.Tensor`` values inside the Structs (typed ``Any``). In an RL run they
reach each rank's inbox as raw frames on the ZeroMQ trajectory channel; `LearnerGroup.train_rl_batch`
(tests, benchmarks) still hands a whole batch over Ray, which pickles them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import msgspec

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ScoredGroup(msgspec.Struct, kw_only=True):
    """One prompt's completions after scoring.

    ``model_inputs``: the prompt's tensors (batch of 1, per-frame images) exactly as the rollout
    worker fed them to its engine. ``completion_ids[i]`` and ``behaviour_logprobs[i]`` have equal
    length (log-probs under the rollout engine, convention of :mod:`stgrl.learner.logprobs`).
    ``policy_version``: the weight version that generated the group.
    """

    model_inputs: dict[str, Any]
    completion_ids: list[list[int]]
    behaviour_logprobs: list[list[float]]
    rewards: list[float]
    policy_version: int = 0
    group_id: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent lengths — at the learner's door, not deep in a forward."""
        g = len(self.completion_ids)
        if g == 0:
            raise ValueError(f"group {self.group_id!r} has no completions")
        if len(self.behaviour_logprobs) != g or len(self.rewards) != g:
            raise ValueError(
                f"group {self.group_id!r}: {g} completions but {len(self.behaviour_logprobs)} log-prob lists "
                f"and {len(self.rewards)} rewards")
        for i, (ids, lp) in enumerate(zip(self.completion_ids, self.behaviour_logprobs)):
            if len(ids) != len(lp):
                raise ValueError(f"group {self.group_id!r} completion {i}: {len(ids)} tokens, {len(lp)} log-probs")
        if "input_ids" not in self.model_inputs:
            raise ValueError(f"group {self.group_id!r}: model_inputs lacks input_ids")


class RLBatch(msgspec.Struct, kw_only=True):
    """One rollout batch: the unit of "compute old log-probs once, then num_minibatches steps"."""

    groups: list[ScoredGroup]
    step: int = 0
    """Training step (rollout batch index) the batch belongs to."""


class SFTBatch(msgspec.Struct, kw_only=True):
    """Prepared SFT examples: each a dict with ``input_ids``/``attention_mask`` ``[1, L]``, pixel
    tensors and ``labels`` ``[1, L]`` (-100 everywhere but the target tokens)."""

    examples: list[dict[str, Any]]


def even_split(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split into ``parts`` contiguous chunks whose sizes differ by at most one (larger first)."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(list(items[start:start + size]))
        start += size
    return out


def shard_for_ranks(items: Sequence[T], world_size: int) -> list[list[T]]:
    """Give every rank the same number of items (contiguous blocks); a remainder is dropped and logged.

    Equal counts keep the per-rank loss normalisers equal, so DeepSpeed's gradient averaging equals
    the mean over the whole batch, and every rank runs the same number of collectives.
    """
    per_rank = len(items) // world_size
    if per_rank == 0:
        raise ValueError(f"{len(items)} items cannot feed {world_size} ranks")
    dropped = len(items) - per_rank * world_size
    if dropped:
        logger.warning("dropping %d of %d items so %d ranks get equal shards", dropped, len(items), world_size)
    return [list(items[r * per_rank:(r + 1) * per_rank]) for r in range(world_size)]


def minibatches(items: Sequence[T], num_minibatches: int) -> list[list[T]]:
    """Split a rank's shard into ``min(num_minibatches, len(items))`` non-empty minibatches.

    Ranks with equal shard sizes get identical minibatch counts and sizes.
    """
    return even_split(items, max(1, min(num_minibatches, len(items))))


def shard_minibatched(items: Sequence[T], world_size: int, num_minibatches: int) -> list[list[T]]:
    """Data-parallel shards such that global minibatch ``i`` = the union of every rank's minibatch ``i``.

    The batch is cut into minibatches first (contiguous), and each minibatch is split evenly over
    ranks; rank ``r``'s shard is its part of minibatch 0, then of minibatch 1, … . A rank that re-splits
    its shard with :func:`minibatches` gets exactly those parts back, so an ``L``-rank update takes the
    same optimizer steps on the same sequences as a 1-rank update (when ``len(items)`` is a multiple of
    ``world_size x num_minibatches``). A remainder that cannot be shared equally is dropped and logged.
    """
    per_rank = len(items) // world_size
    if per_rank == 0:
        raise ValueError(f"{len(items)} items cannot feed {world_size} ranks")
    used = per_rank * world_size
    if used < len(items):
        logger.warning("dropping %d of %d items so %d ranks get equal shards", len(items) - used, len(items),
                       world_size)
    sizes = [len(c) for c in minibatches(range(per_rank), num_minibatches)]
    shards: list[list[T]] = [[] for _ in range(world_size)]
    start = 0
    for size in sizes:
        for r in range(world_size):
            shards[r].extend(items[start + r * size:start + (r + 1) * size])
        start += size * world_size
    return shards


def padded_tokens(groups: Sequence[ScoredGroup]) -> int:
    """Tokens a forward of these groups costs: all their rows, right-padded to the longest row."""
    rows = sum(len(g.completion_ids) for g in groups)
    longest = max((int(g.model_inputs["input_ids"].shape[1]) + max((len(c) for c in g.completion_ids), default=0)
                   for g in groups), default=0)
    return rows * longest


def token_budget_split(groups: Sequence[ScoredGroup], budget: int) -> list[list[ScoredGroup]]:
    """Contiguous micro-batches of whole groups, each within ``budget`` padded tokens
    (:func:`padded_tokens`); a group larger than the budget goes alone. ``budget == 0``: one
    micro-batch. Groups stay whole so each prompt's images are encoded once per micro-batch."""
    if budget <= 0 or not groups:
        return [list(groups)]
    parts: list[list[ScoredGroup]] = [[]]
    for g in groups:
        if parts[-1] and padded_tokens([*parts[-1], g]) > budget:
            parts.append([])
        parts[-1].append(g)
    return parts


def plan_ranks(group_ids: Sequence[str], world_size: int, num_minibatches: int) -> list[list[str]]:
    """Which learner rank trains which group of a step, fixed before the step is generated.

    The ids are sorted, then shared out as :func:`shard_minibatched` shares a batch: rank ``r`` gets
    its part of every global minibatch, in order, so an ``L``-rank step trains what a 1-rank step
    would. Deterministic in the step's set of ids (a re-queued or regenerated group goes to the rank
    its first copy went to) and balanced (equal counts; a remainder that cannot be shared equally is
    left out, as `shard_minibatched` leaves it out: such groups are scored, not trained).
    """
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    ids = sorted(set(group_ids))
    if len(ids) < world_size:
        raise ValueError(f"{len(ids)} groups cannot feed {world_size} learner ranks "
                         "(rollout.prompts_per_step must be at least learner.num_ranks)")
    return shard_minibatched(ids, world_size, num_minibatches)


def destinations(plan: Sequence[Sequence[str]]) -> dict[str, int]:
    """``group id -> rank`` of a :func:`plan_ranks` plan (groups left out have no entry)."""
    return {gid: r for r, ids in enumerate(plan) for gid in ids}


def arrived_shards(plan: Sequence[Sequence[str]], arrived: Iterable[str]) -> list[list[str]]:
    """Each rank's planned groups that did arrive (a worker skips a record whose media fail), in plan
    order, cut to the smallest rank's count so every rank runs the same minibatches and collectives.
    Nothing is moved between ranks: a group's tensors are already at its planned rank."""
    have = set(arrived)
    kept = [[g for g in ids if g in have] for ids in plan]
    n = min((len(k) for k in kept), default=0)
    if n == 0:
        raise ValueError("a learner rank has no arrived group to train this step "
                         f"(planned per rank: {[len(ids) for ids in plan]}, arrived: {[len(k) for k in kept]})")
    dropped = sum(len(k) - n for k in kept)
    if dropped:
        logger.warning("dropping %d arrived group(s) so %d ranks train equal shards", dropped, len(kept))
    return [k[:n] for k in kept]
