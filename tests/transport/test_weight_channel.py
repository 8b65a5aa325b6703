"""Weight channel over real sockets and Ray actors: bit-exact versions in verified buckets, refusal of
a corrupted version, late joiners, reports and timeouts that name the peer."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import msgspec
import pytest
import ray
import torch
import xxhash
import zmq

from stgrl.transport.endpoints import TransportTimeout
from stgrl.transport.security import CurveKeys, generate_keypair
from stgrl.transport.shm_snapshot import PREFIX, SHM_DIR, ShmSnapshot, SnapshotReader, sweep_stale
from stgrl.transport.weight_channel import WeightPublisher, WeightSubscriber, WeightVerificationError
from stgrl.transport.wire import Reject, WeightBucket, WireError, decode, encode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def keys() -> CurveKeys:
    return CurveKeys(*generate_keypair())


def state_dict(version: int) -> dict[str, torch.Tensor]:
    """A small model's worth of tensors: mixed dtypes, one tensor bigger than a 1 MiB bucket."""
    g = torch.Generator().manual_seed(version)
    return {
        "embed.weight": torch.randn(1024, 384, generator=g).to(torch.bfloat16),  # 768 KiB
        "layers.0.attn.q.weight": torch.randn(700, 500, generator=g),              # 1.3 MiB: spans buckets
        "layers.0.attn.q.bias": torch.randn(500, generator=g).to(torch.float16),
        "layers.0.norm.weight": torch.randn(384, 2, generator=g)[:, 0],            # non-contiguous
        "rotary.inv_freq": torch.randn(32, generator=g, dtype=torch.float64),
        "position_ids": torch.arange(77 + version, dtype=torch.int64),
        "mask": torch.rand(13, generator=g) > 0.5,
        "scale": torch.tensor(float(version)),
        "empty": torch.empty(0, 3, dtype=torch.bfloat16),
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), k


@pytest.mark.parametrize("curve, reuse, shm", [("on", False, False), ("off", True, False), ("on", False, True)])
def test_versions_arrive_bit_exact_and_are_reported(tx, keys, curve, reuse, shm):
    cfg = tx.small_cfg(curve=curve, weight_window=2, weight_shm=shm)
    pub = WeightPublisher(cfg, keys)
    sub = WeightSubscriber(pub.address, cfg, keys, server_public=keys.public if pub.curve else None,
                           subscriber_id="w0", reuse_buffer=reuse)
    try:
        assert pub.curve == (curve == "on")
        assert sub.poll_latest(5) is None and sub.current_version is None  # nothing published yet
        manifest = pub.publish(1, state_dict(1))
        assert len(manifest.bucket_checksums) >= 3
        version, got = sub.poll_latest(5)
        assert version == 1 == sub.current_version
        assert sub.last_path == ("shm" if shm else "tcp")
        _assert_same(got, state_dict(1))
        assert sub.poll_latest(5) is None                                  # nothing newer
        pub.publish(2, state_dict(2))
        version, got = sub.poll_latest(5)
        assert version == 2
        _assert_same(got, state_dict(2))
        for _ in range(100):  # the report is fire-and-forget
            if pub.subscriber_versions() == {"w0": 2}:
                break
            time.sleep(0.05)
        assert pub.subscriber_versions() == {"w0": 2}
        with pytest.raises(ValueError, match="not newer"):
            pub.publish(2, state_dict(2))
    finally:
        sub.close()
        pub.close()


