"""Where metrics go: ``metrics.jsonl`` in the run directory (always), wandb (offline by default) and
Prometheus through ``ray.util.metrics`` (when running inside a Ray cluster).

The orchestrator calls :meth:`MetricsSink.log` once per step with a flat ``{name: value}`` dict whose
keys are docs/design.md §11 names (``rollout/tokens_per_s`` ...). Values that are not finite numbers are
dropped from Prometheus and wandb but kept as ``null`` in the JSONL, so a NaN is visible, not lost.
Secrets never reach the run directory: the wandb key is read by wandb from its own environment.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from stgrl.orchestration.metric_names import DRIVER_OWNED

log = logging.getLogger(__name__)

# docs/design.md §11 metrics that carry a tag instead of being separate names.
TAGGED = {"pipeline/idle_ratio": ("pool",)}
HISTOGRAMS: dict[str, list[float]] = {}  # the one docs/design.md §11 histogram, reward/latency_s, is the shards'


def ray_metric_name(name: str) -> str:
    """Prometheus-safe name registered with Ray (Ray adds the ``ray_`` prefix on export)."""
    return name.replace("/", "_")


class PrometheusExporter:
    """Registers the driver's docs/design.md §11 metrics (`DRIVER_OWNED`) with ``ray.util.metrics`` and sets
    gauges from a step dict. The reward shards' names (`SHARD_OWNED`) are left to the shards: the
    driver's per-step values of those stay in metrics.jsonl.

    Gauges keep their last value: Ray exports a gauge only for a report interval or two after it
    was set (10 s by default), so a gauge set once per step disappeared from Prometheus whenever a
    step took longer than that (every step of a real model; a component absent from a step's batch
    at once), and dashboard panels went empty. A daemon thread sets every gauge's last value again
    every `refresh_s` until `close()`; `refresh_s=0` turns that off.
    """

    def __init__(self, refresh_s: float = 4.0) -> None:
        from ray.util import metrics

        self._gauges: dict[str, Any] = {}
        self._hists: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh_s > 0:
            self._thread = threading.Thread(target=self._keep, args=(refresh_s,), name="stgrl-gauges", daemon=True)
            self._thread.start()
        for name in DRIVER_OWNED:
            desc = f"stgrl {name}"
            if name in HISTOGRAMS:
                self._hists[name] = metrics.Histogram(ray_metric_name(name), description=desc,
                                                      boundaries=HISTOGRAMS[name])
            else:
                self._gauges[name] = metrics.Gauge(ray_metric_name(name), description=desc,
                                                   tag_keys=TAGGED.get(name, ()))

    def registered(self) -> tuple[str, ...]:
        """Design names registered by this exporter (`DRIVER_OWNED`)."""
        return (*self._gauges, *self._hists)

    def _set(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        self._gauges[name].set(value, tags=tags)
        with self._lock:
            self._last[(name, tuple(sorted((tags or {}).items())))] = value

    def _keep(self, refresh_s: float) -> None:
        while not self._stop.wait(refresh_s):
            with self._lock:
                last = list(self._last.items())
            for (name, tags), value in last:
                try:
                    self._gauges[name].set(value, tags=dict(tags) or None)
                except Exception as e:  # metrics must never take a run down
                    log.debug("re-setting gauge %s failed: %s", name, e)

    def export(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            if key.startswith("pipeline/idle_ratio/"):
                self._set("pipeline/idle_ratio", value, {"pool": key.rsplit("/", 1)[1]})
            elif key in self._hists:
                self._hists[key].observe(value)
            elif key in self._gauges and key not in TAGGED:
                self._set(key, value)

    def close(self) -> None:
        """Stop re-setting the gauges (they then expire from the metrics endpoint)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class MetricsSink:
    """Fan-out of per-step metrics to JSONL, wandb and Prometheus."""

    def __init__(self, run_dir: Path, *, wandb_enabled: bool, wandb_mode: str, wandb_project: str,
                 wandb_run_name: str | None, prometheus: bool, config_dict: dict | None = None,
                 stage: str = "rl") -> None:
        self.path = Path(run_dir) / f"metrics_{stage}.jsonl" if stage != "rl" else Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a")
        self._wandb = None
        self._prom = None
        if wandb_enabled and wandb_mode != "disabled":
            try:
                import wandb

                self._wandb = wandb.init(
                    project=wandb_project, name=wandb_run_name or f"{Path(run_dir).name}-{stage}",
                    dir=str(run_dir), mode=wandb_mode, config=config_dict or {}, reinit="finish_previous",
                )
            except Exception as e:  # wandb must never take a training run down
                log.warning("wandb disabled: %s", e)
        if prometheus:
            try:
                import ray

                if ray.is_initialized():
                    self._prom = PrometheusExporter()
            except Exception as e:
                log.warning("Prometheus metrics disabled: %s", e)

    def log(self, step: int, values: dict[str, float], **extra: Any) -> None:
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in values.items()}
        row = {"step": step, "time": time.time(), **extra, **clean}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        finite = {k: v for k, v in clean.items() if v is not None}
        if self._wandb is not None:
            self._wandb.log(finite, step=step)
        if self._prom is not None:
            self._prom.export(finite)

    def close(self) -> None:
        self._fh.close()
        if self._prom is not None:
            self._prom.close()
            self._prom = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict]:
    """Load a metrics JSONL file (skipping a torn last line of a killed run)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def drop_rows_after(path: str | Path, last_kept_step: int) -> int:
    """On resume, forget the rows a killed run logged past its checkpoint (those steps are redone),
    so the file holds each step once: keeps rows with ``step <= last_kept_step`` (and drops a torn
    last line). Returns how many rows were dropped; a missing file is left missing."""
    p = Path(path)
    if not p.exists():
        return 0
    kept, dropped = [], 0
    for line in p.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= last_kept_step
        except (json.JSONDecodeError, KeyError, TypeError):
            keep = False  # a torn last line of the killed run
        if keep:
            kept.append(line)
        else:
            dropped += 1
    p.write_text("".join(line + "\n" for line in kept))
    return dropped
