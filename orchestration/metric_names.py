"""The canonical metric names of docs/design.md §11 (pure Python, no Ray import).

Code registers each metric with ``ray.util.metrics`` under its canonical name (docs/design.md §11) with ``/`` replaced by
``_`` (``rollout/tokens_per_s`` -> ``rollout_tokens_per_s``); Ray exports it to Prometheus with a
``ray_`` prefix (``ray_rollout_tokens_per_s``), which is what :func:`prometheus_name` returns and
what ``k8s/grafana-dashboard.json`` queries. ``reward/latency_s`` is a histogram (exported as
``_bucket``/``_sum``/``_count``); ``pipeline/idle_ratio`` carries a ``pool`` tag (``rollout`` or
``learner``). Counters, when added, end in ``_total``. Each name has one exporting owner
(`DRIVER_OWNED`, `SHARD_OWNED`); ``metrics.jsonl`` holds the driver's value of every name.
"""

from __future__ import annotations

from stgrl.reward_service.metrics import SHARD_METRICS
from stgrl.reward_service.types import COMPONENTS

REWARD_COMPONENTS: tuple[str, ...] = COMPONENTS
"""The reward components (one definition: `stgrl.reward_service.types.COMPONENTS`)."""

METRIC_NAMES: tuple[str, ...] = (
    "rollout/tokens_per_s",
    "rollout/samples_per_s",
    "rollout/queue_depth",
    "reward/requests_per_s",
    "reward/latency_s",
    *(f"reward/{component}" for component in REWARD_COMPONENTS),
    "learner/step_time_s",
    "learner/tokens_per_s",
    "learner/clip_fraction",
    "learner/is_weight",
    "weights/sync_time_s",
    "weights/version_lag",
    "pipeline/idle_ratio",
    "train/reward_mean",
    "train/zero_std_groups",
)


SHARD_OWNED: tuple[str, ...] = tuple(n for n in METRIC_NAMES if n in SHARD_METRICS)
"""docs/design.md §11 names the reward shards export (tag `shard`): the service's request rate and latency."""

DRIVER_OWNED: tuple[str, ...] = tuple(n for n in METRIC_NAMES if n not in SHARD_METRICS)
"""docs/design.md §11 names the RL driver exports. One owner per name: a name registered by two processes
with different tags or buckets makes every dashboard sum mix them."""


def prometheus_name(name: str) -> str:
    """The name Prometheus sees for canonical metric ``name``: ``ray_`` + ``name`` with ``/`` -> ``_``."""
    return "ray_" + name.replace("/", "_")
