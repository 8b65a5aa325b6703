"""Hang safety (issue 12, part 3): every cross-actor wait ends, with an error naming the peer and what
was awaited.

Proven elsewhere (docs/reliability.md): weight subscriber to a silent publisher, trajectory receiver
with no sender, trajectory sender to nobody / to a full window (tests/transport), hung reward shards
(tests/rewards/test_service_local.py). Here: the reward client when every shard is unreachable or
dead, a learner placement that can never be satisfied, and a scan that every `ray.get`/`ray.wait` in
the control plane is bounded.
"""

from __future__ import annotations

import ast
import socket
import time
from pathlib import Path

import pytest

from stgrl.reward_service.client import RewardClient, RewardServiceError
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.types import ScoringSample

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
CFG = RewardConfig(batch_size=4, deadline_s=0.3)


def _samples(n: int) -> list[ScoringSample]:
    return [ScoringSample(id=f"s{i}", task="general", completion="<think>x</think><answer>A</answer>",
                          answer="A", options=["A. a", "B. b"], frame_size=[1.0, 1.0]) for i in range(n)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reward_client_with_no_shard_listening_fails_in_bounded_time_naming_them():
    addresses = [f"tcp://127.0.0.1:{_closed_port()}" for _ in range(2)]
    with RewardClient(addresses, CFG) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServiceError, match="failed 4 times") as err:
            client.score(_samples(6), 0, 10)
        elapsed = time.monotonic() - t0
    # max_attempts (4) deadlines of 0.3 s, shards resting one deadline between tries
    assert elapsed < 10 * CFG.deadline_s + 2.0, elapsed
    for addr in addresses:
        assert addr in str(err.value), (addr, str(err.value))
    assert "missed its deadline" in str(err.value)


def test_reward_client_with_dead_shard_actors_fails_naming_them(ray_cluster):
    import psutil
    import ray

    from stgrl.reward_service.service import start_reward_service

    handles, client = start_reward_service(2, CFG, num_cpus=0, start_timeout_s=60)
    try:
        addresses = [link.address for link in client._links]
        for h in handles:
            ray.kill(h, no_restart=True)
        for h in handles:  # wait until Ray reports them dead, so the outcome does not race the kill
            deadline = time.monotonic() + 30
            while True:
                try:
                    ray.get(h.address.remote(), timeout=5)
                except ray.exceptions.ActorDiedError:
                    break
                except ray.exceptions.RayActorError:
                    pass
                assert time.monotonic() < deadline, "killed shard never reported dead"
                time.sleep(0.1)
        # ray.kill is asynchronous: a process Ray already reports dead can go on serving its socket for
        # a while (answers are pure, so that is harmless). Wait until nobody listens any more.
        ports = {int(a.rsplit(":", 1)[1]) for a in addresses}
        deadline = time.monotonic() + 30
        while any(c.status == psutil.CONN_LISTEN and c.laddr.port in ports for c in psutil.net_connections("tcp")):
            assert time.monotonic() < deadline, "killed shard processes still listen"
            time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(RewardServiceError) as err:
            client.score(_samples(6), 0, 10)
        assert time.monotonic() - t0 < 20
        msg = str(err.value)
        assert "every reward shard is dead" in msg or "failed" in msg, msg
        for addr in addresses:
            assert addr in msg, (addr, msg)
    finally:
        client.close()


def test_learner_placement_that_cannot_be_met_times_out_naming_it_and_is_released(ray_cluster):
    import ray
    from ray.util import placement_group_table

    from stgrl.learner.actor import start_learner_group
    from stgrl.learner.config import LearnerConfig

    too_many = int(ray.cluster_resources()["learner"]) + 1
    before = {pid for pid, pg in placement_group_table().items() if pg["state"] != "REMOVED"}
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"learner placement group of {too_many} rank\(s\).*within 2s"):
        start_learner_group(too_many, REPO / "no-model-needed", LearnerConfig(), timeout_s=2.0)
    assert time.monotonic() - t0 < 15
    leaked = {pid for pid, pg in placement_group_table().items() if pg["state"] != "REMOVED"} - before
    assert not leaked, f"the unplaceable group was left pending: {leaked}"


# --- static: every Ray wait in the control plane is bounded ----------------------------------------

SCANNED = ("orchestration", "transport", "actors", "reward_service", "learner", "rollout")


def unbounded_ray_waits(source: str) -> list[int]:
    """Line numbers of `ray.get(...)` / `ray.wait(...)` calls without a `timeout=`, except a
    `ray.get` of a ref the same function has just checked with `ray.wait(..., timeout=0)` (ready)."""
    tree = ast.parse(source)
    bad: list[int] = []
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    owner: dict[int, ast.AST] = {}
    for f in funcs:
        for n in ast.walk(f):
            owner[id(n)] = f  # innermost wins: ast.walk visits outer functions first
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"
                and node.func.attr in ("get", "wait")):
            continue
        if any(k.arg == "timeout" for k in node.keywords):
            continue
        f = owner.get(id(node))
        ready_checked = f is not None and node.func.attr == "get" and any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "wait"
            and any(k.arg == "timeout" and isinstance(k.value, ast.Constant) and k.value.value == 0
                    for k in n.keywords)
            for n in ast.walk(f))
        if not ready_checked:
            bad.append(node.lineno)
    return bad


def test_the_scan_flags_an_unbounded_wait():
    assert unbounded_ray_waits("import ray\ndef f(r):\n    return ray.get(r)\n") == [3]
    assert unbounded_ray_waits("import ray\ndef f(r):\n    return ray.wait([r])\n") == [3]
    assert unbounded_ray_waits("import ray\ndef f(r):\n    return ray.get(r, timeout=5)\n") == []
    ok = "import ray\ndef f(r):\n    done, _ = ray.wait([r], timeout=0)\n    return ray.get(r) if done else None\n"
    assert unbounded_ray_waits(ok) == []


def test_every_ray_get_and_wait_in_the_control_plane_is_bounded():
    files = sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py"))
    users = [p for p in files if "ray.get(" in p.read_text()]
    assert len(users) >= 3, users  # the scan really looks at the code that waits on actors
    bad = {str(p.relative_to(REPO)): lines for p in files if (lines := unbounded_ray_waits(p.read_text()))}
    assert not bad, f"ray.get/ray.wait without a timeout (can hang forever): {bad}"
