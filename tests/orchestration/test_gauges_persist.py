"""The driver's and the reward shards' gauges stay on Ray's metrics endpoint between steps (issue 19, found by the dashboard
test on the cluster in a box): Ray exports a gauge only for a report interval or two after it was
set, so a gauge set once per step vanished whenever a step took longer than that, and panels went
empty. `PrometheusExporter` sets every gauge's last value again until it is closed.

A real Ray node with a known metrics port, in a subprocess (its own Ray, report interval 1 s): one
export, then the endpoint is read well after Ray would have dropped a gauge set once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.timeout(240)

SCRIPT = r"""
import json, sys, time, urllib.request
import ray
from stgrl.orchestration.metrics import PrometheusExporter
from stgrl.reward_service.metrics import RayMetricsExporter, ShardStats
port, refresh = int(sys.argv[1]), float(sys.argv[2])
ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, _temp_dir=sys.argv[3],
         _node_ip_address="127.0.0.1", configure_logging=False)
exporter = PrometheusExporter(refresh_s=refresh)
exporter.export({"train/reward_mean": 0.25, "pipeline/idle_ratio/rollout": 0.5})
shard = RayMetricsExporter(0, refresh_s=refresh)  # a reward shard's, which then idles
stats = ShardStats()
stats.record(0.01, [])
shard.export(stats, 0.01, 0)
seen = []
for _ in range(12):  # 12 s: six report intervals after the one export
    time.sleep(1.0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        continue
    seen.append(sorted({line.split("{")[0] for line in text.splitlines()
                        if line.startswith(("ray_train_reward_mean", "ray_pipeline_idle_ratio",
                                            "ray_reward_requests_per_s"))}))
exporter.close()
shard.close()
ray.shutdown()
print("SEEN " + json.dumps(seen))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seen(refresh_s: float) -> list[list[str]]:
    base = tempfile.mkdtemp(prefix="stgrl-g-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": base, "RAY_metrics_report_interval_ms": "1000"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(_free_port()), str(refresh_s), f"{base}/ray"],
                         env=env, capture_output=True, text=True, timeout=200)
    line = next((x for x in out.stdout.splitlines() if x.startswith("SEEN ")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(line.removeprefix("SEEN "))


def test_a_gauge_set_once_stays_exported_until_close():
    both = ["ray_pipeline_idle_ratio", "ray_reward_requests_per_s", "ray_train_reward_mean"]
    kept = _seen(refresh_s=1.0)
    assert kept and kept[-1] == both, kept
    # the same without the keeper: Ray drops the gauges (what the cluster test saw, panels empty)
    dropped = _seen(refresh_s=0)
    assert dropped and dropped[-1] == [], dropped