class CorruptingProxy:
    """A real man-in-the-middle: forwards subscriber <-> publisher, flips one byte of one bucket once."""

    def __init__(self, upstream: str, bucket: int, on_first_request=None) -> None:
        self.on_first_request, self.requests = on_first_request, 0
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.connect(upstream)
        self.bucket, self.corrupted, self.peer = bucket, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(50))
            if self.front in ready:
                self.peer, *frames = self.front.recv_multipart()
                self.requests += 1
                if self.requests == 2 and self.on_first_request is not None:  # first bucket request
                    self.on_first_request()
                self.back.send_multipart(frames)
            if self.back in ready:
                frames = self.back.recv_multipart()
                try:
                    msg, _ = decode(frames, WeightBucket, max_frame_bytes=1 << 30, max_tensors=64)
                except WireError:
                    msg = None
                if msg is not None and msg.index == self.bucket and not self.corrupted:
                    data = bytearray(frames[-1])
                    data[len(data) // 2] ^= 0x01
                    frames[-1] = bytes(data)
                    self.corrupted += 1
                self.front.send_multipart([self.peer, *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


def test_a_version_with_one_corrupted_bucket_is_refused_and_the_previous_stays(tx):
    cfg = tx.small_cfg(curve="off", weight_shm=False, weight_streams=1)  # one stream: all through the proxy
    pub = WeightPublisher(cfg)
    proxy = CorruptingProxy(pub.address, bucket=1)
    sub = WeightSubscriber(f"tcp://127.0.0.1:{proxy.port}", cfg)
    try:
        pub.publish(1, state_dict(1))
        proxy.corrupted = 1  # let version 1 through untouched
        _, v1 = sub.poll_latest(5)
        snapshot = {k: t.clone() for k, t in v1.items()}
        proxy.corrupted = 0
        pub.publish(2, state_dict(2))
        with pytest.raises(WeightVerificationError,
                           match=rf"bucket 1 of version 2 from tcp://127.0.0.1:{proxy.port} failed its "
                                 r"checksum; version refused, keeping version 1"):
            sub.poll_latest(5)
        assert proxy.corrupted == 1
        assert sub.current_version == 1
        _assert_same(v1, snapshot)                       # the active weights were not touched
        version, v2 = sub.poll_latest(5)                 # a clean retry applies the new version
        assert version == 2 == sub.current_version
        _assert_same(v2, state_dict(2))
    finally:
        sub.close()
        proxy.close()
        pub.close()


def test_a_version_superseded_while_pulling_is_replaced_by_the_newer_one(tx):
    cfg = tx.small_cfg(curve="off", weight_window=1, weight_shm=False, weight_streams=1)
    pub = WeightPublisher(cfg)
    proxy = CorruptingProxy(pub.address, bucket=-1, on_first_request=lambda: pub.publish(2, state_dict(2)))
    sub = WeightSubscriber(f"tcp://127.0.0.1:{proxy.port}", cfg)
    try:
        pub.publish(1, state_dict(1))
        version, got = sub.poll_latest(5)  # started on version 1, which vanished under it
        assert version == 2
        _assert_same(got, state_dict(2))
    finally:
        sub.close()
        proxy.close()
        pub.close()


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:  # flip one byte in the real snapshot
        f.seek(offset)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x80]))


@pytest.mark.parametrize("hold_previous", [True, False])
def test_same_host_snapshot_corrupted_in_shared_memory_is_refused(tx, hold_previous):
    """Refused both when version 2 is a new file (version 1 still held) and when it was rewritten into
    the file the subscriber already has mapped (version 1 dropped)."""
    cfg = tx.small_cfg(curve="off", weight_shm=True)
    pub = WeightPublisher(cfg)
    sub = WeightSubscriber(pub.address, cfg)
    unchecked = WeightSubscriber(pub.address, cfg, verify=False)
    try:
        first = pub.publish(1, state_dict(1))
        inode = os.stat(first.shm_path).st_ino
        _, v1 = sub.poll_latest(5)
        assert sub.last_path == "shm"
        snapshot = {k: t.clone() for k, t in v1.items()}
        if not hold_previous:
            del v1
        manifest = pub.publish(2, state_dict(2))
        assert Path(manifest.shm_path).exists() and not Path(first.shm_path).exists()  # v1 released
        assert (os.stat(manifest.shm_path).st_ino == inode) == (not hold_previous)     # or rewritten
        _flip_byte(manifest.shm_path, 2 * manifest.bucket_nbytes + 5)                  # in bucket 2
        with pytest.raises(WeightVerificationError, match="bucket 2 of version 2 .*shared memory.* keeping version 1"):
            sub.poll_latest(5)
        assert sub.current_version == 1
        if hold_previous:
            _assert_same(v1, snapshot)
        version, got = unchecked.poll_latest(5)  # checksums off: the corruption goes through
        assert version == 2 and unchecked.last_path == "shm"
        assert not torch.equal(got["layers.0.attn.q.weight"], state_dict(2)["layers.0.attn.q.weight"])
    finally:
        unchecked.close()
        sub.close()
        pub.close()
    assert not Path(manifest.shm_path).exists()  # close removes the snapshot file


