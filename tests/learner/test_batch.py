"""Pure pieces around the update: sharding by global minibatch, group validation, metric combining,
the lr schedule and the DeepSpeed config."""

from __future__ import annotations

import math

import pytest
import torch

from stgrl.learner.batch import ScoredGroup, even_split, minibatches, shard_for_ranks, shard_minibatched
from stgrl.learner.config import LearnerConfig
from stgrl.learner.ds_config import build_ds_config
from stgrl.learner.metrics import combine_rank_metrics
from stgrl.learner.schedule import warmup_cosine


@pytest.mark.parametrize(("n", "world", "mbs"), [(8, 2, 2), (16, 2, 4), (12, 3, 2), (8, 1, 4), (6, 2, 4)])
def test_shards_reassemble_global_minibatches(n, world, mbs):
    items = list(range(n))
    shards = shard_minibatched(items, world, mbs)
    per_rank = [minibatches(s, mbs) for s in shards]
    assert len({len(p) for p in per_rank}) == 1, "every rank runs the same number of minibatches"
    assert len({tuple(len(m) for m in p) for p in per_rank}) == 1
    one_rank = minibatches(items, mbs)
    if n % (world * mbs) == 0:  # then the L-rank update takes the 1-rank update's steps exactly
        for i, mb in enumerate(one_rank):
            assert sorted(x for p in per_rank for x in p[i]) == mb
    assert sorted(x for s in shards for x in s) == items[: (n // world) * world]


def test_remainder_dropped_and_too_few_fails():
    assert shard_for_ranks(list(range(5)), 2) == [[0, 1], [2, 3]]
    assert [len(s) for s in shard_minibatched(list(range(7)), 2, 2)] == [3, 3]
    with pytest.raises(ValueError, match="cannot feed"):
        shard_minibatched([1], 2, 2)
    assert even_split(list(range(5)), 3) == [[0, 1], [2, 3], [4]]


def test_group_validation():
    ok = ScoredGroup(model_inputs={"input_ids": torch.zeros(1, 3)}, completion_ids=[[1, 2], [3]],
                     behaviour_logprobs=[[-1.0, -1.0], [-2.0]], rewards=[1.0, 0.0], group_id="g")
    ok.validate()
    with pytest.raises(ValueError, match="2 tokens, 1 log-probs"):
        ScoredGroup(model_inputs=ok.model_inputs, completion_ids=[[1, 2]], behaviour_logprobs=[[-1.0]],
                    rewards=[1.0]).validate()
    with pytest.raises(ValueError, match="rewards"):
        ScoredGroup(model_inputs=ok.model_inputs, completion_ids=[[1]], behaviour_logprobs=[[-1.0]],
                    rewards=[]).validate()


def test_combine_rank_metrics():
    out = combine_rank_metrics([
        {"loss": 1.0, "tokens": 10, "time_step_s": 2.0, "ratio_max": 1.1, "ratio_min": 0.9},
        {"loss": 3.0, "tokens": 30, "time_step_s": 4.0, "ratio_max": 1.3, "ratio_min": 0.95},
    ])
    assert out == {"loss": 2.0, "tokens": 40.0, "time_step_s": 4.0, "ratio_max": 1.3, "ratio_min": 0.9,
                   "tokens_per_s": 10.0}


def test_warmup_cosine():
    assert [warmup_cosine(s, 3, 0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_cosine(2, 2, 12) == 1.0
    assert warmup_cosine(7, 2, 12) == pytest.approx(0.5)
    assert warmup_cosine(12, 2, 12, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(4, 2, 12, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_ds_config():
    c2 = build_ds_config(LearnerConfig(grad_clip=0.5, precision="bf16"), world_size=4)
    assert c2["zero_optimization"]["stage"] == 2 and c2["zero_optimization"]["allgather_bucket_size"] == 5_000_000
    assert c2["bf16"]["enabled"] and c2["gradient_clipping"] == 0.5 and c2["train_batch_size"] == 4
    assert c2["optimizer"]["params"]["torch_adam"] is True
    c3 = build_ds_config(LearnerConfig(zero_stage=3), world_size=1)
    assert c3["zero_optimization"]["stage"] == 3 and not c3["bf16"]["enabled"]
