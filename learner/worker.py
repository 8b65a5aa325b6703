"""The per-rank learner logic behind the Ray actor, and an in-process single-rank twin.

:class:`LearnerWorker` holds one rank's engine and turns shards into steps; every collective method
must be called on every rank in the same order. :class:`LocalLearner` exposes the driver-side
interface of :class:`~stgrl.learner.actor.LearnerGroup` for one in-process rank (tests, benchmarks,
a laptop run without Ray actors).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from stgrl.learner.batch import RLBatch, ScoredGroup
from stgrl.learner.config import LearnerConfig
from stgrl.learner.engine import LearnerEngine, WorldInfo
from stgrl.learner.metrics import combine_rank_metrics


class LearnerWorker:
    """One data-parallel learner rank's logic: sets up torch.distributed itself, owns a DeepSpeed
    engine, trains on the shard it is handed. No Ray here: :class:`~stgrl.learner.actor.LearnerRank`
    is the actor shell, :class:`LocalLearner` the in-process single-rank twin."""

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 cfg: LearnerConfig | dict[str, Any], seed: int = 0, *, store_keys: Any = None):
        self.cfg = cfg if isinstance(cfg, LearnerConfig) else msgspec.convert(cfg, LearnerConfig)
        self.rank = rank
        world = WorldInfo(rank, world_size, master_addr, master_port, store_keys=store_keys)
        self.engine = LearnerEngine(model_path, self.cfg, world, seed=seed)
        self.publisher: Any = None
        self._filled_mode = False
        self.inbox: Any = None

    def ready(self) -> dict[str, Any]:
        """Rank, device and optimizer step — a cheap call to await initialisation."""
        return {"rank": self.rank, "device": str(next(self.engine.module.parameters()).device),
                "global_steps": self.engine.global_steps, "pad_id": self.engine.pad_id}

    def train_rl_batch(self, groups: Sequence[ScoredGroup], temperature: float = 1.0) -> dict[str, float]:
        """GSPO on this rank's shard: old log-probs once, then ``num_minibatches`` optimizer steps."""
        from stgrl.learner.rl import rl_update

        t0 = time.perf_counter()
        metrics = rl_update(self.engine, groups, temperature)
        metrics["time_step_s"] = time.perf_counter() - t0
        return metrics

    def open_inbox(self, transport: Any, keys: Any = None, max_groups: int = 1024) -> str:
        """Bind this rank's trajectory inbox (`~stgrl.learner.inbox.TrajectoryInbox`) on its host;
        returns the address rollout workers send this rank's groups to."""
        from stgrl.learner.inbox import TrajectoryInbox

        self.close_inbox()
        self.inbox = TrajectoryInbox(transport, keys, max_groups=max_groups, rank=self.rank)
        return self.inbox.address

    def inbox_stats(self) -> dict[str, float]:
        """The inbox's counters (`TrajectoryInbox.stats`); ``{}`` without an inbox."""
        return self.inbox.stats() if self.inbox is not None else {}

    def close_inbox(self) -> None:
        """Release the inbox's port (idempotent)."""
        if self.inbox is not None:
            self.inbox.close()
        self.inbox = None

    def train_rl_step(self, step: int, group_ids: Sequence[str], rewards: dict[str, list[float]],
                      temperature: float = 1.0, timeout_s: float = 600.0) -> dict[str, float]:
        """Train step ``step`` on ``group_ids`` from this rank's inbox (waiting up to ``timeout_s`` for
        them), scored with ``rewards`` (per completion, by group id): the driver sends only ids and
        rewards; the tensors came from the rollout workers."""
        if self.inbox is None:
            raise RuntimeError(f"learner rank {self.rank} has no trajectory inbox (open_inbox first)")
        t0 = time.perf_counter()
        got = self.inbox.take(step, group_ids, timeout_s)
        wait_s = time.perf_counter() - t0
        groups = [ScoredGroup(model_inputs=tensors, completion_ids=[c.token_ids for c in g.completions],
                              behaviour_logprobs=[c.behaviour_logprobs for c in g.completions],
                              rewards=list(rewards[g.group_id]), policy_version=g.policy_version,
                              group_id=g.group_id)
                  for g, tensors in got]
        metrics = self.train_rl_batch(groups, temperature)
        metrics["time_inbox_wait_s"] = wait_s
        metrics["num_groups"] = float(len(groups))
        return metrics

    def train_sft_batch(self, examples: Sequence[dict[str, Any]]) -> dict[str, float]:
        """One SFT optimizer step on this rank's shard."""
        from stgrl.learner.sft import sft_step

        t0 = time.perf_counter()
        metrics = sft_step(self.engine, examples)
        metrics["time_step_s"] = time.perf_counter() - t0
        return metrics

    def eval_sft_nll(self, examples: Sequence[dict[str, Any]]) -> tuple[float, float]:
        """(summed target-token NLL, target tokens) of held-out examples; no collectives."""
        from stgrl.learner.sft import sft_eval_loss

        return sft_eval_loss(self.engine, examples)

    def eval_sft_loss(self, examples: Sequence[dict[str, Any]]) -> float:
        """Mean target-token loss of held-out examples on this rank."""
        nll, n = self.eval_sft_nll(examples)
        return nll / max(n, 1.0)

    def full_state_dict(self) -> dict[str, Any]:
        """Gathered CPU state dict on rank 0, ``{}`` elsewhere (collective under ZeRO-3)."""
        return self.engine.full_state_dict()

    def attach_publisher(self, factory: Callable[[], Any]) -> dict[str, Any]:
        """Build the weight publisher inside this process (rank 0), so weights go from here to the
        rollout workers and never through the driver. ``factory()`` returns an object with
        ``publish_filled(version, specs, fill)`` (`~stgrl.transport.weight_channel.WeightPublisher`,
        e.g. ``functools.partial(WeightPublisher, transport_cfg, keys)``) or plain
        ``publish(version, state_dict)``. Returns ``{"address": what workers connect to (or None),
        "filled": whether it fills its snapshot group by group}``; the other ranks must then be told
        ``set_publish_mode(filled)``."""
        if self.publisher is not None and hasattr(self.publisher, "close"):
            self.publisher.close()
        self.publisher = factory()
        self._filled_mode = hasattr(self.publisher, "publish_filled")
        return {"address": getattr(self.publisher, "address", None), "filled": self._filled_mode}

    def set_publish_mode(self, filled: bool) -> None:
        """How rank 0 gathers for its publisher: group by group (``filled``: every rank joins each
        group's gather) or one full state dict."""
        self._filled_mode = filled

    def publish_weights(self, version: int) -> dict[str, float]:
        """Hand the current weights to rank 0's publisher as ``version`` (every rank calls: a
        collective under ZeRO-3); returns timings only, never weights.

        Filled mode: the snapshot is planned from names/shapes and filled group by group
        (`LearnerEngine.fill_weights`), so the state exists once on rank 0's host, in the snapshot.
        Otherwise (a publisher with only ``publish``, e.g. a test's recorder) a full state dict is
        gathered and handed over."""
        t0 = time.perf_counter()
        group_bytes = self.cfg.weight_group_mib << 20
        if self._filled_mode:
            spent: dict[str, float] = {}

            def fill(views: Any) -> None:
                start = time.perf_counter()
                self.engine.fill_weights(views, group_bytes)
                spent["fill"] = time.perf_counter() - start

            if self.rank == 0 and self.publisher is not None:
                self.publisher.publish_filled(version, self.engine.weight_specs(), fill)
            else:
                fill(None)
            return {"time_gather_s": spent.get("fill", 0.0), "time_publish_s": time.perf_counter() - t0}
        state = self.engine.full_state_dict()
        t1 = time.perf_counter()
        if self.publisher is not None and state:
            self.publisher.publish(version, state)
        return {"time_gather_s": t1 - t0, "time_publish_s": time.perf_counter() - t1}

    def close_publisher(self) -> None:
        """Stop serving weights (rank 0); idempotent."""
        if self.publisher is not None and hasattr(self.publisher, "close"):
            self.publisher.close()
        self.publisher = None

    def weights_checksum(self) -> dict[str, int]:
        """xxh3-64 of every tensor of the current weights on rank 0 (``{}`` elsewhere; a collective
        under ZeRO-3): compared with a rollout worker's, it proves both run the same bytes."""
        from stgrl.transport.weight_channel import state_checksums

        return state_checksums(self.engine.full_state_dict())

    def save_checkpoint(self, root: str, run_state: dict[str, Any]) -> str:
        return self.engine.save_checkpoint(root, run_state)

    def load_checkpoint(self, root: str) -> dict[str, Any]:
        return self.engine.load_checkpoint(root)

    def export_hf(self, out_dir: str) -> None:
        self.engine.export_hf(out_dir)

    def global_steps(self) -> int:
        return self.engine.global_steps


