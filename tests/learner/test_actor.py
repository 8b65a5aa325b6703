"""Learner ranks as Ray actors: 2-rank ZeRO-2 (and ZeRO-3) on CPU/gloo reproduce a 1-rank run."""

from __future__ import annotations

import pytest
import torch

from stgrl.learner.actor import start_learner_group
from stgrl.learner.batch import RLBatch
from stgrl.learner.config import LearnerConfig

pytestmark = pytest.mark.timeout(400)


def _cfg(zero_stage):
    # 1 MiB gather groups: under ZeRO-3 the publisher's snapshot is filled in many groups
    return LearnerConfig(lr=5e-3, warmup_steps=1, total_steps=10, num_minibatches=2, zero_stage=zero_stage,
                         eps_low=0.2, eps_high=0.2, weight_group_mib=1)


def _pull(address):
    """What a rollout worker gets from rank 0's publisher (TCP, several streams)."""
    from stgrl.transport.config import TransportConfig
    from stgrl.transport.weight_channel import WeightSubscriber

    sub = WeightSubscriber(address, TransportConfig(curve="off", weight_shm=False, weight_bucket_mib=1))
    try:
        got = sub.poll_latest(60)
        assert got is not None
        return got[0], {k: v.clone() for k, v in got[1].items()}
    finally:
        sub.close()


@pytest.fixture(scope="module")
def one_rank(vl_model_dir, data):
    """The reference: the same steps on one in-process rank (no Ray, world size 1)."""
    from stgrl.learner.engine import LearnerEngine, WorldInfo
    from stgrl.learner.rl import rl_update
    from stgrl.learner.sft import sft_eval_loss, sft_step
    from stgrl.learner.testing import free_port

    batches, sft_examples, held_out = data
    eng = LearnerEngine(vl_model_dir, _cfg(2), WorldInfo(master_port=free_port()), seed=0)
    rl = [rl_update(eng, b.groups) for b in batches]
    sft = sft_step(eng, sft_examples)
    nll, n = sft_eval_loss(eng, held_out)
    return rl, sft, nll / n, None, eng.full_state_dict(), eng.global_steps


def _run(num_ranks, zero_stage, model_dir, batches, sft_examples, held_out):
    cfg = _cfg(zero_stage)
    group = start_learner_group(num_ranks, model_dir, cfg, seed=0, timeout_s=300)
    try:
        rl = [group.train_rl_batch(b) for b in batches]
        sft = group.train_sft_batch(sft_examples)
        held = group.eval_sft_loss(held_out)
        from functools import partial

        from stgrl.transport.config import TransportConfig
        from stgrl.transport.weight_channel import WeightPublisher

        address = group.attach_publisher(partial(WeightPublisher, TransportConfig(
            curve="off", weight_shm=False, weight_bucket_mib=1, weight_streams=3)))
        pub = group.publish_weights(version=1)
        version, pulled = _pull(address)
        state = group.full_state_dict()
        # the workers get exactly the learner's weights, gathered group by group under ZeRO-3
        assert version == 1 and list(pulled) == list(state)
        assert all(torch.equal(pulled[k].view(-1).view(torch.uint8), state[k].contiguous().view(-1).view(torch.uint8))
                   for k in state)
        return rl, sft, held, pub, state, group.global_steps()
    finally:
        group.shutdown()


