"""Elastic rollout on a real multi-node Ray cluster (issue 11): `ray start --head` plus `ray start`
worker processes with the pool resources, RL running across them, a rollout node added mid-run
(picked up, pulls the latest weights, gets prompts) and removed mid-run (its prompts re-queued);
nothing lost, and the learner and reward pools never restart."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config
from stgrl.orchestration.ledger import check_ledger

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start --block` process group; killing the group is a node leaving the cluster."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.log.close()


def _rollout_capacity(address: str, env: dict[str, str]) -> float:
    code = (f"import ray, json; ray.init(address={address!r}, logging_level='ERROR');"
            "print(json.dumps(ray.cluster_resources().get('rollout', 0)))")
    out = subprocess.run([sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1.0


def _wait_for(pred, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_rollout_node_joins_and_leaves_mid_run(tmp_path):
    from stgrl.rollout.data.synth import generate_split
    from stgrl.rollout.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "model", seed=0)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    generate_split(tmp_path / "data", "train", 24, seed=2, difficulty="easy", data_cfg=cfg.data, progress=False)

    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"stgrl-mn-{os.getpid()}"  # short: unix socket paths
    (base / "home").mkdir(parents=True, exist_ok=True)
    # Token auth on, explicitly: one fresh token shared by every node and the driver (whatever the
    # test process's own environment says about auth).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(base / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[Node] = []
    driver = None
    try:
        nodes.append(Node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "4",
                           "--resources", json.dumps({"reward": 2, "learner": 1}), "--include-dashboard", "false",
                           "--temp-dir", str(base / "ray")], env, tmp_path / "head.log"))
        node_args = ["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                     "--resources", json.dumps({"rollout": 1})]
        nodes.append(Node(node_args, env, tmp_path / "rollout-a.log"))
        _wait_for(lambda: _rollout_capacity(address, env) == 1.0, "the first rollout node")

        run_dir = tmp_path / "run"
        cmd = [sys.executable, "-m", "stgrl", "rl", "--config", str(REPO / "configs" / "demo.yaml"),
               "--run-dir", str(run_dir), f"model.path={tmp_path / 'model'}",
               f"data.train={tmp_path / 'data' / 'train.jsonl'}", f"data.eval={tmp_path / 'data' / 'train.jsonl'}",
               "metrics.wandb=false", "rollout.prompts_per_step=4", "rollout.num_workers=1", "rollout.elastic=true",
               "rollout.elastic_check_s=1", "reward.num_shards=2", "learner.num_minibatches=2",
               "rollout.max_new_tokens=32", "run.total_steps=40", "run.mode=async", "run.max_staleness=1"]
        driver = subprocess.Popen(cmd, env=dict(env, RAY_ADDRESS=address), stdout=(tmp_path / "driver.log").open("w"),
                                  stderr=subprocess.STDOUT)
        ledger = run_dir / "ledger.jsonl"

        def steps_done() -> int:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            return len(ledger.read_text().splitlines()) if ledger.exists() else 0

        _wait_for(lambda: steps_done() >= 1, "the first RL step", timeout=400)
        nodes.append(Node(node_args, env, tmp_path / "rollout-b.log"))  # a node joins mid-run
        _wait_for(lambda: "rollout worker 1 joined the pool" in (tmp_path / "driver.log").read_text(),
                  "the new node's worker to be picked up and loaded")
        joined_at = steps_done()
        _wait_for(lambda: steps_done() >= joined_at + 2, "two steps with the grown pool", timeout=400)
        nodes.pop().kill()  # ... and leaves
        left_at = steps_done()
        assert left_at < 38, "the run ended before the node could leave mid-run"
        driver.wait(timeout=600)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-3000:]
        entries = check_ledger(ledger, expected_steps=40)
        assert all(sorted(e.trained) == sorted(e.assigned) for e in entries)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        # the joined worker took prompts (two live workers shared steps), then the pool shrank back
        assert any(r["rollout/live_workers"] == 2 for r in rows)
        assert rows[-1]["rollout/live_workers"] == 1, "the departed node's worker must leave the pool"
        # ... and it generated with the latest weights it pulled on joining: the staleness bound held
        assert all(r["weights/version_lag"] <= 1 for r in rows)
        # the stage's log file holds every line (the console only the narrative): the learner came up once
        stage_log = (run_dir / "logs" / "rl.log").read_text(errors="replace")
        assert "reward service up" in log and stage_log.count("learner group up") == 1
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in reversed(nodes):
            node.kill()
