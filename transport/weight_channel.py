"""Versioned weights from the learner to every rollout worker, pulled in verified buckets (docs/design.md §6).

A version is the state dict laid out as one byte stream (each tensor at a 64-byte aligned offset)
and cut into fixed-size buckets (``cfg.weight_bucket_mib``). The `WeightManifest` lists every
tensor's name, dtype, shape, offset and size plus an xxh3 checksum per bucket.

Who: the `WeightPublisher` lives in learner rank 0 (`stgrl.learner.worker.LearnerWorker.attach_publisher`);
weights go from there to the rollout workers and never through the driver. The layout is planned
from names, dtypes and shapes alone (`layout`), and the caller fills the one snapshot in place
(`WeightPublisher.publish_filled`): a ZeRO-3 learner gathers a group of parameters at a time and
copies it in, so the whole model exists once on its host, in the snapshot.

Pull-based: the publisher binds ``cfg.weight_streams`` ROUTER sockets, each served by its own thread
(and its own ZeroMQ I/O thread, where CURVE encrypts), all answering "manifest of the latest version"
and "bucket i of version v", so training never waits on a slow worker. A `WeightSubscriber`
(rollout worker) asks the socket it was given for the latest manifest, which lists the other
streams' ports (same host: a manifest cannot send it elsewhere), and pulls the buckets spread over
every stream (``cfg.weight_window`` in flight on each) into one fresh buffer, verifies each checksum, and only when all
arrived and verified returns the new state dict (views into that buffer) and reports its version.
A corrupt or missing bucket refuses the whole version: the subscriber keeps its previous one. A
worker that joins late simply gets the latest version on its first poll.

Same host (``cfg.weight_shm``, default on): the publisher's snapshot is a file in /dev/shm and the
manifest names it; a subscriber on the same host maps it, verifies the same checksums straight from
the mapping and returns views of it, so the caller's load into its model is the only copy. It falls
back to TCP when it cannot open the file. The publisher rewrites the same file for the next version
when no subscriber still holds tensors of the previous one, which keeps the subscribers' mappings
(and page tables) warm (`stgrl.transport.shm_snapshot`). TCP over loopback is several times slower
than memcpy here.

Memory: the publisher holds one snapshot (the latest version; the previous one is released, or
rewritten in place, before a new one is packed, so requests during packing get `NoVersion`). Over
TCP the subscriber allocates one buffer per new version (or reuses one); over /dev/shm it allocates
nothing and its tensors share the publisher's snapshot pages. The caller owns the returned tensors,
so while it loads them into its model there are at most its model and that one buffer or snapshot
(+ ``weight_window`` buckets in flight in ZeroMQ).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec
import torch
import xxhash
import zmq

from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, PeerRefused, ServerSocket
from stgrl.transport.security import CurveKeys
from stgrl.transport.shm_snapshot import ShmSnapshot, SnapshotReader, host_id, sweep_stale
from stgrl.transport.tensor_frames import DTYPES, dtype_name
from stgrl.transport.wire import (
    BucketRequest,
    ManifestRequest,
    NoVersion,
    Reject,
    TensorEntry,
    VersionReport,
    WeightBucket,
    WeightManifest,
    WireError,
    decode,
    encode,
)

__all__ = ["WeightPublisher", "WeightSubscriber", "WeightVerificationError", "layout", "manifest_checksum", "pack",
           "state_checksums"]

log = logging.getLogger(__name__)

ALIGN = 64
_HASH_STEP = 1 << 20
"""Copy and checksum in pieces this small, so the hash reads from cache, not memory."""
CHUNK_BYTES = 8 << 20
"""A bucket travels as frames of at most this size: libzmq allocates one buffer per frame, and
glibc reuses (warm) heap memory up to 32 MiB but maps fresh, page-faulting memory above."""
MAX_REPORTED_SUBSCRIBERS = 4096
"""Subscribers whose reported version the publisher remembers (the most recent ones); 20k made-up
ids once cost it 700 MB."""
MAX_STREAMS = 64
"""Most serving sockets a subscriber connects to for one publisher (config allows 16)."""
_REQUESTS = ManifestRequest | BucketRequest | VersionReport
_REPLIES = WeightManifest | WeightBucket | NoVersion | Reject
_ENC = msgspec.msgpack.Encoder()


class WeightVerificationError(RuntimeError):
    """A weight version failed verification (checksum, sizes, manifest); it was not applied."""


def manifest_checksum(tensors: list[TensorEntry], bucket_checksums: list[int], total: int) -> int:
    """xxh3-64 over the tensor table, the bucket checksums and the total size."""
    return xxhash.xxh3_64_intdigest(_ENC.encode([tensors, bucket_checksums, total]))


def _buckets(total: int, bucket_nbytes: int) -> list[tuple[int, int]]:
    return [(s, min(s + bucket_nbytes, total)) for s in range(0, total, bucket_nbytes)]


def layout(specs: Iterable[tuple[str, torch.dtype, Sequence[int]]]) -> tuple[list[TensorEntry], int]:
    """Where each tensor goes in a version's byte stream (64-byte aligned) and the stream's size.

    Needs only names, dtypes and shapes: a learner under ZeRO-3 plans its snapshot from
    ``param.ds_shape`` before gathering anything, then fills it group by group (`WeightPublisher.publish_filled`).
    """
    entries: list[TensorEntry] = []
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        entries.append(TensorEntry(name, dtype_name(dtype), [int(d) for d in shape], offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, offset


def _finish(version: int, entries: list[TensorEntry], total: int, buf: torch.Tensor,
            bucket_nbytes: int) -> WeightManifest:
    """Zero the padding (never ship stale memory), checksum every bucket, describe the version."""
    end = 0
    for entry in entries:
        if entry.offset > end:
            buf[end:entry.offset].zero_()
        end = entry.offset + entry.nbytes
    if end < total:
        buf[end:].zero_()
    raw = buf.numpy()
    checks = [xxhash.xxh3_64_intdigest(raw[s:e]) for s, e in _buckets(total, bucket_nbytes)]
    return WeightManifest(version, total, bucket_nbytes, entries, checks, manifest_checksum(entries, checks, total))


def pack(
    version: int, state_dict: Mapping[str, torch.Tensor], bucket_nbytes: int,
    alloc: Callable[[int], torch.Tensor] | None = None,
) -> tuple[WeightManifest, torch.Tensor]:
    """Copy ``state_dict`` into one contiguous uint8 buffer from ``alloc(nbytes)`` and describe it
    (one copy, any device)."""
    entries, total = layout((name, t.dtype, t.shape) for name, t in state_dict.items())
    buf = alloc(total) if alloc is not None else torch.empty(total, dtype=torch.uint8)
    dst = _unpack_entries(entries, buf)
    for entry, t in zip(entries, state_dict.values()):
        dst[entry.name].copy_(t.detach())
    return _finish(version, entries, total, buf, bucket_nbytes), buf


def state_checksums(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """xxh3-64 of each tensor's bytes (C order), by name: two sides holding the same weights, bit
    for bit, give equal dicts."""
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        out[name] = xxhash.xxh3_64_intdigest(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else 0
    return out


def _unpack(manifest: WeightManifest, buf: torch.Tensor) -> dict[str, torch.Tensor]:
    return _unpack_entries(manifest.tensors, buf)


def _unpack_entries(entries: list[TensorEntry], buf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each tensor as a (writable) view of ``buf``, by name."""
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        dtype = DTYPES[e.dtype]
        view = buf[e.offset:e.offset + e.nbytes]
        out[e.name] = view.view(torch.bool) if dtype is torch.bool else view.view(dtype)
        out[e.name] = out[e.name].view(e.shape)
    return out