@pytest.fixture(scope="module")
def data(vl_prompt, make_groups):
    from stgrl.learner.sft import make_sft_example

    batches = [RLBatch(groups=make_groups([vl_prompt(seed=20 + 4 * k + i) for i in range(4)], 500, seed=k), step=k)
               for k in range(2)]
    tok = vl_prompt.processor.tokenizer
    ids = tok.encode("<think>the red circle</think>\n<answer>A</answer>", add_special_tokens=False)
    sft = [make_sft_example(vl_prompt(seed=s), ids) for s in (40, 41, 42, 43)]
    held = [make_sft_example(vl_prompt(seed=s), ids) for s in (50, 51, 52)]
    return batches, sft, held


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_match_one_rank(ray_cluster, vl_model_dir, data, one_rank, zero_stage):
    batches, sft, held = data
    one = one_rank
    two = _run(2, zero_stage, vl_model_dir, batches, sft, held)
    (rl1, sft1, held1, _, s1, steps1), (rl2, sft2, held2, pub2, s2, steps2) = one, two
    assert steps1 == steps2 == 2 * 2 + 1
    for a, b in zip(rl1, rl2):
        assert b["num_sequences"] == a["num_sequences"] == 16 and b["num_minibatches"] == 2
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        # The last minibatch's ratios come after Adam steps, which divide reduction-order gradient
        # differences (1e-7 relative) by sqrt(v): on 2026-12-02's lock they differed by 7.6e-6
        # relative (1.04e-6 absolute on 0.138), so this one is compared relatively.
        assert b["ratio_abs_dev_last"] == pytest.approx(a["ratio_abs_dev_last"], rel=5e-5, abs=1e-6)
    assert rl1[1]["ratio_abs_dev_last"] > 0  # the update really moved the weights
    assert sft2["sft_loss"] == pytest.approx(sft1["sft_loss"], abs=1e-5)
    assert held2 == pytest.approx(held1, abs=1e-5)
    assert s1.keys() == s2.keys()
    # Adam divides by sqrt(v): gradient differences at reduction-order level (1e-7 relative) move
    # weights by a small fraction of one lr-sized step; compare against how far training moved them.
    from transformers import AutoModelForImageTextToText

    init = AutoModelForImageTextToText.from_pretrained(vl_model_dir).state_dict()
    moved = max(float((s1[k] - init[k]).abs().max()) for k in init)
    diff = max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1)
    # Measured with the 2026-12-02 lock: moved 0.021, diff 1.8e-4 (ZeRO-2) / 2.7e-4 (ZeRO-3), 1.3 % of
    # the movement, while every loss above still agrees to 1e-6; a real sharding error moves weights by
    # the order of the movement itself. (The last green CI, on unlocked versions, stayed under 1e-4.)
    assert moved > 1e-3 and diff < 0.05 * moved, (moved, diff)
    assert pub2["time_gather_s"] >= 0


def _wire(group, step: int):
    """The trajectory group a rollout worker would send for `group` (header + its tensors)."""
    from stgrl.transport.wire import Completion, ScoringSample, TrajectoryGroup

    tensors = {k: v.contiguous() for k, v in group.model_inputs.items()}
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    header = TrajectoryGroup(
        group_id=group.group_id, prompt_id=group.group_id, step=step, policy_version=step,
        prompt_len=int(tensors["input_ids"].shape[1]),
        completions=[Completion(token_ids=ids, behaviour_logprobs=lp, text="", finish_reason="stop")
                     for ids, lp in zip(group.completion_ids, group.behaviour_logprobs)],
        sample=ScoringSample(id=group.group_id, task="temporal", completion="", frame_size=[0.0, 0.0]),
        frame_size=[0, 0])
    return header, tensors


def test_groups_through_the_rank_inboxes_train_what_the_same_batch_over_ray_trains(ray_cluster, vl_model_dir, data):
    """Issue 20 #2: the RL driver's path (groups sent to each rank's inbox as planned, the ranks told
    only ids and rewards) takes the very steps `train_rl_batch` takes on the same batches, bit for bit."""
    from stgrl.learner.batch import destinations, plan_ranks
    from stgrl.transport.config import TransportConfig
    from stgrl.transport.trajectory_channel import TrajectorySender

    batches = data[0]
    cfg = _cfg(2)
    ref = start_learner_group(2, vl_model_dir, cfg, seed=0, timeout_s=300)
    try:
        want = [ref.train_rl_batch(b) for b in batches]
        want_state = ref.full_state_dict()
    finally:
        ref.shutdown()
    tcfg = TransportConfig(curve="off")
    group = start_learner_group(2, vl_model_dir, cfg, seed=0, timeout_s=300)
    senders = []
    try:
        senders = [TrajectorySender(a, tcfg) for a in group.open_inboxes(tcfg)]
        got = []
        for step, batch in enumerate(batches):
            plan = plan_ranks([g.group_id for g in batch.groups], 2, cfg.num_minibatches)
            for g in batch.groups:
                senders[destinations(plan)[g.group_id]].send(*_wire(g, step))
            for s in senders:
                s.flush()
            got.append(group.train_rl_step(step, plan, {g.group_id: g.rewards for g in batch.groups}))
        state = group.full_state_dict()
        stats = group.inbox_stats()
    finally:
        for s in senders:
            s.close()
        group.close_inboxes()
        group.shutdown()
    assert [r["taken"] for r in stats] == [4.0, 4.0] and all(r["tensor_bytes"] > 0 for r in stats)
    for a, b in zip(want, got):
        assert b["num_sequences"] == a["num_sequences"] == 16
        assert b["loss"] == a["loss"] and b["ratio_abs_dev_last"] == a["ratio_abs_dev_last"]
    assert state.keys() == want_state.keys()
    assert all(torch.equal(state[k], want_state[k]) for k in state), "weights differ from the batch over Ray"
