"""Shard metrics: pure bookkeeping (`ShardStats`) and its export through `ray.util.metrics`.

Design names (docs/design.md §11) use `/`; Prometheus names cannot, and `ray.util.metrics` silently discards
a metric with an invalid name. `prometheus_name` is the one mapping:

| design name | Prometheus name | kind |
|---|---|---|
| `reward/requests_per_s` | `reward_requests_per_s` | gauge (requests in the last `window_s`) |
| `reward/latency_s` | `reward_latency_s` | histogram (shard handling time per request) |
| `reward/requests_total` | `reward_requests_total` | counter |
| `reward/samples_total` | `reward_samples_total` | counter |

Every exported series carries the tag `shard`. These names are the shards' alone (`SHARD_METRICS`):
the driver exports none of them to Prometheus, so a dashboard query never mixes two sources with
different tags or histogram buckets. Component means are the driver's (the step's batch means);
a shard keeps its own in `ShardStats.snapshot()` only.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque

from stgrl.reward_service.types import COMPONENTS, Score

SHARD_METRICS: tuple[str, ...] = ("reward/requests_per_s", "reward/latency_s", "reward/requests_total",
                                  "reward/samples_total")
"""Design names the reward shards own in Prometheus (the driver registers none of them)."""
LATENCY_BOUNDARIES_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(design_name: str) -> str:
    """`reward/latency_s` -> `reward_latency_s`: every character outside `[a-zA-Z0-9_]` becomes `_`,
    and a leading digit gets a `_` prefix."""
    name = _INVALID.sub("_", design_name)
    return f"_{name}" if name[:1].isdigit() else name


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list; 0 for an empty list."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


class ShardStats:
    """Thread-safe counters of one shard: the serving thread records, `snapshot` reads."""

    def __init__(self, window_s: float = 10.0, keep_latencies: int = 4096) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._recent: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=keep_latencies)
        self.requests = 0
        self.samples = 0
        self.errors = 0
        self.handler_errors = 0
        """Requests whose handling raised (answered with an error reply; the shard kept serving)."""
        self._sums = dict.fromkeys(COMPONENTS, 0.0)
        self._counts = dict.fromkeys(COMPONENTS, 0)

    def record(self, latency_s: float, scores: list[Score]) -> None:
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self.samples += len(scores)
            self._latencies.append(latency_s)
            self._recent.append(now)
            self._trim(now)
            for s in scores:
                if s.error is not None:
                    self.errors += 1
                for name, v in s.components.items():
                    self._sums[name] += v
                    self._counts[name] += 1

    def count_handler_error(self) -> None:
        with self._lock:
            self.handler_errors += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] < now - self.window_s:
            self._recent.popleft()

    def requests_per_s(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            span = min(self.window_s, max(now - self._started, 1e-9))
            return len(self._recent) / span

    def component_means(self) -> dict[str, float]:
        with self._lock:
            return {n: self._sums[n] / self._counts[n] for n in COMPONENTS if self._counts[n]}

    def snapshot(self) -> dict:
        """Plain-data view: counts, requests/s, latency p50/p99/max (recent requests), component means."""
        rps = self.requests_per_s()
        means = self.component_means()
        with self._lock:
            lat = sorted(self._latencies)
            return {
                "requests": self.requests,
                "samples": self.samples,
                "errors": self.errors,
                "handler_errors": self.handler_errors,
                "requests_per_s": rps,
                "latency_s": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                              "max": lat[-1] if lat else 0.0, "count": len(lat)},
                "components": means,
            }


class RayMetricsExporter:
    """Pushes a shard's stats to Prometheus through `ray.util.metrics` (only inside a Ray worker).

    The request-rate gauge is set again every `refresh_s` from the shard's stats (it decays to 0
    while the shard idles): Ray drops a gauge a report interval or two after it was last set, and
    between the steps of a real model a shard gets no request for minutes (`refresh_s=0`: off).
    """

    def __init__(self, shard: int, refresh_s: float = 4.0) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = ("shard",)
        self._tags = {"shard": str(shard)}
        self.rps = Gauge(prometheus_name("reward/requests_per_s"), "reward requests per second", tags)
        self.latency = Histogram(prometheus_name("reward/latency_s"), "shard handling time per request",
                                 LATENCY_BOUNDARIES_S, tags)
        self.requests = Counter(prometheus_name("reward/requests_total"), "reward requests", tags)
        self.samples = Counter(prometheus_name("reward/samples_total"), "reward samples", tags)
        self._stats: ShardStats | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh_s > 0:
            self._thread = threading.Thread(target=self._keep, args=(refresh_s,), name="reward-gauges", daemon=True)
            self._thread.start()

    def _keep(self, refresh_s: float) -> None:
        while not self._stop.wait(refresh_s):
            stats = self._stats
            if stats is not None:
                self.rps.set(stats.requests_per_s(), self._tags)

    def close(self) -> None:
        """Stop refreshing the request-rate gauge."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def export(self, stats: ShardStats, latency_s: float, n_samples: int) -> None:
        self._stats = stats
        self.latency.observe(latency_s, self._tags)
        self.requests.inc(1, self._tags)
        if n_samples > 0:
            self.samples.inc(n_samples, self._tags)
        self.rps.set(stats.requests_per_s(), self._tags)

    @staticmethod
    def registered() -> tuple[str, ...]:
        """Design names this exporter registers (all of `SHARD_METRICS`)."""
        return SHARD_METRICS
