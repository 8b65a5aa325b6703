"""Learner ranks as Ray actors (custom resource ``learner``) and the driver-side group that feeds them.

The actor is a thin shell over :class:`~stgrl.learner.engine.LearnerEngine` and the pure-ish step
functions in :mod:`stgrl.learner.rl` / :mod:`stgrl.learner.sft`; all collectives happen inside the
ranks. :class:`LearnerGroup` shards each batch (equal group counts per rank, see
:mod:`stgrl.learner.batch`), calls every rank in the same order and combines their metrics. In an RL
run the batch itself never goes through it: each rank's inbox receives its groups from the rollout
workers, and `LearnerGroup.train_rl_step` sends only group ids and rewards.

Concurrency: a LearnerGroup is driven from one thread; every collective method is sent to all ranks
before any result is awaited, so ranks never wait on a rank that was not asked.

Failure: a call that fails on any rank (a rank died, raised, or ran past the timeout) raises
:class:`LearnerGroupError` saying what happened to each rank. The group is then unusable — the other
ranks may sit in a collective with the dead one, with half-applied optimizer state — so the caller
shuts it down (every rank is killed) and restarts from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from stgrl.learner.batch import RLBatch, ScoredGroup, even_split, shard_for_ranks, shard_minibatched
from stgrl.learner.config import LearnerConfig
from stgrl.learner.metrics import combine_rank_metrics
from stgrl.learner.worker import LearnerWorker
from stgrl.transport.security import CurveKeys, generate_keypair

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
# After one rank's call failed, how long to wait for the others' outcomes before calling them "still
# running": a dead rank's error arrives within milliseconds; a rank blocked in a collective never does.
OUTCOME_GRACE_S = 5.0


class LearnerGroupError(RuntimeError):
    """A call on the learner ranks failed; the message names the method and each rank's outcome
    (finished, raised, died with its pid, still running). The group must be shut down."""


@ray.remote
class LearnerRank(LearnerWorker):
    """One data-parallel learner rank as a Ray actor (resource ``learner``): the process shell around
    :class:`~stgrl.learner.worker.LearnerWorker` (one torch thread per core it was given, logging).

    Create through :func:`start_learner_group` (placement group, free port, all ranks at once); every
    rank must be created before any finishes ``__init__`` (rendezvous).
    """

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 cfg: LearnerConfig | dict[str, Any], seed: int = 0, *, store_keys: Any = None):
        import torch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        super().__init__(rank, world_size, master_addr, master_port, model_path, cfg, seed, store_keys=store_keys)

    def pid(self) -> int:
        """This rank's process id: what an operator (or a fault test) signals to stop this rank alone."""
        return os.getpid()


