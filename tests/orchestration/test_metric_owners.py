"""One owner per Prometheus metric name (issue 19): the driver and every reward shard used to
register `reward_requests_per_s`, `reward_latency_s` and `reward_<component>` with different tags and
histogram buckets, so each dashboard sum mixed two sources. And the rollout pool's rates count the
workers that are live, not every worker an elastic pool ever started."""

from __future__ import annotations

import pytest

from stgrl.orchestration.metric_names import DRIVER_OWNED, METRIC_NAMES, REWARD_COMPONENTS, SHARD_OWNED
from stgrl.orchestration.step_metrics import pool_rate

pytestmark = pytest.mark.timeout(120)


def test_every_design_metric_has_exactly_one_owner():
    assert not set(DRIVER_OWNED) & set(SHARD_OWNED)
    assert set(DRIVER_OWNED) | set(SHARD_OWNED) == set(METRIC_NAMES)
    assert set(SHARD_OWNED) == {"reward/requests_per_s", "reward/latency_s"}
    # the dashboard's "batch means" panel reads the step means the driver computes
    assert {f"reward/{c}" for c in REWARD_COMPONENTS} <= set(DRIVER_OWNED)


def test_the_exporters_register_disjoint_names(ray_cluster):
    """What each process really registers with ray.util.metrics (driver exporter, shard exporter)."""
    from stgrl.orchestration.metrics import PrometheusExporter
    from stgrl.reward_service.metrics import RayMetricsExporter

    driver = set(PrometheusExporter().registered())
    shard_exporter = RayMetricsExporter(0)
    shard = set(shard_exporter.registered())
    assert driver == set(DRIVER_OWNED)
    assert set(SHARD_OWNED) <= shard
    assert not driver & shard, f"registered by both driver and shards: {sorted(driver & shard)}"
    # the shard exporter holds no per-component gauges any more (the driver's are the batch means)
    assert not [a for a in vars(shard_exporter) if a == "components"]


def test_rollout_rate_divides_by_live_workers_only():
    # 2 live workers, 400 tokens, 20 s of generate time summed over them: 10 s of pool wall time
    assert pool_rate(400, 20.0, 2) == pytest.approx(40.0)
    # the same work reported by a pool whose list also holds 3 dead workers' slots: still 40/s
    # (dividing by all 5 ever started gave 400 / (20 / 5) = 100: an inflated, wrong rate)
    assert pool_rate(400, 20.0, live_workers=2) != pytest.approx(400 / (20.0 / 5))
    assert pool_rate(0, 0.0, 0) == 0.0
