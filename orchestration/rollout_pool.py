"""The rollout pool as the RL driver sees it: workers, their liveness, and each step's groups.

`RolloutPool` starts the workers (resource `rollout`), tracks which of them take work (a new or
restarted worker joins once it answers a ping; one that is gone for good is removed; an elastic pool
starts workers where `rollout` resources are free), hands each step's prompts out, and collects the
step's trajectory groups from the driver's `TrajectoryReceiver`, re-queueing the prompts a dead worker
had not delivered to a live one. Groups are de-duplicated by group id and only groups of dispatched
prompts are held; the per-step bookkeeping (`StepRecord`) is what the ledger line is made of.

The weight-version wait (the async staleness bound) is the workers' side of `generate`: the pool
passes each step's oldest allowed version (`min_version`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec

from stgrl.orchestration.config import Config

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


def prompt_id(record: Any) -> str:
    return str(record.id)


def group_id(step: int, pid: str) -> str:
    """Deterministic per (step, prompt): a regenerated group de-duplicates against the original."""
    return f"{step}/{pid}"


class StepRecord(msgspec.Struct, kw_only=True):
    """What the pool did for one step, for its ledger line."""

    assigned: list[str]
    requeued: list[str]
    skipped: list[str]
    duplicates_dropped: int


class RolloutPool:
    """The driver's rollout workers and the trajectory groups they deliver, step by step.

    ``spec_for(index)`` builds worker ``index``'s `RolloutWorkerSpec` (addresses and keys come from
    the driver); ``receiver`` is the driver's `TrajectoryReceiver`. Driven from one thread.
    """

    def __init__(self, cfg: Config, spec_for: Callable[[int], Any] | None = None, receiver: Any = None) -> None:
        self.cfg = cfg
        self.spec_for = spec_for
        self.receiver = receiver
        self.workers: list[Any] = []
        # worker index -> pending ping: died (restarting or gone) or just started (not yet placed/loaded)
        self.suspect: dict[int, Any] = {}
        self.removed: set[int] = set()
        self._unavailable_since: dict[int, float] = {}  # worker -> first ActorUnavailableError of its ping
        self._last_scale = 0.0
        self.buffer: dict[int, dict[str, tuple[Any, dict]]] = defaultdict(dict)
        self._dupes: dict[int, int] = defaultdict(int)
        self._requeued: dict[int, list[str]] = defaultdict(list)
        self._skipped: dict[int, list[str]] = defaultdict(list)
        self._assigned: dict[int, list[Any]] = {}
        self._expected: dict[int, set[str]] = {}  # step -> group ids it was dispatched; others are dropped
        self.unexpected_groups = 0
        """Groups that arrived for no dispatched prompt (a stranger, or a re-send after its step ended)."""
        self._inflight: dict[int, list[tuple[Any, int, list[Any]]]] = {}
        self._destinations: dict[int, dict[str, int]] = {}  # step -> group id -> learner rank
        self.tensor_bytes = 0
        """Bytes of tensor frames that reached the driver (0 when groups go to the learner ranks)."""

    # ---------------------------------------------------------------- workers
    def start(self, num_workers: int) -> None:
        self.workers = [self.start_worker(i) for i in range(num_workers)]

    def start_worker(self, index: int) -> Any:
        """One rollout worker (resource `rollout`). Fixed pool: Ray restarts a dead worker (3 times).
        Elastic pool: no restart (its node may be gone for good); `scale` starts a new worker
        wherever a `rollout` resource is free instead."""
        from stgrl.actors.rollout_worker import rollout_worker_actor

        if self.spec_for is None:
            raise RuntimeError("this rollout pool was built without a worker spec (spec_for)")
        return rollout_worker_actor(self.spec_for(index), max_restarts=0 if self.cfg.rollout.elastic else 3,
                                    max_task_retries=0)

    def live(self) -> list[int]:
        """Indices of workers that take work now (not dead, restarting or removed)."""
        return [i for i in range(len(self.workers)) if i not in self.suspect and i not in self.removed]

    def check_suspects(self) -> None:
        """A new or died worker (re)joins the pool once it answers a ping (placed and loaded, or
        restarted by Ray); a permanently dead one is removed from the pool (its node left)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        for i, ref in list(self.suspect.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            del self.suspect[i]
            try:
                ray.get(ref)
                self._unavailable_since.pop(i, None)
                log.info("rollout worker %d joined the pool", i, extra={"console": True})
            except ActorUnavailableError as e:
                if self.cfg.rollout.elastic:  # no restarts in an elastic pool: its node is gone
                    self.removed.add(i)
                    log.warning("rollout worker %d is unreachable (%s); removed from the pool", i, e)
                    continue
                # "The actor was restarted" / temporarily unreachable: Ray is bringing it back. Ping
                # again (bounded: a worker unreachable for 10 transport timeouts is dropped).
                since = self._unavailable_since.setdefault(i, time.monotonic())
                if time.monotonic() - since > self.cfg.transport.timeout_s * 10:
                    self.removed.add(i)
                    log.warning("rollout worker %d unreachable for %.0fs (%s); removed from the pool", i,
                                time.monotonic() - since, e)
                else:
                    log.info("rollout worker %d is restarting; pinging it again", i)
                    self.suspect[i] = self.workers[i].version.remote()
            except RayActorError:
                self._unavailable_since.pop(i, None)
                self.removed.add(i)
                log.warning("rollout worker %d is gone for good; removed from the pool", i)

    def scale(self) -> None:
        """Elastic rollout (`rollout.elastic`): a free `rollout` resource (a node joined, or a worker
        left) gets a new worker, which pulls the latest weights before its first group."""
        import ray

        self.check_suspects()
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
        while len(self.live()) + len(self.suspect) < target:
            index = len(self.workers)
            self.workers.append(self.start_worker(index))
            self.suspect[index] = self.workers[index].version.remote()  # gets work once it answers
            log.info("elastic rollout: started worker %d (%d live)", index, len(self.live()))
        # Capacity shrank (a node left) while workers still wait to be placed: they never will be.
        excess = len(self.live()) + len(self.suspect) - target
        for i in sorted(self.suspect, reverse=True)[: max(0, excess)]:
            ray.kill(self.workers[i])
            del self.suspect[i]
            self.removed.add(i)
            log.info("elastic rollout: dropped unplaced worker %d (capacity now %d)", i, target)

    def pick_worker(self, exclude: int) -> int:
        """A live worker other than `exclude` (the next one after it), waiting for one if need be."""
        deadline = time.monotonic() + self.cfg.transport.timeout_s
        while True:
            self.scale()
            live = [i for i in self.live() if i != exclude] or self.live()
            if live:
                after = [i for i in live if i > exclude]
                return (after or live)[0]
            if time.monotonic() > deadline:
                raise PipelineError(f"no live rollout worker to re-queue work to within {self.cfg.transport.timeout_s}s")
            time.sleep(0.5)

    def kill(self) -> None:
        """Kill every worker (the stage is over or failed); errors of already dead ones are ignored."""
        import ray

        for h in self.workers:
            try:
                ray.kill(h)
            except Exception:
                pass

    # ---------------------------------------------------------------- generation
    def min_version(self, step: int) -> int:
        """Oldest policy version allowed to generate `step` (the async staleness bound; sync: `step`)."""
        return max(0, step - (self.cfg.run.max_staleness if self.cfg.run.mode == "async" else 0))

    def dispatch(self, step: int, records: list[Any], destinations: dict[str, int] | None = None) -> None:
        """Assign step's prompts to workers round-robin in contiguous chunks; remember who has what.
        ``destinations``: the learner rank of each group id (`stgrl.learner.batch.plan_ranks`); a
        re-queued prompt's group goes to the same rank."""
        from stgrl.learner.batch import even_split

        self._assigned[step] = records
        self._destinations[step] = dict(destinations or {})
        self.expect(step, records)
        self.scale()
        live = self.live()
        if not live:
            raise PipelineError(f"step {step}: no live rollout worker (all {len(self.workers)} died or left)")
        self._inflight[step] = []
        for w, chunk in zip(live, even_split(records, len(live))):
            if chunk:
                self._inflight[step].append(self._submit(step, w, chunk))

    def expect(self, step: int, records: list[Any]) -> None:
        """From now on, groups of ``records`` for ``step`` are accepted by `drain`."""
        self._expected[step] = {group_id(step, prompt_id(r)) for r in records}

    def _submit(self, step: int, w: int, chunk: list[Any]) -> tuple[Any, int, list[Any]]:
        """Send `chunk` of step's prompts to worker `w`; returns the in-flight entry (ref, worker, chunk)."""
        payload = [msgspec.to_builtins(r) for r in chunk]
        plan = self._destinations.get(step, {})
        dest = {g: plan[g] for g in (group_id(step, prompt_id(r)) for r in chunk) if g in plan}
        ref = self.workers[w].generate.remote(payload, step, self.min_version(step), destinations=dest or None)
        return ref, w, chunk

    def drain(self, timeout_s: float) -> None:
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
            self.tensor_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            bucket = self.buffer[group.step]
            if group.group_id in bucket:
                self._dupes[group.step] += 1
                continue
            bucket[group.group_id] = (group, tensors)

    def collect(self, step: int) -> list[tuple[Any, dict]]:
        """Wait until every prompt of `step` delivered a group; re-queue the work of dead workers."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        expected = {group_id(step, prompt_id(r)) for r in self._assigned[step]}
        deadline = time.monotonic() + self.cfg.transport.timeout_s * 10
        while True:
            self.drain(0.05)
            self.scale()
            have = expected & set(self.buffer[step])
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
                    missing = [r for r in chunk if group_id(step, prompt_id(r)) not in self.buffer[step]]
                    log.warning("rollout worker %d died during step %d (%s); re-queueing %d prompt(s)",
                                w, step, type(e).__name__, len(missing))
                    if w not in self.suspect and w not in self.removed:
                        self.suspect[w] = self.workers[w].version.remote()
                    self._requeued[step] += [prompt_id(r) for r in missing]
                    if missing:
                        pending.append(self._submit(step, self.pick_worker(exclude=w), missing))
                    continue
            self._inflight[step] = pending
            if not pending:
                # Every call returned, and a worker returns only after the receiver acknowledged each
                # group it sent: a group still missing was skipped by the worker (bad media, logged
                # there). It is counted in the ledger, not trained.
                self.drain(0.2)
                have = expected & set(self.buffer[step])
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
        return [self.buffer[step][g] for g in sorted(expected)]

    def queue_depth(self, step: int) -> int:
        """Groups already held for steps after `step` (generated ahead, async)."""
        return sum(len(b) for s, b in self.buffer.items() if s > step)

    def finish(self, step: int) -> StepRecord:
        """Forget `step` (its groups were trained) and return what the pool did for it."""
        record = StepRecord(assigned=[prompt_id(r) for r in self._assigned.pop(step)],
                            requeued=self._requeued.pop(step, []), skipped=self._skipped.pop(step, []),
                            duplicates_dropped=self._dupes.pop(step, 0))
        self.buffer.pop(step, None)
        self._expected.pop(step, None)
        self._inflight.pop(step, None)
        self._destinations.pop(step, None)
        return record