def _check_manifest(m: WeightManifest, peer: str) -> None:
    """Structural checks before allocating anything: sizes, offsets, dtypes, checksum."""
    def bad(why: str) -> WeightVerificationError:
        return WeightVerificationError(f"manifest of version {m.version} from {peer} is invalid: {why}")

    if m.bucket_nbytes <= 0 or m.total_nbytes < 0:
        raise bad("non-positive sizes")
    if len(m.bucket_checksums) != math.ceil(m.total_nbytes / m.bucket_nbytes):
        raise bad(f"{len(m.bucket_checksums)} bucket checksums for {m.total_nbytes} bytes")
    if manifest_checksum(m.tensors, m.bucket_checksums, m.total_nbytes) != m.checksum:
        raise bad("manifest checksum mismatch")
    names = set()
    for e in m.tensors:
        dtype = DTYPES.get(e.dtype)
        if dtype is None or any(d < 0 for d in e.shape):
            raise bad(f"tensor {e.name!r}: dtype {e.dtype!r} / shape {e.shape}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if e.nbytes != math.prod(e.shape) * itemsize or e.offset % ALIGN or e.offset < 0 \
                or e.offset + e.nbytes > m.total_nbytes or e.name in names:
            raise bad(f"tensor {e.name!r}: offset {e.offset}, {e.nbytes} bytes")
        names.add(e.name)


WeightFill = Callable[[Mapping[str, torch.Tensor]], None]
"""Writes every tensor of a version into its view of the snapshot (``views[name].copy_(...)``)."""


class WeightPublisher:
    """Serves the latest weight version from background threads (learner rank 0).

    `publish` / `publish_filled` are called from the training thread; requests are served
    concurrently by ``cfg.weight_streams`` sockets, each with its own serving thread and ZeroMQ I/O
    thread (CURVE runs there), all serving the one snapshot. Versions must increase.
    ``subscriber_versions()`` tells which version each worker reported.
    """

    def __init__(
        self,
        cfg: TransportConfig,
        keys: CurveKeys | None = None,
        *,
        port: int = 0,
        advertise_host: str | None = None,
        io_threads: int = 1,
    ) -> None:
        self.cfg = cfg
        self._servers: list[ServerSocket] = []
        try:
            for i in range(cfg.weight_streams):  # only the first may be pinned: a restart comes back there
                self._servers.append(ServerSocket(cfg, keys, port=port if i == 0 else 0,
                                                  advertise_host=advertise_host, io_threads=io_threads))
        except Exception:
            for server in self._servers:
                server.close()
            raise
        self._lock = threading.Lock()
        self._latest: tuple[WeightManifest, torch.Tensor, list[tuple[int, int]]] | None = None
        self._latest_version: int | None = None
        self._reports: OrderedDict[str, int] = OrderedDict()  # most recently reporting last
        self._shm: ShmSnapshot | None = None
        self._host = host_id()
        self._pin = torch.cuda.is_available()  # device-to-host copies from pinned memory skip a staging copy
        if cfg.weight_shm:
            sweep_stale()
        self.buckets_served = [0] * len(self._servers)
        """Buckets sent per stream (how evenly subscribers spread their requests)."""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(server,), name=f"weight-publisher-{i}",
                                          daemon=True) for i, server in enumerate(self._servers)]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> str:
        """What subscribers are given; they learn the other streams' ports from the manifest."""
        return self._servers[0].address

    @property
    def addresses(self) -> list[str]:
        """Every serving socket's address (the first is `address`)."""
        return [server.address for server in self._servers]

    @property
    def curve(self) -> bool:
        return self._servers[0].curve

    @property
    def latest_version(self) -> int | None:
        return self._latest_version

    def subscriber_versions(self) -> dict[str, int]:
        """Last version each subscriber reported it runs (for ``weights/version_lag``)."""
        with self._lock:
            return dict(self._reports)

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> WeightManifest:
        """Snapshot ``state_dict`` as ``version`` and serve it; the previous version is released first."""
        tensors = list(state_dict.values())

        def fill(views: Mapping[str, torch.Tensor]) -> None:
            for dst, t in zip(views.values(), tensors):
                dst.copy_(t.detach())

        return self.publish_filled(version, [(k, t.dtype, t.shape) for k, t in state_dict.items()], fill)

    def publish_filled(self, version: int, specs: Sequence[tuple[str, torch.dtype, Sequence[int]]],
                       fill: WeightFill) -> WeightManifest:
        """Serve ``version``: plan the snapshot from ``specs`` (name, dtype, shape), let ``fill`` write
        every tensor into its view of it, then checksum and serve.

        Why: the caller never needs the whole state at once anywhere but in this one snapshot; a
        ZeRO-3 learner gathers a group of parameters, copies it into its views and lets it go.
        ``fill`` runs on the calling thread; subscribers asking meanwhile get `NoVersion`.
        """
        if self._latest_version is not None and version <= self._latest_version:
            raise ValueError(f"weight version {version} is not newer than {self._latest_version}")
        with self._lock:
            previous, self._latest = self._latest, None  # one snapshot in memory at a time
        released = True
        if previous is not None:
            ref = weakref.ref(previous[1])
            del previous  # the caller's reference too: only in-flight frames may keep it alive
            released = self._wait_released(ref)
        t0 = time.perf_counter()
        entries, total = layout(specs)
        buf = self._alloc(total, version, rewrite=released)
        try:
            fill(_unpack_entries(entries, buf))
            manifest = _finish(version, entries, total, buf, self.cfg.bucket_bytes)
        finally:
            if self._shm is not None:
                self._shm.done_writing()
        manifest = msgspec.structs.replace(manifest, stream_ports=[s.port for s in self._servers[1:]])
        if self._shm is not None:
            manifest = msgspec.structs.replace(manifest, shm_path=str(self._shm.path), host=self._host)
        with self._lock:
            self._latest = (manifest, buf, _buckets(manifest.total_nbytes, manifest.bucket_nbytes))
            self._latest_version = version
        log.info("published weight version %d: %d tensors, %.1f MiB in %d buckets on %d stream(s) (%.2fs)",
                 version, len(manifest.tensors), manifest.total_nbytes / 2**20, len(manifest.bucket_checksums),
                 len(self._servers), time.perf_counter() - t0)
        return manifest

    @staticmethod
    def _wait_released(ref: weakref.ref, limit_s: float = 2.0) -> bool:
        """Wait (briefly) until ZeroMQ has let go of the previous snapshot before allocating the next.

        Frames are sent zero-copy: libzmq holds the snapshot until they are on the wire, and pyzmq
        drops its reference from a background thread afterwards. Without this wait two snapshots can
        briefly coexist. After ``limit_s`` (a subscriber still draining) we go on regardless, into new
        memory: False means the old snapshot must not be rewritten in place.
        """
        deadline = time.monotonic() + limit_s
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        if ref() is not None:
            log.info("previous weight snapshot still referenced by in-flight frames; packing anyway")
            return False
        return True

    def _alloc(self, nbytes: int, version: int, rewrite: bool) -> torch.Tensor:
        """The snapshot buffer: in /dev/shm for same-host subscribers when possible, else anonymous
        (pinned when CUDA is there, so a GPU learner's copies into it run at DMA speed).

        The previous /dev/shm snapshot is rewritten in place (warm pages on both sides) when it has the
        same size, no frame still references it (``rewrite``) and no subscriber holds a lease on it;
        otherwise it is released before the new one is allocated.
        """
        if self._shm is not None and rewrite and self._shm.nbytes == nbytes and self._shm.try_rewrite(version):
            return self._shm.tensor()
        self._release_shm()
        if self.cfg.weight_shm and nbytes > 0:
            try:
                self._shm = ShmSnapshot(nbytes, version)
                return self._shm.tensor()
            except OSError as err:
                log.warning("weight snapshot not in /dev/shm (%s); same-host subscribers use TCP", err)
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin and nbytes > 0)

    def _release_shm(self) -> None:
        if self._shm is not None:
            self._shm.release()
            self._shm = None

    def _serve(self, server: ServerSocket) -> None:
        sock = server.sock
        stream = self._servers.index(server)
        while not self._stop.is_set():
            if not sock.poll(100, zmq.POLLIN):
                continue
            try:
                identity, *frames = sock.recv_multipart(copy=False)
                if self._handle(server, identity.bytes, frames):
                    self.buckets_served[stream] += 1
            except zmq.ZMQError as err:  # e.g. the requester vanished before we replied
                log.debug("weight publisher %s: %s", server.address, err)
            except Exception:  # never let one request kill the serving thread
                log.exception("weight publisher %s failed on a request", server.address)

    def _handle(self, server: ServerSocket, identity: bytes, frames: list) -> bool:
        """Answer one request; True when a bucket was sent."""
        sock = server.sock
        try:
            req, _ = decode(frames, _REQUESTS, max_frame_bytes=self.cfg.max_frame_bytes, max_tensors=0)
        except WireError as err:
            log.warning("weight publisher %s rejected a request: %s", server.address, err)
            sock.send_multipart([identity, *encode(Reject(str(err)))])
            return False
        if isinstance(req, VersionReport):
            with self._lock:
                self._reports[req.subscriber_id] = req.version
                self._reports.move_to_end(req.subscriber_id)
                while len(self._reports) > MAX_REPORTED_SUBSCRIBERS:  # a flood of ids must not grow memory
                    self._reports.popitem(last=False)
            return False
        with self._lock:
            latest = self._latest
        if latest is None:
            sock.send_multipart([identity, *encode(NoVersion("no version published yet", self._latest_version))])
            return False
        manifest, buf, spans = latest
        if isinstance(req, ManifestRequest):
            if req.version is not None and req.version != manifest.version:
                sock.send_multipart([identity, *encode(NoVersion(f"version {req.version} is not served",
                                                                 manifest.version))])
            else:
                sock.send_multipart([identity, *encode(manifest)])
            return False
        if req.version != manifest.version or not 0 <= req.index < len(spans):
            sock.send_multipart([identity, *encode(NoVersion(
                f"bucket {req.index} of version {req.version} is not served", manifest.version))])
            return False
        start, end = spans[req.index]
        chunks = {str(i): buf[s:min(s + CHUNK_BYTES, end)] for i, s in enumerate(range(start, end, CHUNK_BYTES))}
        header = encode(WeightBucket(manifest.version, req.index, end - start,
                                     manifest.bucket_checksums[req.index]), chunks)
        sock.send_multipart([identity, *header], copy=False)  # the frame aliases the snapshot
        return True

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for server in self._servers:
            server.close()
        self._release_shm()