@ray.remote(num_cpus=0)
def _address_and_free_port() -> tuple[str, int]:
    """Runs in rank 0's bundle: the node address and a port free there for torch.distributed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    # the address Ray itself uses for this node (loopback when the cluster was started on it)
    node_id = ray.get_runtime_context().get_node_id()
    addr = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id),
                ray.util.get_node_ip_address())
    return addr, port


class LearnerGroup:
    """Driver-side handle on ``L`` learner ranks: shards batches, calls all ranks, combines metrics."""

    def __init__(self, handles: list[Any], pg: PlacementGroup | None, num_minibatches: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.handles = handles
        self.pids: list[int] = []  # per rank, once started: for error messages and operators
        self.num_minibatches = num_minibatches
        self.placement_group = pg
        self.timeout_s = timeout_s

    @property
    def world_size(self) -> int:
        return len(self.handles)

    def _all(self, method: str, *args, per_rank: Sequence[Any] | None = None) -> list[Any]:
        refs = [getattr(h, method).remote(*(((per_rank[r],) if per_rank is not None else ()) + args))
                for r, h in enumerate(self.handles)]
        return self._get(method, refs)

    def _get(self, method: str, refs: list[Any]) -> list[Any]:
        """Every rank's result, or :class:`LearnerGroupError` naming what happened to each rank.

        ``ray.get`` of the list raises on the first failed ref (a dead rank's within milliseconds),
        while the other ranks may still be blocked in a collective with it."""
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.RayError as first:
            raise LearnerGroupError(self._describe_failure(method, refs, first)) from first

    def _describe_failure(self, method: str, refs: list[Any], first: BaseException) -> str:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=OUTCOME_GRACE_S)
        done = set(ready)
        outcomes, dead = [], []
        for r, ref in enumerate(refs):
            pid = f" (pid {self.pids[r]})" if r < len(self.pids) else ""
            if ref not in done:
                outcomes.append(f"rank {r}{pid} still running (blocked in a collective with a failed rank?)")
                continue
            try:
                ray.get(ref, timeout=OUTCOME_GRACE_S)
                outcomes.append(f"rank {r}{pid} finished")
            except ray.exceptions.RayActorError as e:
                dead.append(r)
                outcomes.append(f"rank {r}{pid} died: {_first_line(e)}")
            except ray.exceptions.RayError as e:
                outcomes.append(f"rank {r}{pid} raised: {_last_line(e)}")
        if isinstance(first, ray.exceptions.GetTimeoutError):
            head = f"learner {method} did not finish on every rank within {self.timeout_s:.0f}s"
        elif dead:
            head = (f"learner rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} of "
                    f"{len(refs)} died during {method}")
        else:
            head = f"learner {method} failed"
        return (f"{head}: {'; '.join(o.rstrip('.') for o in outcomes)}. "
                "The learner group is unusable; restart it from the last checkpoint")

    def train_rl_batch(self, batch: RLBatch | Sequence[ScoredGroup], temperature: float = 1.0) -> dict[str, float]:
        """Split the groups evenly over ranks (a remainder is dropped and logged) and take one GSPO
        update; every rank runs the same number of minibatches, and global minibatch ``i`` is the
        same set of groups whatever the rank count (:func:`shard_minibatched`)."""
        groups = list(batch.groups) if isinstance(batch, RLBatch) else list(batch)
        shards = shard_minibatched(groups, self.world_size, self.num_minibatches)
        return combine_rank_metrics(self._all("train_rl_batch", temperature, per_rank=shards))

    def open_inboxes(self, transport: Any, keys: Any = None, max_groups: int = 1024) -> list[str]:
        """Bind every rank's trajectory inbox on its host; returns their addresses, by rank."""
        return self._all("open_inbox", transport, keys, max_groups)

    def inbox_stats(self) -> list[dict[str, float]]:
        """Every rank's inbox counters, by rank (groups taken, tensor bytes received, drops)."""
        return self._all("inbox_stats")

    def close_inboxes(self, timeout_s: float = 10.0) -> None:
        """Ask every live rank to release its inbox port, also after a failed step: a killed process's
        sockets go only once all its threads have exited, moments after the process looks dead, so
        a port is released for certain only by closing it. A dead rank's error is ignored (its port
        went with it); a rank still stuck in a collective does not answer within ``timeout_s`` and
        is killed by `shutdown`."""
        refs = [h.close_inbox.remote() for h in self.handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for r, ref in enumerate(refs):
            if ref not in ready:
                logger.warning("learner rank %d did not close its trajectory inbox within %.0fs", r, timeout_s)
                continue
            try:
                ray.get(ref, timeout=timeout_s)
            except ray.exceptions.RayError as e:
                logger.debug("learner rank %d: inbox not closed (%s)", r, _first_line(e))

    def train_rl_step(self, step: int, shards: Sequence[Sequence[str]], rewards: dict[str, list[float]],
                      temperature: float = 1.0) -> dict[str, float]:
        """One GSPO update on step ``step``: rank ``r`` trains ``shards[r]`` (group ids, plan order),
        taking the groups from its own inbox; each rank gets only its groups' rewards. Ray carries ids
        and rewards; the tensors went from the rollout workers to the ranks directly."""
        if len(shards) != self.world_size:
            raise ValueError(f"{len(shards)} shards for {self.world_size} learner ranks")
        # The inbox wait gives up first, so a missing group is named (InboxTimeout) rather than the call
        # just running past its timeout. The groups are normally there already: a worker sends the driver
        # its copy only after the rank acknowledged the group.
        wait_s = self.timeout_s / 2
        refs = [h.train_rl_step.remote(step, list(ids), {g: rewards[g] for g in ids}, temperature, wait_s)
                for h, ids in zip(self.handles, shards)]
        return combine_rank_metrics(self._get("train_rl_step", refs))

    def train_sft_batch(self, examples: Sequence[dict[str, Any]]) -> dict[str, float]:
        shards = shard_for_ranks(list(getattr(examples, "examples", examples)), self.world_size)
        return combine_rank_metrics(self._all("train_sft_batch", per_rank=shards))

    def eval_sft_loss(self, examples: Sequence[dict[str, Any]]) -> float:
        """Exact target-token mean over all held-out examples (shards may differ in size)."""
        shards = [s for s in even_split(list(getattr(examples, "examples", examples)), self.world_size) if s]
        refs = [h.eval_sft_nll.remote(s) for h, s in zip(self.handles, shards)]
        parts = ray.get(refs, timeout=self.timeout_s)
        return sum(p[0] for p in parts) / max(1.0, sum(p[1] for p in parts))

    def full_state_dict(self) -> dict[str, Any]:
        return self._all("full_state_dict")[0]

    def attach_publisher(self, factory: Callable[[], Any]) -> str | None:
        """Create the weight publisher inside rank 0 (`LearnerWorker.attach_publisher`) and tell the
        other ranks how it gathers; returns its address (what rollout workers connect to). The
        driver only ever sees this address and timings: weights go from rank 0 to the workers."""
        info = self._get("attach_publisher", [self.handles[0].attach_publisher.remote(factory)])[0]
        if len(self.handles) > 1:
            self._get("set_publish_mode", [h.set_publish_mode.remote(info["filled"]) for h in self.handles[1:]])
        return info["address"]

    def publish_weights(self, version: int) -> dict[str, float]:
        """Every rank joins; rank 0's publisher serves ``version``. Returns timings (small)."""
        return combine_rank_metrics(self._all("publish_weights", version))

    def close_publisher(self) -> None:
        """Stop rank 0's publisher (it unlinks its /dev/shm snapshot); bounded by a short timeout."""
        if self.handles:
            ray.get(self.handles[0].close_publisher.remote(), timeout=min(self.timeout_s, 30.0))

    def weights_checksum(self) -> dict[str, int]:
        """Rank 0's per-tensor xxh3 of the current weights (tests: same bytes as a rollout worker)."""
        return self._all("weights_checksum")[0]

    def save_checkpoint(self, root: str | Path, run_state: dict[str, Any]) -> str:
        return self._all("save_checkpoint", str(root), run_state)[0]

    def load_checkpoint(self, root: str | Path) -> dict[str, Any]:
        return self._all("load_checkpoint", str(root))[0]

    def export_hf(self, out_dir: str | Path) -> None:
        self._all("export_hf", str(out_dir))

    def global_steps(self) -> int:
        return self._all("global_steps")[0]

    def shutdown(self) -> None:
        """Kill the ranks and free their placement group. ``ray.kill`` ends a rank's process even when
        it is blocked inside a collective (a peer died), so no rank is left behind."""
        for h in self.handles:
            ray.kill(h)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
        self.handles = []


def rank_env(num_gpus_per_rank: float, cpus_per_rank: float = 1.0,
             env_vars: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars one learner rank's actor asks Ray for: DeepSpeed's accelerator from the rank's own
    GPU request (``cuda`` with GPUs, ``cpu`` without), always explicit.

    Why explicit both ways: Ray merges the job's runtime env into every actor, and a driver on a
    GPU-less node (a KubeRay head) may carry ``DS_ACCELERATOR=cpu`` in it; an actor that does not name
    the key inherits it, and a GPU rank would then train on DeepSpeed's CPU accelerator with gloo.
    """
    env = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_rank)))} | (env_vars or {})
    env["DS_ACCELERATOR"] = "cuda" if num_gpus_per_rank else "cpu"
    return env


def start_learner_group(num_ranks: int, model_path: str | Path, cfg: LearnerConfig, seed: int = 0, *,
                        num_gpus_per_rank: float = 0.0, cpus_per_rank: float = 1.0,
                        env_vars: dict[str, str] | None = None,
                        timeout_s: float = DEFAULT_TIMEOUT_S) -> LearnerGroup:
    """Place ``num_ranks`` learner ranks (one bundle each, packed), pick a rendezvous port on rank 0's
    node, start every rank and wait until all engines are built.

    Each rank's accelerator follows its own resources (`rank_env`), set before DeepSpeed is imported.
    """
    bundle: dict[str, float] = {"learner": 1, "CPU": cpus_per_rank}
    if num_gpus_per_rank:
        bundle["GPU"] = num_gpus_per_rank
    pg = placement_group([dict(bundle) for _ in range(num_ranks)], strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)  # a pending group would otherwise wait (and hold its claim) forever
        raise TimeoutError(f"learner placement group of {num_ranks} rank(s) x {bundle} not placed within "
                           f"{timeout_s:.0f}s (cluster has {ray.cluster_resources()}): not enough "
                           f"`learner` resources, CPUs or GPUs") from None
    addr, port = ray.get(_address_and_free_port.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)).remote(),
        timeout=timeout_s)
    env = rank_env(num_gpus_per_rank, cpus_per_rank, env_vars)
    cfg_builtins = msgspec.to_builtins(cfg)
    # The group's own key pair for its authenticated rendezvous store (learner/rendezvous.py), sent to
    # the ranks as an actor argument over Ray's authenticated control plane, never to disk or env.
    store_keys = CurveKeys(*generate_keypair())
    handles = [
        LearnerRank.options(
            num_cpus=cpus_per_rank, num_gpus=num_gpus_per_rank, resources={"learner": 1},
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r),
            runtime_env={"env_vars": env}, name=None,
        ).remote(r, num_ranks, addr, port, str(model_path), cfg_builtins, seed, store_keys=store_keys)
        for r in range(num_ranks)
    ]
    group = LearnerGroup(handles, pg, cfg.num_minibatches, timeout_s)
    try:
        info = ray.get([h.ready.remote() for h in handles], timeout=timeout_s)
        group.pids = ray.get([h.pid.remote() for h in handles], timeout=timeout_s)
    except Exception:
        group.shutdown()
        raise
    logger.info("learner group up: %d ranks at %s:%d (%s)", num_ranks, addr, port, info[0]["device"])
    return group


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _last_line(err: BaseException) -> str:
    """A rank's exception: the last line of the remote traceback (``Type: message``)."""
    return next((line.strip() for line in reversed(str(err).splitlines()) if line.strip()), type(err).__name__)