def test_same_host_snapshot_is_rewritten_in_place_only_when_no_one_holds_the_previous_version(tx):
    """Only a snapshot of the same size is rewritten (a model's weights keep their size)."""
    def same_size(version: int) -> dict[str, torch.Tensor]:
        return {**state_dict(version), "position_ids": torch.arange(80) * version}

    cfg = tx.small_cfg(curve="off", weight_shm=True)
    pub = WeightPublisher(cfg)
    sub = WeightSubscriber(pub.address, cfg)
    try:
        m1 = pub.publish(1, same_size(1))
        first = os.stat(m1.shm_path).st_ino
        _, v1 = sub.poll_latest(5)
        m2 = pub.publish(2, same_size(2))              # v1 still held: a new file, v1 never changes
        assert os.stat(m2.shm_path).st_ino != first
        _, v2 = sub.poll_latest(5)
        _assert_same(v1, same_size(1))
        _assert_same(v2, same_size(2))
        assert m2.shm_path != m1.shm_path and not Path(m1.shm_path).exists()
        inode = os.stat(m2.shm_path).st_ino
        del v1, v2                                      # loaded and dropped: the leases end
        m3 = pub.publish(3, same_size(3))
        assert os.stat(m3.shm_path).st_ino == inode and not Path(m2.shm_path).exists()  # same file, renamed
        _, v3 = sub.poll_latest(5)
        _assert_same(v3, same_size(3))
        # writing into a received tensor changes only the caller's copy, never the publisher's snapshot
        scale = next(e for e in m3.tensors if e.name == "scale")
        v3["scale"].fill_(-1.0)
        on_file = Path(m3.shm_path).read_bytes()[scale.offset:scale.offset + scale.nbytes]
        assert on_file == same_size(3)["scale"].numpy().tobytes()
        del v3
        m4 = pub.publish(4, same_size(4))              # rewritten in place again
        assert os.stat(m4.shm_path).st_ino == inode
        version, v4 = sub.poll_latest(5)                # the page written above is private to us: remapped
        assert version == 4 and sub.last_path == "shm"
        _assert_same(v4, same_size(4))
    finally:
        sub.close()
        pub.close()


def test_a_snapshot_is_leased_only_while_its_tensors_live_and_never_while_rewritten():
    snap = ShmSnapshot(1 << 16, 1)
    reader = SnapshotReader()
    try:
        snap.tensor().fill_(1)
        snap.done_writing()
        old = str(snap.path)
        t, reused = reader.open(old, 1 << 16)
        assert not reused and int(t[-1]) == 1
        view = t[100:200].view(torch.int16)
        del t
        assert not snap.try_rewrite(2)                  # a view of version 1 is alive: leased
        del view
        t, reused = reader.open(old, 1 << 16)
        assert reused                                   # same file: the cached mapping
        del t
        assert snap.try_rewrite(2)                      # nothing alive: taken for version 2 and renamed
        assert reader.open(old, 1 << 16) is None        # a stale manifest no longer resolves
        assert reader.open(str(snap.path), 1 << 16) is None  # being written
        snap.tensor().fill_(2)
        snap.done_writing()
        assert reader.open(str(snap.path), 1 << 15) is None  # size mismatch
        t, reused = reader.open(str(snap.path), 1 << 16)
        assert reused and int(t[0]) == 2 == int(t[-1])  # rewritten under the same mapping
    finally:
        reader.close()
        snap.release()
    assert not snap.path.exists()


def test_shm_paths_are_validated_and_stale_snapshots_swept(tmp_path):
    reader = SnapshotReader()
    outside = tmp_path / "stgrl-weights-1-1"
    outside.write_bytes(b"x" * 10)
    assert reader.open(str(outside), 10) is None                             # outside /dev/shm
    assert reader.open("/dev/shm/../etc/passwd", 10) is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = SHM_DIR / f"{PREFIX}{dead.pid}-7"
    stale.write_bytes(b"x")
    mine = SHM_DIR / f"{PREFIX}{os.getpid()}-999999"
    mine.write_bytes(b"x")
    try:
        assert sweep_stale() >= 1
        assert not stale.exists() and mine.exists()
    finally:
        stale.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_waits_time_out_with_the_publishers_address(tx):
    cfg = tx.small_cfg(curve="off")
    pub = WeightPublisher(cfg)
    address = pub.address
    pub.close()  # nobody serves there any more
    sub = WeightSubscriber(address, cfg)
    try:
        with pytest.raises(TransportTimeout, match=f"no weight manifest from {address} within 0.5s"):
            sub.poll_latest(0.5)
    finally:
        sub.close()


def _digest(sd: dict[str, torch.Tensor]) -> int:
    return xxhash.xxh3_64_intdigest(b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                             for t in sd.values()))


