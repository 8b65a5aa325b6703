"""The sharded service on the session's real local Ray cluster: kill a shard mid-stream, lose nothing."""

from __future__ import annotations

import threading
import time

import pytest

from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.rewards import score_batch
from stgrl.reward_service.types import COMPONENTS

CFG = RewardConfig(batch_size=16, deadline_s=2.0)


@pytest.mark.timeout(120)
def test_kill_one_shard_mid_stream_every_request_answered_once(ray_cluster, samples_of):
    from stgrl.reward_service.service import start_reward_service, stop_reward_service

    ray = ray_cluster
    handles, client = start_reward_service(2, CFG, num_cpus=0.5)
    first_call_done = threading.Event()
    killed = threading.Event()

    def killer() -> None:
        first_call_done.wait(60)
        time.sleep(0.05)
        ray.kill(handles[0])
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    try:
        answered: list[str] = []
        step = 0
        after_kill = 0
        while after_kill < 4:  # keep streaming through the kill and a few calls after it
            after_kill += killed.is_set()
            batch = samples_of(96, seed=step, prefix=f"step{step}-")
            got = client.score(batch, step, 40)
            assert [s.id for s in got] == [s.id for s in batch]
            assert got == score_batch(batch, step, 40, CFG)  # the same answers as the pure functions
            answered += [s.id for s in got]
            first_call_done.set()
            step += 1
            assert step < 200, "the kill never happened"
        assert len(answered) == len(set(answered)) == 96 * step  # every request exactly once
        # the client learns the shard is dead from a missed deadline, then Ray (its address() lookup
        # fails) and drops it; ray.kill is asynchronous, so this may take a few more requests
        give_up = time.monotonic() + 60
        while client.live_shards != 1 and time.monotonic() < give_up:
            assert len(client.score(samples_of(8, seed=step, prefix="probe-"), 0, 40)) == 8
            time.sleep(0.1)
        assert client.live_shards == 1 and client.retries >= 1
        stats = ray.get(handles[1].stats.remote(), timeout=30)
        assert stats["samples"] > 0 and stats["requests"] > 0 and stats["requests_per_s"] > 0
        assert 0 < stats["latency_s"]["p50"] <= stats["latency_s"]["p99"]
        assert set(stats["components"]) == set(COMPONENTS)
        # after the kill the survivor alone keeps answering
        got = client.score(samples_of(40, seed=999, prefix="after-"), 5, 40)
        assert len({s.id for s in got}) == 40 and all(s.error is None for s in got)
    finally:
        stop_reward_service(handles, client)


@pytest.mark.timeout(150)
def test_a_crashed_shard_is_restarted_by_ray_and_found_at_its_new_address(ray_cluster, samples_of):
    from stgrl.reward_service.service import start_reward_service, stop_reward_service

    ray = ray_cluster
    cfg = RewardConfig(batch_size=16, deadline_s=1.0)
    handles, client = start_reward_service(1, cfg, num_cpus=0.5)
    try:
        before = ray.get(handles[0].address.remote(), timeout=30)
        ray.kill(handles[0], no_restart=False)  # a crash: Ray restarts the actor (max_restarts)
        after, give_up = before, time.monotonic() + 90
        while after == before and time.monotonic() < give_up:
            try:
                after = ray.get(handles[0].address.remote(), timeout=30)
            except ray.exceptions.RayActorError:  # still restarting
                time.sleep(0.2)
        assert after != before, "Ray did not restart the shard"
        batch = samples_of(40, seed=5, prefix="restart-")
        # the client still knows the old port: deadline, look-up, reconnect, retry
        got = client.score(batch, 2, 40)
        assert got == score_batch(batch, 2, 40, cfg)
        assert client.retries >= 1 and client.live_shards == 1
    finally:
        stop_reward_service(handles, client)
