"""RolloutWorker on local Ray with the real channels: it pulls a weight version, produces trajectory
groups stamped with it, switches when the next version is published, and every trajectory's
behaviour log-probs match a teacher-forced pass under exactly the version it carries."""

from __future__ import annotations

import msgspec
import pytest
import torch

from stgrl.actors.rollout_worker import RolloutWorkerSpec, group_seed, rollout_worker_actor
from stgrl.learner.logprobs import completion_logprobs
from stgrl.rollout.config import RolloutConfig
from stgrl.transport.config import TransportConfig
from stgrl.transport.trajectory_channel import TrajectoryReceiver
from stgrl.transport.weight_channel import WeightPublisher

pytestmark = pytest.mark.timeout(420)


def _max_error(model, group, tensors) -> float:
    comps = [c.token_ids for c in group.completions]
    with torch.no_grad():
        ref, _ = completion_logprobs(model, tensors, comps, pad_id=0, temperature=1.0)
    return max((ref[i, :len(c.token_ids)] - torch.tensor(c.behaviour_logprobs)).abs().max().item()
               for i, c in enumerate(group.completions))


def _receive(receiver, n):
    got = []
    for _ in range(n):
        group, tensors = receiver.recv(timeout=120)
        receiver.commit([group.group_id])
        got.append((group, {k: v.clone() for k, v in tensors.items()}))
    return got


def test_worker_generates_per_version_and_switches(ray_cluster, tiny_vl_dir, shapes_dataset, prepared_prompts):
    import ray
    from transformers import AutoModelForImageTextToText

    root, records, data_cfg = shapes_dataset
    transport = TransportConfig(timeout_s=60.0)
    publisher = WeightPublisher(transport)
    receiver = TrajectoryReceiver(transport)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir).eval()
    v1 = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    v2 = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in v1.items()}
    spec = RolloutWorkerSpec(
        worker_id="w0", model_path=str(tiny_vl_dir), dataset_dir=str(root), weights_address=publisher.address,
        trajectories_address=receiver.address, transport=transport, data=data_cfg, seed=1,
        rollout=RolloutConfig(group_size=3, max_new_tokens=12, temperature=1.0),
    )
    worker = rollout_worker_actor(spec)
    try:
        assert ray.get(worker.version.remote(), timeout=180) == -1
        assert ray.get(worker.sync_weights.remote(30.0), timeout=60) == -1, "nothing published yet"

        publisher.publish(1, v1)
        assert ray.get(worker.sync_weights.remote(30.0), timeout=60) == 1
        # generate returns once its groups are acknowledged, so receive while it runs (as the driver does)
        missing = msgspec.structs.replace(records[2], id="no-media", video_path="videos/not-there.mp4")
        ref = worker.generate.remote([records[0], missing, records[1]], 0)
        first = _receive(receiver, 2)
        assert ray.get(ref, timeout=120) == 2, "a record whose media is missing is skipped, not fatal"

        publisher.publish(2, v2)
        assert ray.get(worker.version.remote(), timeout=30) == 1, "weights change only in sync_weights"
        # min_version makes the worker pull (and wait for) the new version before generating
        ref = worker.generate.remote([msgspec.to_builtins(records[0])], 1, 2)
        second = _receive(receiver, 1)
        assert ray.get(ref, timeout=120) == 1
        assert ray.get(worker.version.remote(), timeout=30) == 2
        assert publisher.subscriber_versions() == {"w0": 2}
        stats = ray.get(worker.stats.remote(), timeout=30)
    finally:
        ray.kill(worker)
        publisher.close()
        receiver.close()

    assert [g.policy_version for g, _ in first] == [1, 1] and second[0][0].policy_version == 2
    assert {g.group_id for g, _ in first} == {f"0/{records[0].id}", f"0/{records[1].id}"}
    assert stats["groups"] == 3 and stats["samples"] == 9 and stats["skipped"] == 1 and stats["tokens_per_s"] > 0

    by_id = {p.record.id: p for p in prepared_prompts}
    for group, tensors in first + second:
        prepared = by_id[group.prompt_id]
        # the exact model tensors the policy saw travel with the group
        assert set(tensors) == set(prepared.model_inputs)
        for k, v in prepared.model_inputs.items():
            assert torch.equal(tensors[k], v), k
        assert group.prompt_len == prepared.model_inputs["input_ids"].shape[1]
        assert group.frame_size == list(prepared.frame_size) == group.sample.frame_size
        assert group.sample.id == prepared.record.id and group.sample.answer == prepared.record.answer
        assert len(group.completions) == 3
        assert group.timings["generate_s"] > 0

    # each group's log-probs are those of the version it carries, and not of the other one
    model.load_state_dict(v1)
    assert all(_max_error(model, g, t) < 1e-4 for g, t in first)
    assert _max_error(model, *second[0]) > 1e-3
    model.load_state_dict(v2)
    assert _max_error(model, *second[0]) < 1e-4
    assert all(_max_error(model, g, t) > 1e-3 for g, t in first)


def test_group_seed_is_deterministic_and_distinct():
    assert group_seed(0, 3, "a") == group_seed(0, 3, "a")
    assert len({group_seed(0, 3, "a"), group_seed(0, 4, "a"), group_seed(0, 3, "b"), group_seed(1, 3, "a")}) == 4