class WeightSubscriber:
    """Pulls new weight versions from one publisher (rollout worker side); one thread only.

    ``server_public`` (the run's public key) and ``keys`` are needed when the publisher uses CURVE.
    ``reuse_buffer=True`` receives every TCP version into one staging buffer: faster (no page faults),
    but the returned tensors are then only valid until the next `poll_latest` (load them into the
    model first), and a refused version overwrites the staging buffer, not the model. Versions read
    from /dev/shm never need a buffer: their tensors are views of the publisher's snapshot, valid for
    as long as the caller holds them (drop them after loading, so the publisher can rewrite the
    snapshot in place). ``verify=False`` skips the bucket checksums; it exists to measure what they
    cost (benchmarks/transport.py), not for production.
    """

    def __init__(
        self,
        address: str,
        cfg: TransportConfig,
        keys: CurveKeys | None = None,
        *,
        server_public: bytes | None = None,
        subscriber_id: str | None = None,
        reuse_buffer: bool = False,
        verify: bool = True,
    ) -> None:
        self.cfg = cfg
        self.reuse_buffer = reuse_buffer
        self.verify = verify
        self._reader = SnapshotReader()
        self._staging: torch.Tensor | None = None
        self._max_chunks = -(-cfg.bucket_bytes // CHUNK_BYTES)
        self.subscriber_id = subscriber_id or uuid.uuid4().hex[:12]
        self._keys, self._server_public = keys, server_public
        self._client = ClientSocket(address, cfg, keys, server_public=server_public)
        self._streams: list[ClientSocket] = []  # the publisher's other serving sockets
        self._stream_ports: list[int] = []
        # where this subscriber starts in the round-robin, so many subscribers do not all ask stream 0 first
        self._stream_offset = xxhash.xxh3_64_intdigest(self.subscriber_id.encode())
        self.current_version: int | None = None
        self.last_path: str | None = None
        """How the last version arrived: ``"shm"`` (same-host snapshot) or ``"tcp"``."""
        self.last_sync_s: float | None = None
        """Wall time of the last successful pull (manifest to verified), for ``weights/sync_time_s``."""

    @property
    def address(self) -> str:
        return self._client.address

    def poll_latest(self, timeout: float | None = None) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The latest version if newer than `current_version`, else None.

        Returns ``(version, state_dict)`` only after every bucket arrived and passed its checksum;
        the tensors are views into one buffer owned by the caller (over /dev/shm: into the
        publisher's snapshot, copy-on-write; load them, then drop them). Raises
        `WeightVerificationError` (version refused, `current_version` unchanged) or
        `TransportTimeout` naming the publisher; ``timeout`` bounds each wait (default cfg.timeout_s).
        """
        limit = self.cfg.timeout_s if timeout is None else timeout
        t0 = time.perf_counter()
        for _attempt in range(3):  # a newer version may supersede the one being pulled
            self._send(ManifestRequest(None), limit)
            msg, _ = self._wait(limit, "weight manifest", (WeightManifest, NoVersion))
            if isinstance(msg, NoVersion):
                log.debug("publisher %s has nothing to serve: %s", self.address, msg.reason)
                return None
            if self.current_version is not None and msg.version <= self.current_version:
                return None
            _check_manifest(msg, self.address)
            self._connect_streams(msg.stream_ports)
            state = self._pull(msg, limit)
            if state is None:
                continue
            self.current_version = msg.version
            self.last_sync_s = time.perf_counter() - t0
            self._send(VersionReport(self.subscriber_id, msg.version))
            log.info("applied weight version %d from %s (%.1f MiB, %.2fs)", msg.version, self.address,
                     msg.total_nbytes / 2**20, self.last_sync_s)
            return msg.version, state
        return None

    def _pull(self, manifest: WeightManifest, limit: float) -> dict[str, torch.Tensor] | None:
        """All buckets of ``manifest`` into one buffer; None if the version was superseded meanwhile."""
        spans = _buckets(manifest.total_nbytes, manifest.bucket_nbytes)
        if manifest.bucket_nbytes > self.cfg.bucket_bytes:
            raise WeightVerificationError(f"publisher {self.address} uses {manifest.bucket_nbytes}-byte buckets, "
                                          f"above our limit of {self.cfg.bucket_bytes}")
        local = self._pull_local(manifest, spans)
        if local is not None:
            return local
        buf = self._buffer(manifest.total_nbytes)
        raw = buf.numpy()
        clients = [self._client, *self._streams]
        n = len(clients)
        todo = [deque(i for i in range(len(spans)) if (i + self._stream_offset) % n == c) for c in range(n)]
        outstanding: dict[int, int] = {}  # bucket -> the stream it was asked on
        in_flight = [0] * n
        while outstanding or any(todo):
            for c, client in enumerate(clients):  # cfg.weight_window requests ahead on every stream
                while todo[c] and in_flight[c] < self.cfg.weight_window:
                    i = todo[c].popleft()
                    self._send(BucketRequest(manifest.version, i), limit, client)
                    outstanding[i] = c
                    in_flight[c] += 1
            c, msg, tensors = self._wait_any(clients, limit, f"bucket of weight version {manifest.version}",
                                             (WeightBucket, NoVersion))
            peer = clients[c].address
            if isinstance(msg, NoVersion):
                log.info("weight version %d superseded on %s while pulling: %s", manifest.version, peer, msg.reason)
                return None
            if msg.version != manifest.version or outstanding.get(msg.index) != c:
                continue  # a late reply to an abandoned pull
            start, end = spans[msg.index]
            pos = start
            digest = xxhash.xxh3_64()
            for i in range(len(tensors)):  # chunks in order, each copied once into the staging buffer
                chunk = tensors.get(str(i))
                if chunk is None or chunk.dtype is not torch.uint8 or pos + chunk.numel() > end:
                    break
                for off in range(pos, pos + chunk.numel(), _HASH_STEP):  # hash while still in cache
                    stop = min(off + _HASH_STEP, pos + chunk.numel())
                    buf[off:stop].copy_(chunk[off - pos:stop - pos])
                    if self.verify:
                        digest.update(raw[off:stop])
                pos += chunk.numel()
            del tensors  # release the frames now
            if pos != end or msg.nbytes != end - start:
                raise WeightVerificationError(
                    f"bucket {msg.index} of version {manifest.version} from {peer} is malformed "
                    f"({pos - start} of {end - start} bytes); keeping version {self.current_version}")
            if self.verify and digest.intdigest() != manifest.bucket_checksums[msg.index]:
                raise WeightVerificationError(
                    f"bucket {msg.index} of version {manifest.version} from {peer} failed its "
                    f"checksum; version refused, keeping version {self.current_version}")
            del outstanding[msg.index]
            in_flight[c] -= 1
        self.last_path = "tcp"
        return _unpack(manifest, buf)

    def _pull_local(self, manifest: WeightManifest, spans: list[tuple[int, int]]) -> dict[str, torch.Tensor] | None:
        """Same-host fast path: verify the publisher's /dev/shm snapshot where it lies and return views
        of it (no copy here: the caller's load into its model is the one copy).

        None when the snapshot is not reachable from here (other host, own /dev/shm, superseded or
        being rewritten): the caller pulls over TCP, which answers `NoVersion` for a superseded
        version. A checksum failure refuses the version like over TCP; before that, a failure seen
        through a reused mapping is retried once through a fresh one (a caller that wrote into an
        earlier version's tensors made those pages private to us).
        """
        if not (self.cfg.weight_shm and manifest.shm_path and manifest.host == host_id()):
            return None
        bad = None
        for fresh in (False, True):
            opened = self._reader.open(manifest.shm_path, manifest.total_nbytes, fresh=fresh)
            if opened is None:
                return None
            buf, reused = opened
            bad = self._first_bad_bucket(manifest, buf, spans)
            if bad is None:
                self.last_path = "shm"
                return _unpack(manifest, buf)
            del buf, opened  # drop the lease before mapping again
            if not reused:
                break
            log.info("bucket %d of version %d mismatched through a reused mapping; mapping it afresh", bad,
                     manifest.version)
        self._reader.close()
        raise WeightVerificationError(
            f"bucket {bad} of version {manifest.version} from {self.address} (shared memory) failed its "
            f"checksum; version refused, keeping version {self.current_version}")

    def _first_bad_bucket(self, manifest: WeightManifest, buf: torch.Tensor,
                          spans: list[tuple[int, int]]) -> int | None:
        """Index of the first bucket of ``buf`` whose xxh3 differs from the manifest (None: all match)."""
        if not self.verify:
            return None
        raw = buf.numpy()
        for i, (start, end) in enumerate(spans):
            if xxhash.xxh3_64_intdigest(raw[start:end]) != manifest.bucket_checksums[i]:
                return i
        return None

    def _buffer(self, nbytes: int) -> torch.Tensor:
        """Fresh memory per version, or the one reused staging buffer (warm pages: ~6x faster here)."""
        if not self.reuse_buffer:
            return torch.empty(nbytes, dtype=torch.uint8)
        if self._staging is None or self._staging.numel() != nbytes:
            self._staging = None  # free before allocating: one staging copy at a time
            self._staging = torch.empty(nbytes, dtype=torch.uint8)
        return self._staging

    def _connect_streams(self, ports: list[int]) -> None:
        """Connect to the publisher's other serving sockets (same host as `address`, ports from the
        manifest); a manifest naming too many or impossible ports is refused."""
        if ports == self._stream_ports:
            return
        if len(ports) >= MAX_STREAMS or any(not 0 < p < 65536 for p in ports):
            raise WeightVerificationError(f"publisher {self.address} names {len(ports)} other streams "
                                          f"(at most {MAX_STREAMS - 1}, ports 1-65535); version refused")
        for client in self._streams:
            client.close()
        host = self.address.rsplit(":", 1)[0]
        self._streams = [ClientSocket(f"{host}:{p}", self.cfg, self._keys, server_public=self._server_public)
                         for p in ports]
        self._stream_ports = list(ports)

    def _send(self, msg: msgspec.Struct, limit: float | None = None, client: ClientSocket | None = None) -> None:
        """Send a request, waiting at most ``limit`` s for the socket to accept it (a DEALER with no
        live connection blocks); ``limit=None``: best effort, drop if it would block."""
        client = client or self._client
        sock = client.sock
        if limit is not None and not sock.poll(max(1, int(limit * 1000)), zmq.POLLOUT):
            raise client.timeout(f"connection ready for a {type(msg).__name__}", limit)
        try:
            sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            if limit is not None:
                raise client.timeout(f"room for a {type(msg).__name__}", limit) from None
            log.debug("dropped %s to %s: socket busy", type(msg).__name__, client.address)

    def _wait(self, limit: float, what: str, wanted: tuple[type, ...]) -> tuple[msgspec.Struct, dict]:
        """Next reply of a wanted type on the main socket within ``limit`` s."""
        _, msg, tensors = self._wait_any([self._client], limit, what, wanted)
        return msg, tensors

    def _wait_any(self, clients: list[ClientSocket], limit: float, what: str,
                  wanted: tuple[type, ...]) -> tuple[int, msgspec.Struct, dict]:
        """Next reply of a wanted type on any of ``clients`` within ``limit`` s, with the index of the
        stream it came on; other (stale) replies are dropped."""
        poller = zmq.Poller()
        for client in clients:
            poller.register(client.sock, zmq.POLLIN)
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(max(1, int(left * 1000)))) if left > 0 else {}
            if not ready:
                for client in clients:  # name a stream that refused us or never connected, if any
                    try:
                        client.check_handshake()
                    except PeerRefused:
                        raise client.timeout(what, limit) from None
                silent = next((c for c in clients if not c.handshake_ok), clients[0])
                raise silent.timeout(what, limit)
            for c, client in enumerate(clients):
                if client.sock not in ready:
                    continue
                frames = client.sock.recv_multipart(copy=False)
                try:
                    msg, tensors = decode(frames, _REPLIES, max_frame_bytes=self.cfg.max_frame_bytes,
                                          max_tensors=self._max_chunks)
                except WireError as err:
                    log.warning("dropped malformed reply from %s: %s", client.address, err)
                    continue
                if isinstance(msg, Reject):
                    raise WeightVerificationError(f"publisher {client.address} rejected our request: {msg.reason}")
                if isinstance(msg, wanted):
                    return c, msg, tensors
                log.debug("dropped stale %s from %s", type(msg).__name__, client.address)

    def close(self) -> None:
        for client in (self._client, *self._streams):
            client.close()
        self._reader.close()