def test_a_late_subscriber_gets_the_latest_version(ray_cluster, tx, keys):
    tx.ship_by_value(__name__)

    @ray.remote(num_cpus=0)
    class Learner:
        def __init__(self, cfg, keys):
            torch.set_num_threads(1)
            self.pub = WeightPublisher(cfg, keys)

        def address(self):
            return self.pub.address

        def publish(self, version):
            self.pub.publish(version, state_dict(version))

        def reports(self):
            return self.pub.subscriber_versions()

        def close(self):
            self.pub.close()  # removes its /dev/shm snapshot

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self, address, cfg, keys, name):
            torch.set_num_threads(1)
            self.sub = WeightSubscriber(address, cfg, keys, server_public=keys.public, subscriber_id=name)

        def poll(self):
            got = self.sub.poll_latest(20)
            return None if got is None else (got[0], _digest(got[1]), self.sub.last_path)

    cfg = tx.small_cfg(curve="on", timeout_s=20.0, weight_shm=True)
    tcp_only = tx.small_cfg(curve="on", timeout_s=20.0, weight_shm=False)
    learner = Learner.remote(cfg, keys)
    address = ray.get(learner.address.remote(), timeout=60)
    early = Worker.remote(address, cfg, keys, "early")                # same host: reads /dev/shm
    ray.get(learner.publish.remote(1), timeout=60)
    assert ray.get(early.poll.remote(), timeout=60) == (1, _digest(state_dict(1)), "shm")
    ray.get(learner.publish.remote(2), timeout=60)
    ray.get(learner.publish.remote(3), timeout=60)
    late = Worker.remote(address, tcp_only, keys, "late")             # joins after three versions, TCP
    assert ray.get(late.poll.remote(), timeout=60) == (3, _digest(state_dict(3)), "tcp")
    assert ray.get(early.poll.remote(), timeout=60) == (3, _digest(state_dict(3)), "shm")  # skips version 2
    assert ray.get(late.poll.remote(), timeout=60) is None
    for _ in range(100):  # reports are fire-and-forget: allow the serving thread a moment
        if ray.get(learner.reports.remote(), timeout=60) == {"early": 3, "late": 3}:
            break
        time.sleep(0.05)
    assert ray.get(learner.reports.remote(), timeout=60) == {"early": 3, "late": 3}
    ray.get(learner.close.remote(), timeout=60)
    for a in (late, early, learner):
        ray.kill(a)


