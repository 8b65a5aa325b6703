"""Client of the sharded reward service: spreads batches over shards, enforces a deadline per request,
retries elsewhere, and never loses or double-counts a sample.

Guarantees of `RewardClient.score` and `RewardClient.score_groups` (docs/design.md §3, "Reward
service contract"):
- every sample gets exactly one Score, returned in input order; samples are deduplicated by id (a
  repeated id is scored once and its Score returned at every position);
- a request not answered within `cfg.deadline_s` is re-sent to another shard; every request then
  still in flight on the late shard is re-sent too, and that shard rests for one deadline. A late answer
  that arrives first is used, and the other copy's answer is dropped (`duplicate_replies` counts them):
  scoring is pure, so either copy is the same answer;
- with Ray actor handles, a failed shard is looked up again (`address()`): a dead actor is dropped for
  good, a restarted one is reconnected at its new address;
- a batch that fails `max_attempts` times, or all shards dead, raises `RewardServiceError`; a miss
  names the shard and, when its CURVE handshake was refused, says so (the shared transport's
  handshake watch).

The sockets are the shared transport's `ClientSocket`s (heartbeats, size guard, CURVE), framed as
`wire.py` says.

Not thread-safe: one client per thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from stgrl.reward_service import wire
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.types import Score, ScoringGroup, ScoringSample, completion_id
from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, PeerRefused
from stgrl.transport.security import CurveKeys
from stgrl.transport.wire import Reject, RewardRequest, WireError, encode

log = logging.getLogger(__name__)


class RewardServiceError(RuntimeError):
    """The service could not score a batch (all shards dead, or too many failed attempts)."""


@dataclass(eq=False)
class _Link:
    """Client-side view of one shard."""

    index: int
    client: ClientSocket
    handle: Any = None
    in_flight: set[int] = field(default_factory=set)
    down_until: float = 0.0
    dead: bool = False
    resolving: Any = None  # ObjectRef of a pending address() lookup

    @property
    def address(self) -> str:
        return self.client.address

    @property
    def sock(self) -> zmq.Socket:
        return self.client.sock


@dataclass(eq=False)
class _Job:
    batch: int
    attempts: int = 0
    tried: set[int] = field(default_factory=set)


class RewardClient:
    """Scores batches on reward shards given as Ray actor handles or `tcp://` addresses.

    ``transport`` is the run's data-plane options (heartbeats, bounds); ``keys`` the run's CURVE key
    pair: given, every shard is connected to as a CURVE server with the run's public key.
    """

    def __init__(self, shards: Sequence[Any], cfg: RewardConfig, *, transport: TransportConfig | None = None,
                 max_in_flight_per_shard: int = 2, max_attempts: int | None = None,
                 lookup_timeout_s: float = 60.0, keys: CurveKeys | None = None) -> None:
        if not shards:
            raise ValueError("RewardClient needs at least one shard")
        self.cfg = cfg
        self.transport = wire.socket_config(transport or TransportConfig())
        self.max_in_flight = max_in_flight_per_shard
        self.max_attempts = max_attempts if max_attempts is not None else max(3, 2 * len(shards))
        self.lookup_timeout_s = lookup_timeout_s
        self._keys = keys
        self.duplicate_replies = 0
        self.retries = 0
        self._ids = itertools.count(1)
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._by_sock: dict[zmq.Socket, _Link] = {}
        addresses = self._addresses(shards, lookup_timeout_s)
        self._links = []
        for i, (shard, addr) in enumerate(zip(shards, addresses)):
            link = _Link(index=i, client=self._connect(addr), handle=None if isinstance(shard, str) else shard)
            self._links.append(link)
            self._register(link)

    @staticmethod
    def _addresses(shards: Sequence[Any], timeout_s: float) -> list[str]:
        handles = [s for s in shards if not isinstance(s, str)]
        resolved: list[str] = []
        if handles:
            import ray

            resolved = ray.get([h.address.remote() for h in handles], timeout=timeout_s)
        it = iter(resolved)
        return [s if isinstance(s, str) else next(it) for s in shards]

    def _connect(self, address: str) -> ClientSocket:
        server_public = self._keys.public if self._keys is not None else None
        return ClientSocket(address, self.transport, self._keys, server_public=server_public, ctx=self._ctx)

    def _register(self, link: _Link) -> None:
        self._poller.register(link.sock, zmq.POLLIN)
        self._by_sock[link.sock] = link

    def _disconnect(self, link: _Link) -> None:
        self._poller.unregister(link.sock)
        del self._by_sock[link.sock]
        link.client.close()

    @property
    def live_shards(self) -> int:
        return sum(not link.dead for link in self._links)

    # ------------------------------------------------------------------------------ public API
    def score(self, samples: Sequence[ScoringSample], step: int, total_steps: int) -> list[Score]:
        """Score `samples` at training `step` of `total_steps`; Scores come back in input order."""
        unique: dict[str, ScoringSample] = {}
        for s in samples:
            unique.setdefault(s.id, s)
        items = list(unique.values())
        size = self.cfg.batch_size
        requests = [RewardRequest(step=step, total_steps=total_steps, samples=items[i : i + size])
                    for i in range(0, len(items), size)]
        results = self._score_requests(requests, [len(r.samples) for r in requests])
        return [results[s.id] for s in samples]

    def score_groups(self, groups: Sequence[ScoringGroup], step: int, total_steps: int) -> list[Score]:
        """Score every completion of `groups`, each group's ground truth sent once (not once per
        completion): one Score per completion, group by group in input order, completion ``i`` of
        group ``g`` with id ``completion_id(g.id, i)``.

        Groups are deduplicated by id (a repeated group is a re-send: it must have as many
        completions). A group never splits across requests; a request takes groups until it holds
        ``cfg.batch_size`` completions.
        """
        unique: dict[str, ScoringGroup] = {}
        for g in groups:
            first = unique.setdefault(g.id, g)
            if len(first.completions) != len(g.completions):
                raise ValueError(f"scoring group {g.id!r} given twice with {len(first.completions)} and "
                                 f"{len(g.completions)} completions")
        requests: list[RewardRequest] = []
        counts: list[int] = []
        batch: list[ScoringGroup] = []
        n = 0
        for g in unique.values():
            batch.append(g)
            n += len(g.completions)
            if n >= self.cfg.batch_size:
                requests.append(RewardRequest(step=step, total_steps=total_steps, groups=batch))
                counts.append(n)
                batch, n = [], 0
        if batch:
            requests.append(RewardRequest(step=step, total_steps=total_steps, groups=batch))
            counts.append(n)
        results = self._score_requests(requests, counts)
        return [results[completion_id(g.id, i)] for g in groups for i in range(len(g.completions))]

    def _score_requests(self, requests: list[RewardRequest], counts: list[int]) -> dict[str, Score]:
        """Every request answered once (``counts[i]`` scores for request ``i``): Scores by id."""
        for link in self._links:
            link.in_flight.clear()  # anything left from an aborted call is forgotten
        bodies = [encode(r) for r in requests]
        results: dict[str, Score] = {}
        done = [False] * len(requests)
        remaining = len(requests)
        queue: deque[_Job] = deque(_Job(i) for i in range(len(requests)))
        pending: dict[int, tuple[_Job, _Link, float]] = {}
        sent_batch: dict[int, int] = {}  # every request id of this call -> its batch
        give_up = time.monotonic() + self.lookup_timeout_s + self.max_attempts * self.cfg.deadline_s
        while remaining:
            now = time.monotonic()
            self._refresh(now)
            self._dispatch(queue, pending, sent_batch, bodies, now)
            if not pending:
                if now > give_up:
                    raise RewardServiceError(f"no reward shard came back within {self.lookup_timeout_s:.0f} s")
                self._wait_for_a_shard(now)
                continue
            next_deadline = min(d for _, _, d in pending.values())
            wait_ms = max(0, min(50, int((next_deadline - now) * 1000) + 1))
            for sock, _ in self._poller.poll(wait_ms):
                for rid, message in self._drain(sock):
                    batch = sent_batch.get(rid)
                    job_link = pending.pop(rid, None)
                    if job_link is not None:
                        job_link[1].in_flight.discard(rid)
                    if batch is None:
                        continue  # a reply from an earlier call
                    try:
                        reply = wire.decode_reply(message, self.transport)
                        if isinstance(reply, Reject):
                            raise RewardServiceError(f"shard rejected a request: {reply.reason}")
                        if len(reply.scores) != counts[batch]:
                            raise WireError(f"{len(reply.scores)} scores for {counts[batch]} completions")
                    except WireError as e:
                        if done[batch]:
                            self.duplicate_replies += 1
                            continue
                        # Our own shard never sends this; whoever did, the batch is retried elsewhere.
                        link = self._by_sock.get(sock)
                        if job_link is not None and link is not None:
                            pending[rid] = job_link
                            link.in_flight.add(rid)
                            self._fail(link, pending, queue, time.monotonic(), f"sent a malformed reply ({e})")
                        continue
                    if done[batch]:
                        self.duplicate_replies += 1
                        continue
                    for sc in reply.scores:
                        results.setdefault(sc.id, sc)
                    done[batch] = True
                    remaining -= 1
                    self._cancel_copies(batch, pending, sent_batch, queue)
            self._expire(pending, queue, time.monotonic())
        return results

    def close(self) -> None:
        """Close the sockets (pending replies are dropped)."""
        for link in self._links:
            if not link.dead:
                self._disconnect(link)
                link.dead = True
        self._ctx.term()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- internals
    def _dispatch(self, queue: deque[_Job], pending: dict, sent_batch: dict, bodies: list[list], now: float) -> None:
        while queue:
            job = queue[0]
            link = self._pick(job.tried, now)
            if link is None:
                return
            queue.popleft()
            rid = next(self._ids)
            link.sock.send_multipart([wire.pack_id(rid), *bodies[job.batch]], copy=False)
            link.in_flight.add(rid)
            job.tried.add(link.index)
            pending[rid] = (job, link, now + self.cfg.deadline_s)
            sent_batch[rid] = job.batch

    def _pick(self, tried: set[int], now: float) -> _Link | None:
        """A free live shard, preferring one this batch has not tried, then the least loaded. A shard
        being looked up again (it failed; Ray may be restarting it elsewhere) waits for the answer."""
        free = [lk for lk in self._links if not lk.dead and lk.resolving is None and lk.down_until <= now
                and len(lk.in_flight) < self.max_in_flight]
        if not free:
            return None
        return min(free, key=lambda lk: (lk.index in tried, len(lk.in_flight), lk.index))

    @staticmethod
    def _drain(sock: zmq.Socket) -> list[tuple[int | None, list]]:
        """Every reply waiting on ``sock``: (request id, the frames after it)."""
        out = []
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) >= 2:
                out.append((wire.unpack_id(frames[0]), frames[1:]))
            else:
                log.warning("reward client: dropped a reply with %d frames", len(frames))

    def _cancel_copies(self, batch: int, pending: dict, sent_batch: dict, queue: deque[_Job]) -> None:
        """The batch is answered: forget other copies still in flight or queued."""
        for rid in [r for r, (job, _, _) in pending.items() if job.batch == batch]:
            _, link, _ = pending.pop(rid)
            link.in_flight.discard(rid)
        for job in [j for j in queue if j.batch == batch]:
            queue.remove(job)

    def _expire(self, pending: dict, queue: deque[_Job], now: float) -> None:
        late = {link for (_, link, deadline) in pending.values() if deadline <= now}
        for link in late:
            self._fail(link, pending, queue, now, self._missed(link))

    @staticmethod
    def _missed(link: _Link) -> str:
        """Why a shard missed its deadline, as far as its socket knows: a refused CURVE handshake,
        never connected, or just late."""
        try:
            link.client.check_handshake()
        except PeerRefused as err:
            return f"missed its deadline: {err}"
        if not link.client.handshake_ok:
            return "missed its deadline (never connected: shard down, wrong address or CURVE mismatch)"
        return "missed its deadline"

    def _fail(self, link: _Link, pending: dict, queue: deque[_Job], now: float, why: str) -> None:
        """Take a shard out for one deadline and re-queue (first) everything in flight on it."""
        link.down_until = now + self.cfg.deadline_s
        rids = [r for r, (_, lk, _) in pending.items() if lk is link]
        log.warning("reward shard %d (%s) %s; retrying %d request(s) elsewhere", link.index, link.address, why,
                    len(rids))
        for rid in rids:
            job, _, _ = pending.pop(rid)
            link.in_flight.discard(rid)
            job.attempts += 1
            self.retries += 1
            if job.attempts >= self.max_attempts:
                tried = ", ".join(f"{i} ({self._links[i].address})" for i in sorted(job.tried))
                raise RewardServiceError(f"a batch failed {job.attempts} times (last on shard {link.index} at "
                                         f"{link.address}, {why}; tried shards {tried})")
            queue.appendleft(job)
        if link.handle is not None and link.resolving is None:
            link.resolving = link.handle.address.remote()

    def _refresh(self, now: float) -> None:
        """Apply finished address lookups: drop dead actors, reconnect restarted ones."""
        for link in self._links:
            if link.resolving is None or link.dead:
                continue
            import ray

            ready, _ = ray.wait([link.resolving], timeout=0)
            if not ready:
                continue
            ref, link.resolving = link.resolving, None
            try:
                addr = ray.get(ref)
            except ray.exceptions.ActorDiedError:
                log.warning("reward shard %d is dead; continuing with %d shard(s)", link.index, self.live_shards - 1)
                self._disconnect(link)
                link.dead = True
                continue
            except ray.exceptions.RayActorError:
                link.resolving = link.handle.address.remote()  # restarting: ask again
                continue
            if addr != link.address:
                log.info("reward shard %d moved to %s", link.index, addr)
                self._disconnect(link)
                link.client = self._connect(addr)
                link.in_flight.clear()
                link.down_until = 0.0
                self._register(link)

    def _wait_for_a_shard(self, now: float) -> None:
        alive = [lk for lk in self._links if not lk.dead]
        if not alive:
            shards = ", ".join(f"{lk.index} ({lk.address})" for lk in self._links)
            raise RewardServiceError(f"every reward shard is dead: {shards}")
        soonest = min(lk.down_until for lk in alive)
        time.sleep(min(0.05, max(0.0, soonest - now)) or 0.01)
