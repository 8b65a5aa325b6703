"""The RL driver: rollout pool -> reward service -> learner ranks -> new weight version, per step.

Pools are sized by config and placed by custom resources (`rollout`, `reward`, `learner`), so each
scales on its own. Schedule:

- **sync** (`run.mode: sync`): step s is generated with policy version s, then scored and trained.
- **async**: generation runs `max_staleness` steps ahead of training — while the learner trains step
  s, workers generate step s+1..s+k with the newest weights they have. A worker never generates step
  s with a version older than s - max_staleness (it waits for newer weights); the lag of every group
  is logged (`weights/version_lag`) and off-policy groups are corrected by truncated IS weights in the
  learner.

Nothing is lost: each step's prompts are assigned to workers; a worker that dies has the prompts it
had not delivered re-queued to a live worker (Ray restarts the dead one); trajectories are
de-duplicated by group id; the ledger proves each step trained every prompt exactly once.

A learner rank that dies mid-step is not recovered in place: the other ranks are left in a collective
with half-applied optimizer state, so the stage fails (`PipelineError` naming the step and the rank;
`close()` kills every pool, the stuck ranks included) and `--resume` restarts from the last checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config
from stgrl.orchestration.ledger import Ledger, StepEntry
from stgrl.orchestration.prompt_source import prompts_for_step

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """The RL pipeline cannot continue; the message names the pool and what it waited for."""


def worker_failure(err: BaseException) -> str:
    """The worker-side exception inside a Ray error, as `Type: message` (first line of each)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def proximity_sigma(step: int, total_steps: int, sigma0: float, sigma_min: float) -> float:
    """σ(p) = max(σ_min, σ_0 (1 - p)), p = (step + 1) / total_steps (docs/design.md §3), for the report."""
    p = (step + 1) / max(1, total_steps)
    return max(sigma_min, sigma0 * (1.0 - p))


def prompt_id(record: Any) -> str:
    return str(record.id)