def test_each_side_holds_at_most_one_extra_copy(ray_cluster, tx):
    """Peak RSS growth while publishing / pulling a 128 MiB state dict stays near one copy, also on a
    second version (the previous snapshot is released first; the caller drops the old state dict)."""
    tx.ship_by_value(__name__)
    mib = 128

    def peak_rss() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def rss_anon() -> int:
        """Private (anonymous) resident memory: excludes the publisher's shared snapshot pages."""
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    @ray.remote(num_cpus=0)
    class Side:
        def __init__(self, cfg):
            torch.set_num_threads(1)
            self.cfg, self.pub, self.sub = cfg, None, None

        def serve(self):
            self.sd = {f"w{i}": torch.full((mib // 8, 1 << 20), i, dtype=torch.bfloat16).view(-1, 4096)
                       for i in range(4)}  # 4 x 32 MiB, already resident
            self.pub = WeightPublisher(self.cfg)
            return self.pub.address

        def publish(self, version):
            before = peak_rss()
            self.pub.publish(version, self.sd)
            return peak_rss() - before

        def pull(self, address):
            if self.sub is None:
                self.sub = WeightSubscriber(address, self.cfg)
            self.got = None  # the caller has loaded the previous version and dropped it
            before, anon = peak_rss(), rss_anon()
            self.got = self.sub.poll_latest(20)
            return peak_rss() - before, rss_anon() - anon, self.sub.last_path

        def close(self):
            if self.pub is not None:
                self.pub.close()

    for shm in (False, True):
        # one stream: in flight are then `weight_window` (2) buckets; with 4 streams up to 8 x 16 MiB
        # may be in flight at once, depending on how fast the puller copies (flaky under load)
        cfg = tx.small_cfg(curve="off", weight_bucket_mib=16, max_frame_mib=16, weight_shm=shm, timeout_s=20.0,
                           weight_streams=1)
        learner, worker = Side.remote(cfg), Side.remote(cfg)
        address = ray.get(learner.serve.remote(), timeout=60)
        one = mib << 20
        growth = [ray.get(learner.publish.remote(1), timeout=60)]
        pulled = [ray.get(worker.pull.remote(address), timeout=60)]
        growth.append(ray.get(learner.publish.remote(2), timeout=60))
        pulled.append(ray.get(worker.pull.remote(address), timeout=60))
        assert all(p == ("shm" if shm else "tcp") for *_, p in pulled)
        # one copy, plus slack for in-flight frames (window 2 x 16 MiB) and allocator noise
        assert growth[0] <= 1.25 * one and growth[1] <= 0.25 * one, (shm, growth)
        assert all(anon <= 1.35 * one for _, anon, _ in pulled), (shm, pulled)  # the new version's buffer
        if shm:  # no buffer at all: the tensors are views of the publisher's snapshot
            assert all(anon <= 0.1 * one for _, anon, _ in pulled), pulled
        # the peak also counts the publisher's snapshot pages while they are mapped (shared, not a copy)
        shared = one if shm else 0
        assert pulled[0][0] <= 1.35 * one + shared and pulled[1][0] <= 0.35 * one + shared, (shm, pulled)
        ray.get(learner.close.remote(), timeout=60)
        ray.kill(learner)
        ray.kill(worker)


def test_publisher_rejects_malformed_requests_and_keeps_serving(tx):
    cfg = tx.small_cfg(curve="off", weight_shm=False)
    pub = WeightPublisher(cfg)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(pub.address)
    sub = WeightSubscriber(pub.address, cfg)
    try:
        pub.publish(1, state_dict(1))
        raw.send_multipart([b"\xc1not msgpack"])
        raw.send_multipart(encode(WeightBucket(1, 0, 5, 0)))  # a reply type sent as a request
        reasons = []
        while len(reasons) < 2 and raw.poll(5000):
            reasons.append(decode(raw.recv_multipart(), Reject, max_frame_bytes=1 << 20)[0].reason)
        assert "bad header" in reasons[0] and "expected ManifestRequest | BucketRequest" in reasons[1]
        version, got = sub.poll_latest(5)
        assert version == 1
        _assert_same(got, state_dict(1))
    finally:
        raw.close(0)
        sub.close()
        pub.close()


@pytest.mark.parametrize("curve", ["on", "off"])
def test_buckets_are_spread_over_every_stream_and_a_bad_one_refuses_the_version(tx, keys, curve):
    """Several serving sockets (`transport.weight_streams`): a subscriber given only the first address
    learns the others from the manifest, asks every one of them for buckets, and a bucket that
    arrives corrupt on any stream refuses the whole version."""
    cfg = tx.small_cfg(curve=curve, weight_shm=False, weight_streams=3, weight_window=1)
    pub = WeightPublisher(cfg, keys)
    sub = WeightSubscriber(pub.address, cfg, keys, server_public=keys.public if pub.curve else None)
    try:
        assert len(set(pub.addresses)) == 3 and pub.addresses[0] == pub.address
        manifest = pub.publish(1, state_dict(1))
        assert len(manifest.stream_ports) == 2
        version, got = sub.poll_latest(5)
        assert version == 1
        _assert_same(got, state_dict(1))
        assert all(n > 0 for n in pub.buckets_served), pub.buckets_served
        assert sum(pub.buckets_served) == len(manifest.bucket_checksums)
        manifest = pub.publish(2, state_dict(2))
        pub._latest[1][manifest.bucket_nbytes + 5] ^= 0x10  # bucket 1 of the served snapshot goes bad
        with pytest.raises(WeightVerificationError, match=r"bucket 1 of version 2 from tcp://\S+ failed its "
                                                          r"checksum; version refused, keeping version 1"):
            sub.poll_latest(5)
        assert sub.current_version == 1
    finally:
        sub.close()
        pub.close()


def test_a_manifest_naming_too_many_streams_is_refused(tx):
    from stgrl.transport.weight_channel import MAX_STREAMS

    cfg = tx.small_cfg(curve="off", weight_shm=False, weight_streams=1)
    pub = WeightPublisher(cfg)
    sub = WeightSubscriber(pub.address, cfg)
    try:
        pub.publish(1, state_dict(1))
        manifest, buf, spans = pub._latest
        pub._latest = (msgspec.structs.replace(manifest, stream_ports=[1] * MAX_STREAMS), buf, spans)
        with pytest.raises(WeightVerificationError, match="names 64 other streams"):
            sub.poll_latest(5)
        assert sub.current_version is None
    finally:
        sub.close()
        pub.close()
