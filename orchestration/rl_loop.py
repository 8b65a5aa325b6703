"""The RL driver: rollout pool -> reward service -> learner ranks -> new weight version, per step.

Pools are sized by config and placed by custom resources (`rollout`, `reward`, `learner`), so each
scales on its own. Schedule:

- **sync** (`run.mode: sync`): step s is generated with policy version s, then scored and trained.
- **async**: generation runs `max_staleness` steps ahead of training — while the learner trains step
  s, workers generate step s+1..s+k with the newest weights they have. A worker never generates step
  s with a version older than s - max_staleness (it waits for newer weights); the lag of every group
  is logged (`weights/version_lag`) and off-policy groups are corrected by truncated IS weights in the
  learner.

Data path: before a step is generated the driver plans which learner rank trains which group
(`stgrl.learner.batch.plan_ranks`); workers send each group whole (pixel tensors included) to its
rank's inbox and a copy without tensors here; the driver scores the copies and tells every rank
"train step N on these group ids with these rewards". Ray carries only such control calls.

Nothing is lost: each step's prompts are assigned to workers (`rollout_pool.RolloutPool`); a worker
that dies has the prompts it had not delivered re-queued to a live worker (Ray restarts the dead
one), their groups to the same ranks; trajectories are de-duplicated by group id, here and in each
inbox; the ledger proves each step trained every prompt exactly once.

A learner rank that dies mid-step is not recovered in place: the other ranks are left in a collective
with half-applied optimizer state, so the stage fails (`PipelineError` naming the step and the rank;
`close()` kills every pool, the stuck ranks included) and `--resume` restarts from the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config
from stgrl.orchestration.ledger import Ledger, StepEntry
from stgrl.orchestration.prompt_source import prompts_for_step
from stgrl.orchestration.rollout_pool import PipelineError, RolloutPool
from stgrl.orchestration.step_metrics import StepTimes, step_metrics

__all__ = ["PipelineError", "RLDriver", "scoring_group", "truncate_after"]

log = logging.getLogger(__name__)


def scoring_group(group: Any) -> Any:
    """What the reward service needs of a trajectory group: its ground truth once, its G completion
    texts. Completion ids are `group_id#i`: stable across re-sends (reward dedup is by id)."""
    from stgrl.transport.scoring import ScoringGroup

    return ScoringGroup(id=group.group_id, truth=group.sample, completions=[c.text for c in group.completions])


class RLDriver:
    """Owns the pools and runs the loop. Construct, then `run()`; `close()` releases everything."""

    def __init__(self, cfg: Config, run_dir: Path, model_path: str, train_records: list[Any],
                 dataset_dir: Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.model_path = model_path
        self.records = train_records
        self.dataset_dir = Path(dataset_dir)
        self.resume = resume
        self.ledger = Ledger(self.run_dir / "ledger.jsonl")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.version = 0
        self.start_step = 0
        self.pool = RolloutPool(cfg, self._worker_spec)
        self.learners: Any = None
        self.reward_handles: list[Any] = []
        self.reward_client: Any = None
        self.publisher: Any = None  # a driver-side publisher (tests without learners); normally rank 0 owns it
        self.weights_address: str | None = None
        self.keys: Any = None
        self.inbox_addresses: list[str] = []
        """Each learner rank's trajectory inbox (groups with their tensors go there, not here)."""
        self._plans: dict[int, list[list[str]]] = {}  # step -> group ids per learner rank
        self._step = 0  # the step in progress, for errors

    @property
    def receiver(self) -> Any:
        """The driver's `TrajectoryReceiver` (the rollout pool drains it)."""
        return self.pool.receiver

    @receiver.setter
    def receiver(self, value: Any) -> None:
        self.pool.receiver = value

    @property
    def workers(self) -> list[Any]:
        """The rollout workers' handles, by index (an elastic pool keeps removed workers' slots)."""
        return self.pool.workers

    # ---------------------------------------------------------------- set-up
    def start(self) -> None:
        from functools import partial

        from stgrl.learner.actor import start_learner_group
        from stgrl.reward_service.service import start_reward_service
        from stgrl.transport.security import CurveKeys, generate_keypair, needs_curve
        from stgrl.transport.trajectory_channel import TrajectoryReceiver
        from stgrl.transport.weight_channel import WeightPublisher

        cfg = self.cfg
        tcfg = cfg.transport
        self.curve = needs_curve(tcfg.bind_host, tcfg.curve)
        self.keys = CurveKeys(*generate_keypair()) if self.curve else None
        log.info("starting %d reward shard(s), %d learner rank(s), %d rollout worker(s)",
                 cfg.reward.num_shards, cfg.learner.num_ranks, cfg.rollout.num_workers)
        self.reward_handles, self.reward_client = start_reward_service(
            cfg.reward.num_shards, cfg.reward, transport=tcfg, keys=self.keys)
        lcfg = cfg.learner
        if lcfg.total_steps == 0:  # cosine decay over the whole run's optimizer steps
            lcfg = msgspec.structs.replace(lcfg, total_steps=cfg.run.total_steps * lcfg.num_minibatches)
        self.learners = start_learner_group(lcfg.num_ranks, self.model_path, lcfg, cfg.run.seed,
                                            num_gpus_per_rank=lcfg.num_gpus_per_rank)
        if self.resume and (self.ckpt_dir / "latest").exists():
            state = self.learners.load_checkpoint(self.ckpt_dir)
            self.start_step = int(state["step"]) + 1
            self.version = int(state["policy_version"])
            truncate_after(self.run_dir, self.start_step)
            log.info("resumed from checkpoint: next step %d, policy version %d", self.start_step, self.version,
                     extra={"console": True})
        # Rank 0 serves the weights itself: the driver only learns the address (and, per step, timings).
        self.weights_address = self.learners.attach_publisher(partial(WeightPublisher, tcfg, self.keys))
        self._publish_weights()
        # Each rank's inbox holds the groups of the steps in flight: at most lookahead + 1 steps (x2 slack).
        lookahead = cfg.run.max_staleness if cfg.run.mode == "async" else 0
        self.inbox_addresses = self.learners.open_inboxes(
            tcfg, self.keys, max_groups=max(64, 2 * (lookahead + 2) * cfg.rollout.prompts_per_step))
        self.receiver = TrajectoryReceiver(tcfg, self.keys, auto_commit=True)
        self.pool.start(cfg.rollout.num_workers)

    def _worker_spec(self, index: int) -> Any:
        """Rollout worker `index`'s spec: this run's model, data, channels and keys."""
        from stgrl.actors.rollout_worker import RolloutWorkerSpec

        cfg = self.cfg
        return RolloutWorkerSpec(
            worker_id=f"rollout-{index}", model_path=self.model_path, dataset_dir=str(self.dataset_dir.resolve()),
            weights_address=self.weights_address, trajectories_address=self.receiver.address,
            learner_addresses=list(self.inbox_addresses),
            rollout=cfg.rollout, data=cfg.data, transport=cfg.transport,
            curve_keys=self.keys, server_public=self.keys.public if self.keys else None,
            dtype=cfg.model.dtype, seed=cfg.run.seed, torch_threads=cfg.run.torch_threads,
        )

    def _publish_weights(self) -> float:
        """Rank 0 snapshots and serves `self.version` (ZeRO-3: gathered group by group); the driver
        gets timings only. Returns the wall time (`weights/sync_time_s`)."""
        t0 = time.perf_counter()
        timings = self.learners.publish_weights(self.version)
        log.debug("weight version %d published by learner rank 0: %s", self.version, timings)
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- one step's parts
    def _prompts(self, step: int) -> list[Any]:
        """Step's prompts: a pure function of (seed, step), so a resumed run gets the same ones."""
        return prompts_for_step(self.records, step, self.cfg.rollout.prompts_per_step, self.cfg.run.seed)

    def _dispatch(self, step: int) -> None:
        """Plan which learner rank trains which group of `step`, then hand its prompts to the pool
        with those destinations."""
        from stgrl.learner.batch import destinations, plan_ranks
        from stgrl.orchestration.rollout_pool import group_id, prompt_id

        records = self._prompts(step)
        plan = plan_ranks([group_id(step, prompt_id(r)) for r in records], self.learners.world_size,
                          self.cfg.learner.num_minibatches)
        self._plans[step] = plan
        self.pool.dispatch(step, records, destinations(plan))

    def _collect(self, step: int) -> list[tuple[Any, dict]]:
        """Every group of `step` from the rollout pool (waits; re-queues a dead worker's prompts)."""
        return self.pool.collect(step)

    def _score(self, groups: list[tuple[Any, dict]], step: int) -> tuple[list[list[float]], dict[str, float], float]:
        owners = [gi for gi, (g, _) in enumerate(groups) for _ in g.completions]
        t0 = time.perf_counter()
        scores = self.reward_client.score_groups([scoring_group(g) for g, _ in groups], step,
                                                 self.cfg.run.total_steps)
        latency = time.perf_counter() - t0
        rewards: list[list[float]] = [[] for _ in groups]
        comp_sum: dict[str, float] = defaultdict(float)
        comp_n: dict[str, int] = defaultdict(int)
        for s, gi in zip(scores, owners):
            rewards[gi].append(float(s.total))
            for k, v in s.components.items():
                comp_sum[k] += v
                comp_n[k] += 1
        comps = {f"reward/{k}": comp_sum[k] / comp_n[k] for k in comp_sum}
        return rewards, comps, latency

    def _train(self, groups: list[tuple[Any, dict]], rewards: list[list[float]], step: int) -> dict[str, float]:
        """Every rank trains its planned groups of `step` from its own inbox; the driver sends only
        group ids and rewards."""
        from stgrl.learner.batch import arrived_shards

        shards = arrived_shards(self._plans.pop(step), [g.group_id for g, _ in groups])
        by_id = {g.group_id: r for (g, _), r in zip(groups, rewards)}
        # log-probs are of logits / T, T = the sampling temperature (1 when greedy): rollout/engine.py
        temperature = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        return self.learners.train_rl_step(step, shards, by_id, temperature=temperature)

    def _checkpoint(self, step: int) -> None:
        state = {"step": step, "policy_version": self.version, "data_cursor": step + 1,
                 "curriculum_progress": (step + 1) / self.cfg.run.total_steps, "seed": self.cfg.run.seed}
        self.learners.save_checkpoint(self.ckpt_dir, state)
        log.info("checkpoint saved at step %d", step)

    # ---------------------------------------------------------------- the loop
    def run(self, sink: Any, progress: Any = None) -> dict[str, float]:
        """Train from `start_step` to `total_steps`; returns the last step's metrics. A failed learner
        call (a rank died) becomes a `PipelineError` naming the step, the rank and where to resume."""
        from stgrl.learner.actor import LearnerGroupError

        self._step = self.start_step
        try:
            return self._run_steps(sink, progress)
        except LearnerGroupError as e:
            where = (f"`stgrl rl --resume` continues from the last checkpoint in {self.ckpt_dir}"
                     if (self.ckpt_dir / "latest").exists() else "no checkpoint yet: the run starts over")
            raise PipelineError(f"step {self._step}: {e}. The RL stage stops; {where}") from e

    def _run_steps(self, sink: Any, progress: Any) -> dict[str, float]:
        cfg = self.cfg
        total = cfg.run.total_steps
        lookahead = cfg.run.max_staleness if cfg.run.mode == "async" else 0
        next_dispatch = self.start_step
        last: dict[str, float] = {}
        for step in range(self.start_step, total):
            self._step = step
            t_step = time.perf_counter()
            while next_dispatch <= min(step + lookahead, total - 1):
                self._dispatch(next_dispatch)
                next_dispatch += 1
            t_wait = time.perf_counter()
            groups = self._collect(step)
            wait_s = time.perf_counter() - t_wait
            rewards, comps, reward_latency = self._score(groups, step)
            t_train = time.perf_counter()
            train = self._train(groups, rewards, step)
            train_s = time.perf_counter() - t_train
            self.version += 1
            sync_s = self._publish_weights()
            step_s = time.perf_counter() - t_step
            done = self.pool.finish(step)
            self.ledger.record(StepEntry(step=step, assigned=done.assigned, trained=[g.prompt_id for g, _ in groups],
                                         policy_versions=[g.policy_version for g, _ in groups],
                                         requeued=done.requeued, skipped=done.skipped,
                                         duplicates_dropped=done.duplicates_dropped))
            times = StepTimes(step_s=step_s, wait_rollout_s=wait_s, train_s=train_s, sync_s=sync_s,
                              reward_latency_s=reward_latency)
            metrics = step_metrics(cfg, step, [g for g, _ in groups], rewards, comps, train, times,
                                   live_workers=len(self.pool.live()), queue_depth=self.pool.queue_depth(step))
            sink.log(step, metrics, policy_version=self.version)
            last = metrics
            if progress is not None:
                progress(step, metrics)
            if cfg.learner.checkpoint_every and (step + 1) % cfg.learner.checkpoint_every == 0 and step + 1 < total:
                # Only after the step's ledger and metrics lines: a kill between those and the
                # checkpoint makes the resume redo the step (truncate_after drops its lines). The other
                # order lost it: killed after the checkpoint, before the ledger line, the resume started
                # at the next step and the ledger never held this one (seen in CI).
                self._checkpoint(step)
        self._checkpoint(total - 1)
        self.learners.export_hf(self.run_dir / "rl" / "hf")
        return last

    def close(self) -> None:
        import ray

        if self.reward_client is not None:
            self.reward_client.close()
        self.pool.kill()
        for h in self.reward_handles:
            try:
                ray.kill(h)
            except Exception:
                pass
        if self.learners:
            try:  # every rank that still answers releases its inbox port (a stuck one is killed below)
                self.learners.close_inboxes()
            except Exception:
                log.debug("closing the learner ranks' inboxes failed", exc_info=True)
            try:  # lets rank 0 unlink its /dev/shm snapshot before its process is killed
                self.learners.close_publisher()
            except Exception:
                log.debug("closing the learner's weight publisher failed", exc_info=True)
            self.learners.shutdown()
        for ch in (self.receiver, self.publisher):
            if ch is not None:
                ch.close()


def truncate_after(run_dir: Path, next_step: int) -> None:
    """On resume, forget what a killed run logged after its last checkpoint (those steps are redone),
    so the ledger and metrics hold each step exactly once."""
    from stgrl.orchestration.metrics import drop_rows_after

    for name in ("ledger.jsonl", "metrics.jsonl"):
        drop_rows_after(Path(run_dir) / name, next_step - 1)