class LocalLearner:
    """:class:`~stgrl.learner.actor.LearnerGroup`'s interface on one in-process rank (world size 1).

    Initialises torch.distributed (gloo on CPU) in this process on ``port``.
    """

    def __init__(self, model_path: str | Path, cfg: LearnerConfig, seed: int = 0, port: int = 29500):
        self.worker = LearnerWorker(0, 1, "127.0.0.1", port, str(model_path), cfg, seed)

    @property
    def engine(self) -> LearnerEngine:
        return self.worker.engine

    def train_rl_batch(self, batch: RLBatch | Sequence[ScoredGroup], temperature: float = 1.0) -> dict[str, float]:
        groups = list(batch.groups) if isinstance(batch, RLBatch) else list(batch)
        return combine_rank_metrics([self.worker.train_rl_batch(groups, temperature)])

    def train_sft_batch(self, examples: Sequence[dict[str, Any]]) -> dict[str, float]:
        return combine_rank_metrics([self.worker.train_sft_batch(list(getattr(examples, "examples", examples)))])

    def eval_sft_loss(self, examples: Sequence[dict[str, Any]]) -> float:
        return self.worker.eval_sft_loss(list(getattr(examples, "examples", examples)))

    def full_state_dict(self) -> dict[str, Any]:
        return self.worker.full_state_dict()

    def attach_publisher(self, factory: Callable[[], Any]) -> str | None:
        return self.worker.attach_publisher(factory)["address"]

    def publish_weights(self, version: int) -> dict[str, float]:
        return self.worker.publish_weights(version)

    def save_checkpoint(self, root: str | Path, run_state: dict[str, Any]) -> str:
        return self.worker.save_checkpoint(str(root), run_state)

    def load_checkpoint(self, root: str | Path) -> dict[str, Any]:
        return self.worker.load_checkpoint(str(root))

    def export_hf(self, out_dir: str | Path) -> None:
        self.worker.export_hf(str(out_dir))

    def global_steps(self) -> int:
        return self.worker.global_steps()

    def weights_checksum(self) -> dict[str, int]:
        return self.worker.weights_checksum()

    def shutdown(self) -> None:
        """Stop the publisher, if any; otherwise nothing beyond the engine to free."""
        self.worker.close_publisher()