def group_id(step: int, pid: str) -> str:
    """Deterministic per (step, prompt): a regenerated group de-duplicates against the original."""
    return f"{step}/{pid}"


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
        self.workers: list[Any] = []
        # worker index -> pending ping: died (restarting or gone) or just started (not yet placed/loaded)
        self._suspect: dict[int, Any] = {}
        self._removed: set[int] = set()
        self._unavailable_since: dict[int, float] = {}  # worker -> first ActorUnavailableError of its ping
        self._last_scale = 0.0
        self.learners: Any = None
        self.reward_handles: list[Any] = []
        self.reward_client: Any = None
        self.receiver: Any = None
        self.publisher: Any = None  # a driver-side publisher (tests without learners); normally rank 0 owns it
        self.weights_address: str | None = None
        self._buffer: dict[int, dict[str, tuple[Any, dict]]] = defaultdict(dict)
        self._dupes: dict[int, int] = defaultdict(int)
        self._requeued: dict[int, list[str]] = defaultdict(list)
        self._skipped: dict[int, list[str]] = defaultdict(list)
        self._assigned: dict[int, list[Any]] = {}
        self._expected: dict[int, set[str]] = {}  # step -> group ids it was dispatched; others are dropped
        self.unexpected_groups = 0
        """Groups that arrived for no dispatched prompt (a stranger, or a re-send after its step ended)."""
        self._inflight: dict[int, list[tuple[Any, int, list[Any]]]] = {}
        self._worker_busy_s: float = 0.0
        self._step = 0  # the step in progress, for errors

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
        self.receiver = TrajectoryReceiver(tcfg, self.keys, auto_commit=True)
        self.workers = [self._start_worker(i) for i in range(cfg.rollout.num_workers)]

    def _start_worker(self, index: int) -> Any:
        """One rollout worker (resource `rollout`). Fixed pool: Ray restarts a dead worker (3 times).
        Elastic pool: no restart (its node may be gone for good); `_scale_pool` starts a new worker
        wherever a `rollout` resource is free instead."""
        from stgrl.actors.rollout_worker import RolloutWorkerSpec, rollout_worker_actor

        cfg = self.cfg
        spec = RolloutWorkerSpec(
            worker_id=f"rollout-{index}", model_path=self.model_path, dataset_dir=str(self.dataset_dir.resolve()),
            weights_address=self.weights_address, trajectories_address=self.receiver.address,
            rollout=cfg.rollout, data=cfg.data, transport=cfg.transport,
            curve_keys=self.keys, server_public=self.keys.public if self.keys else None,
            dtype=cfg.model.dtype, seed=cfg.run.seed, torch_threads=cfg.run.torch_threads,
        )
        return rollout_worker_actor(spec, max_restarts=0 if cfg.rollout.elastic else 3, max_task_retries=0)

    def live_workers(self) -> list[int]:
        """Indices of workers that take work now (not dead, restarting or removed)."""
        return [i for i in range(len(self.workers)) if i not in self._suspect and i not in self._removed]

    def _check_suspects(self) -> None:
        """A new or died worker (re)joins the pool once it answers a ping (placed and loaded, or
        restarted by Ray); a permanently dead one is removed from the pool (its node left)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        for i, ref in list(self._suspect.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            del self._suspect[i]
            try:
                ray.get(ref)
                self._unavailable_since.pop(i, None)
                log.info("rollout worker %d joined the pool", i, extra={"console": True})
            except ActorUnavailableError as e:
                if self.cfg.rollout.elastic:  # no restarts in an elastic pool: its node is gone
                    self._removed.add(i)
                    log.warning("rollout worker %d is unreachable (%s); removed from the pool", i, e)
                    continue
                # "The actor was restarted" / temporarily unreachable: Ray is bringing it back. Ping
                # again (bounded: a worker unreachable for 10 transport timeouts is dropped).
                since = self._unavailable_since.setdefault(i, time.monotonic())
                if time.monotonic() - since > self.cfg.transport.timeout_s * 10:
                    self._removed.add(i)
                    log.warning("rollout worker %d unreachable for %.0fs (%s); removed from the pool", i,
                                time.monotonic() - since, e)
                else:
                    log.info("rollout worker %d is restarting; pinging it again", i)
                    self._suspect[i] = self.workers[i].version.remote()
            except RayActorError:
                self._unavailable_since.pop(i, None)
                self._removed.add(i)
                log.warning("rollout worker %d is gone for good; removed from the pool", i)

    def _scale_pool(self) -> None:
        """Elastic rollout (`rollout.elastic`): a free `rollout` resource (a node joined, or a worker
        left) gets a new worker, which pulls the latest weights before its first group."""
        import ray

        self._check_suspects()
        if not self.cfg.rollout.elastic:
            return
        now = time.monotonic()
        if now - self._last_scale < self.cfg.rollout.elastic_check_s:
            return
        self._last_scale = now
        limit = self.cfg.rollout.max_workers or 1 << 30
        # Capacity is the cluster's total `rollout` resource: a worker being created does not show in
        # the free resources yet, so counting free units would start workers that can never be placed.
        target = min(limit, int(ray.cluster_resources().get("rollout", 0.0)))
        while len(self.live_workers()) + len(self._suspect) < target:
            index = len(self.workers)
            self.workers.append(self._start_worker(index))
            self._suspect[index] = self.workers[index].version.remote()  # gets work once it answers
            log.info("elastic rollout: started worker %d (%d live)", index, len(self.live_workers()))
        # Capacity shrank (a node left) while workers still wait to be placed: they never will be.
        excess = len(self.live_workers()) + len(self._suspect) - target
        for i in sorted(self._suspect, reverse=True)[: max(0, excess)]:
            ray.kill(self.workers[i])
            del self._suspect[i]
            self._removed.add(i)
            log.info("elastic rollout: dropped unplaced worker %d (capacity now %d)", i, target)

    def _publish_weights(self) -> float:
        """Rank 0 snapshots and serves `self.version` (ZeRO-3: gathered group by group); the driver
        gets timings only. Returns the wall time (`weights/sync_time_s`)."""
        t0 = time.perf_counter()
        timings = self.learners.publish_weights(self.version)
        log.debug("weight version %d published by learner rank 0: %s", self.version, timings)
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- generation
    def _dispatch(self, step: int) -> None:
        """Assign step's prompts to workers round-robin in contiguous chunks; remember who has what."""
        from stgrl.learner.batch import even_split

        records = prompts_for_step(self.records, step, self.cfg.rollout.prompts_per_step, self.cfg.run.seed)
        self._assigned[step] = records
        self._expect(step, records)
        self._scale_pool()
        live = self.live_workers()
        if not live:
            raise PipelineError(f"step {step}: no live rollout worker (all {len(self.workers)} died or left)")
        self._inflight[step] = []
        for w, chunk in zip(live, even_split(records, len(live))):
            if chunk:
                self._inflight[step].append(self._submit(step, w, chunk))

    def _expect(self, step: int, records: list[Any]) -> None:
        """From now on, groups of ``records`` for ``step`` are accepted by `_drain`."""
        self._expected[step] = {group_id(step, prompt_id(r)) for r in records}

    def _min_version(self, step: int) -> int:
        """Oldest policy version allowed to generate `step` (the async staleness bound; sync: `step`)."""
        return max(0, step - (self.cfg.run.max_staleness if self.cfg.run.mode == "async" else 0))

    def _submit(self, step: int, w: int, chunk: list[Any]) -> tuple[Any, int, list[Any]]:
        """Send `chunk` of step's prompts to worker `w`; returns the in-flight entry (ref, worker, chunk)."""
        payload = [msgspec.to_builtins(r) for r in chunk]
        return self.workers[w].generate.remote(payload, step, self._min_version(step)), w, chunk

    def _drain(self, timeout_s: float) -> None:
        """Move every trajectory that has arrived into the per-step buffer (dedup by group id)."""
        from stgrl.transport.endpoints import TransportTimeout

        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                group, tensors = self.receiver.recv(timeout=max(0.001, min(left, 0.05)))
            except TransportTimeout:
                if time.monotonic() >= deadline:
                    return
                continue
            if group.group_id not in self._expected.get(group.step, ()):
                # Only groups of dispatched prompts are held: anything else (a forged group on the
                # port, a late re-send of a finished step) would otherwise stay in memory for good.
                self.unexpected_groups += 1
                log.log(logging.WARNING if self.unexpected_groups <= 10 else logging.DEBUG,
                        "dropped trajectory group %r (step %d): no such prompt is in flight (%d dropped)",
                        group.group_id[:80], group.step, self.unexpected_groups)
                continue
            bucket = self._buffer[group.step]
            if group.group_id in bucket:
                self._dupes[group.step] += 1
                continue
            bucket[group.group_id] = (group, tensors)

    def _collect(self, step: int) -> list[tuple[Any, dict]]:
        """Wait until every prompt of `step` delivered a group; re-queue the work of dead workers."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        expected = {group_id(step, prompt_id(r)) for r in self._assigned[step]}
        deadline = time.monotonic() + self.cfg.transport.timeout_s * 10
        while True:
            self._drain(0.05)
            self._scale_pool()
            have = expected & set(self._buffer[step])
            if have == expected:
                break
            pending = []
            for ref, w, chunk in self._inflight[step]:
                ready, _ = ray.wait([ref], timeout=0)
                if not ready:
                    pending.append((ref, w, chunk))
                    continue
                try:
                    ray.get(ref)
                except RayTaskError as e:
                    # The worker raised (its engine refused a weight version, or generation failed): the
                    # same input fails on every worker, so re-queueing would only repeat it.
                    raise PipelineError(f"step {step}: rollout worker {w} failed: {worker_failure(e)}") from e
                except RayActorError as e:
                    if getattr(e, "actor_init_failed", False):
                        # Its constructor raised (the engine did not start): Ray does not restart it.
                        raise PipelineError(f"step {step}: rollout worker {w} could not start its engine "
                                            f"(rollout.engine={self.cfg.rollout.engine}): {worker_failure(e)}") from e
                    missing = [r for r in chunk if group_id(step, prompt_id(r)) not in self._buffer[step]]
                    log.warning("rollout worker %d died during step %d (%s); re-queueing %d prompt(s)",
                                w, step, type(e).__name__, len(missing))
                    if w not in self._suspect and w not in self._removed:
                        self._suspect[w] = self.workers[w].version.remote()
                    self._requeued[step] += [prompt_id(r) for r in missing]
                    if missing:
                        pending.append(self._submit(step, self._pick_worker(exclude=w), missing))
                    continue
            self._inflight[step] = pending
            if not pending:
                # Every call returned, and a worker returns only after the receiver acknowledged each
                # group it sent: a group still missing was skipped by the worker (bad media, logged
                # there). It is counted in the ledger, not trained.
                self._drain(0.2)
                have = expected & set(self._buffer[step])
                skipped = sorted(expected - have)
                if skipped:
                    log.warning("step %d: %d prompt(s) skipped by the rollout pool (bad media): %s",
                                step, len(skipped), skipped[:5])
                    self._skipped[step] = [g.split("/", 1)[1] for g in skipped]
                expected = have
                break
            if time.monotonic() > deadline:
                raise PipelineError(f"step {step}: waited {self.cfg.transport.timeout_s * 10:.0f}s for "
                                    f"{len(expected - have)} group(s) from the rollout pool")
        return [self._buffer[step][g] for g in sorted(expected)]

    def _pick_worker(self, exclude: int) -> int:
        """A live worker other than `exclude` (the next one after it), waiting for one if need be."""
        deadline = time.monotonic() + self.cfg.transport.timeout_s
        while True:
            self._scale_pool()
            live = [i for i in self.live_workers() if i != exclude] or self.live_workers()
            if live:
                after = [i for i in live if i > exclude]
                return (after or live)[0]
            if time.monotonic() > deadline:
                raise PipelineError(f"no live rollout worker to re-queue work to within {self.cfg.transport.timeout_s}s")
            time.sleep(0.5)

    # ---------------------------------------------------------------- scoring + training
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
        from stgrl.learner.batch import RLBatch, ScoredGroup

        scored = [
            ScoredGroup(model_inputs=tensors, completion_ids=[c.token_ids for c in g.completions],
                        behaviour_logprobs=[c.behaviour_logprobs for c in g.completions],
                        rewards=r, policy_version=g.policy_version, group_id=g.group_id)
            for (g, tensors), r in zip(groups, rewards)
        ]
        # log-probs are of logits / T, T = the sampling temperature (1 when greedy): rollout/engine.py
        temperature = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        return self.learners.train_rl_batch(RLBatch(groups=scored, step=step), temperature=temperature)

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
            entry = StepEntry(step=step, assigned=[prompt_id(r) for r in self._assigned.pop(step)],
                              trained=[g.prompt_id for g, _ in groups],
                              policy_versions=[g.policy_version for g, _ in groups],
                              requeued=self._requeued.pop(step, []), skipped=self._skipped.pop(step, []),
                              duplicates_dropped=self._dupes.pop(step, 0))
            self.ledger.record(entry)
            self._buffer.pop(step, None)
            self._expected.pop(step, None)
            self._inflight.pop(step, None)
            n_tokens = sum(len(c.token_ids) for g, _ in groups for c in g.completions)
            gen_s = max((g.timings.get("generate_s", 0.0) for g, _ in groups), default=0.0)
            gen_total = sum(g.timings.get("generate_s", 0.0) for g, _ in groups)
            n_samples = sum(len(g.completions) for g, _ in groups)
            all_rewards = [x for r in rewards for x in r]
            lag = [step - g.policy_version for g, _ in groups]
            live = len(self.live_workers())  # an elastic pool keeps dead workers' slots in self.workers
            metrics = {
                "train/reward_mean": sum(all_rewards) / max(1, len(all_rewards)),
                "train/zero_std_groups": train.get("zero_std_groups", 0.0),
                "rollout/tokens_per_s": pool_rate(n_tokens, gen_total, live),
                "rollout/samples_per_s": pool_rate(n_samples, gen_total, live),
                "rollout/queue_depth": float(sum(len(b) for s, b in self._buffer.items() if s > step)),
                "rollout/live_workers": float(len(self.live_workers())),
                "reward/requests_per_s": len(all_rewards) / max(1e-9, reward_latency),
                "reward/latency_s": reward_latency,
                "reward/sigma": proximity_sigma(step, total, cfg.reward.sigma0, cfg.reward.sigma_min),
                **comps,
                "learner/step_time_s": train_s,
                "learner/tokens_per_s": train.get("tokens", 0.0) / max(1e-9, train_s),
                "learner/clip_fraction": train.get("clip_fraction", 0.0),
                "learner/is_weight": train.get("is_weight_mean", 1.0),
                "learner/loss": train.get("loss", math.nan),
                "learner/logprob_gap": train.get("behaviour_gap", math.nan),
                "learner/ratio_abs_dev_last": train.get("ratio_abs_dev_last", math.nan),
                "weights/sync_time_s": sync_s,
                "weights/version_lag": sum(lag) / max(1, len(lag)),
                "weights/version_lag_max": float(max(lag, default=0)),
                "pipeline/idle_ratio/learner": max(0.0, 1.0 - train_s / max(1e-9, step_s)),
                "pipeline/idle_ratio/rollout": max(0.0, 1.0 - min(1.0, gen_total / max(1e-9, step_s * max(1, live)))),
                **{f"learner/{k}": train[k] for k in ("time_old_logprobs_s", "time_forward_s", "time_backward_s",
                                                      "time_optimizer_s") if k in train},
                "rollout/generate_total_s": gen_total,
                "pipeline/step_time_s": step_s,
                "pipeline/wait_rollout_s": wait_s,
                "pipeline/generate_max_s": gen_s,
            }
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
        for h in [*self.workers, *self.reward_handles]:
            try:
                ray.kill(h)
            except Exception:
                pass
        if self.learners:
            try:  # lets rank 0 unlink its /dev/shm snapshot before its process is killed
                self.learners.close_publisher()
            except Exception:
                log.debug("closing the learner's weight publisher failed", exc_info=True)
            self.learners.shutdown()
        for ch in (self.receiver, self.publisher):
            if ch is not None:
                ch.close()


def pool_rate(amount: float, busy_s_total: float, live_workers: int) -> float:
    """Per-second rate of the rollout pool: `amount` (tokens, samples) over the pool's wall time, i.e.
    the summed generate time spread over the workers that are live now. Workers that died or left
    do not count: dividing by every worker ever started understates the rate of a pool that lost or
    replaced workers (an elastic pool's list keeps their slots)."""
    return amount / max(1e-9, busy_s_total / max(1, live_workers))


def truncate_after(run_dir: Path, next_step: int) -> None:
    """On resume, forget what a killed run logged after its last checkpoint (those steps are redone),
    so the ledger and metrics hold each step exactly once."""
    import json

    for name in ("ledger.jsonl", "metrics.jsonl"):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] < next_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line of the killed run
        path.write_text("".join(line + "\n" for line in kept))

