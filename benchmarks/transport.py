"""Transport benchmark (issue 6): weight sync, wire encoding and round-trip latency between two Ray
actors on this machine, CURVE off and on.

    .venv/bin/python benchmarks/transport.py --gb 1.0 --out runs/bench/transport.json

Measures
- weight sync of a ~``--gb`` GB bf16 state dict, publisher actor -> subscriber actor (manifest, all
  buckets, checksums) over TCP (CURVE off and on) and over the same-host /dev/shm path, best of
  ``--repeats`` pulls into fresh memory and into a reused staging buffer, against a memcpy of the
  same bytes into a preallocated buffer in the subscriber.
- msgspec (`stgrl.actors.wire`) vs pickle encode+decode of a realistic trajectory group, with and
  without its tensors. Pickle appears only here, as the baseline; actors never unpickle.
- small-message (Control) round-trip latency p50/p99 over DEALER/ROUTER.

Starts its own Ray instance in a temp dir (state, token and logs never touch the home directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec

log = logging.getLogger("benchmarks.transport")


def _state_dict(gb: float):
    """bf16 tensors shaped like a transformer's: embeddings, attention and MLP blocks."""
    import torch

    hidden, inter, vocab = 2048, 5632, 32000
    sd = {"embed_tokens.weight": torch.randn(vocab, hidden).to(torch.bfloat16)}
    layer = 0
    while sum(t.numel() * 2 for t in sd.values()) < gb * 1e9:
        p = f"layers.{layer}."
        for name, shape in [("q", (hidden, hidden)), ("k", (hidden // 4, hidden)), ("v", (hidden // 4, hidden)),
                            ("o", (hidden, hidden)), ("gate", (inter, hidden)), ("up", (inter, hidden)),
                            ("down", (hidden, inter))]:
            sd[p + name + ".weight"] = torch.randn(*shape).to(torch.bfloat16)
        sd[p + "norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        layer += 1
    return sd


def _make_actors():
    import ray
    import torch

    from stgrl.actors.endpoints import ClientSocket, ServerSocket
    from stgrl.actors.weight_channel import WeightPublisher, WeightSubscriber
    from stgrl.actors.wire import Control, decode, encode

    @ray.remote(num_cpus=0)
    class Learner:
        def __init__(self, cfg, keys, gb):
            torch.set_num_threads(1)
            self.pub = WeightPublisher(cfg, keys)
            self.sd = _state_dict(gb)
            self.version = 0

        def address(self):
            return self.pub.address

        def publish(self):
            self.version += 1
            t0 = time.perf_counter()
            m = self.pub.publish(self.version, self.sd)
            return self.version, m.total_nbytes, time.perf_counter() - t0

        def close(self):
            self.pub.close()
            self.sd = None

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self, address, cfg, keys, server_public, reuse):
            torch.set_num_threads(1)
            self.sub = WeightSubscriber(address, cfg, keys, server_public=server_public, reuse_buffer=reuse)

        def pull(self):
            t0 = time.perf_counter()
            got = self.sub.poll_latest(300)
            dt = time.perf_counter() - t0
            assert got is not None
            return got[0], dt, self.sub.last_path

        def memcpy(self, nbytes, repeats):
            src = torch.ones(nbytes, dtype=torch.uint8)
            dst = torch.zeros(nbytes, dtype=torch.uint8)  # preallocated and touched
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                dst.copy_(src)
                times.append(time.perf_counter() - t0)
            return min(times)

        def close(self):
            self.sub.close()

    @ray.remote(num_cpus=0)
    class Echo:
        def __init__(self, cfg, keys):
            self.server = ServerSocket(cfg, keys)
            self._stop = threading.Event()
            threading.Thread(target=self._run, daemon=True).start()

        def address(self):
            return self.server.address

        def _run(self):
            sock = self.server.sock
            while not self._stop.is_set():
                if sock.poll(100):
                    sock.send_multipart(sock.recv_multipart(copy=False), copy=False)

        def close(self):
            self._stop.set()

    @ray.remote(num_cpus=0)
    class Pinger:
        def run(self, address, cfg, keys, server_public, n):
            client = ClientSocket(address, cfg, keys, server_public=server_public)
            msg = Control("heartbeat", 1, {"worker": "w0"})
            rtts = []
            for i in range(n + 50):
                t0 = time.perf_counter()
                client.sock.send_multipart(encode(msg))
                if not client.sock.poll(10_000):
                    raise client.timeout("echo", 10)
                decode(client.sock.recv_multipart(copy=False), Control, max_frame_bytes=1 << 20)
                if i >= 50:  # warm-up excluded
                    rtts.append(time.perf_counter() - t0)
            client.close()
            rtts.sort()
            return rtts

    return Learner, Worker, Echo, Pinger


def bench_weights(args, cfg, keys, curve: bool) -> dict:
    import ray

    Learner, Worker, _, _ = _make_actors()
    learner = Learner.remote(cfg, keys, args.gb)
    address = ray.get(learner.address.remote())
    out: dict = {"curve": curve, "path": "shm" if cfg.weight_shm else "tcp"}
    for reuse in (False, True):
        worker = Worker.remote(address, cfg, keys, keys.public if curve else None, reuse)
        pulls = []
        for r in range(args.repeats):
            version, nbytes, pack_s = ray.get(learner.publish.remote())
            got_version, dt, path = ray.get(worker.pull.remote())
            assert got_version == version
            assert path == ("shm" if cfg.weight_shm else "tcp"), path
            pulls.append(dt)
            log.info("curve=%s shm=%s reuse=%s pull %d: %.2f s (%.2f GB/s), publish/pack %.2f s", curve,
                     cfg.weight_shm, reuse, r, dt, nbytes / dt / 1e9, pack_s)
        memcpy_s = ray.get(worker.memcpy.remote(nbytes, 3))
        ray.get(worker.close.remote())
        ray.kill(worker)
        key = "reuse" if reuse else "fresh"
        best = min(pulls)
        out[key] = {"pull_s": pulls, "gbps": nbytes / best / 1e9, "memcpy_gbps": nbytes / memcpy_s / 1e9,
                    "ratio_vs_memcpy": memcpy_s / best}
        out["nbytes"] = nbytes
        out["publish_pack_s"] = pack_s
    ray.get(learner.close.remote())
    ray.kill(learner)
    return out


def bench_encoding(repeats: int) -> dict:
    """msgspec+frames vs pickle for one realistic trajectory group (G=8, 1k tokens each, 16 frames)."""
    import torch

    from stgrl.actors.wire import Completion, KeyFrame, ScoringSample, TrajectoryGroup, decode, encode

    g = torch.Generator().manual_seed(0)
    completions = [Completion(token_ids=torch.randint(0, 150_000, (1024,), generator=g).tolist(),
                              behaviour_logprobs=(-torch.rand(1024, generator=g)).tolist(),
                              text="<think>" + "the red car at <t>3.5</t>s " * 150 + "</think>",
                              finish_reason="stop") for _ in range(8)]
    sample = ScoringSample(id="s", task="spatio_temporal", completion="", frame_size=[448.0, 252.0],
                           answer="B", options=["A. x", "B. y"], key_frames=[KeyFrame(i, i * 0.5) for i in range(4)],
                           key_items={str(i): {"red car": [[0.1, 0.2, 0.3, 0.4]]} for i in range(4)}, span=[1.0, 5.0])
    group = TrajectoryGroup(group_id="3/p1", prompt_id="p1", step=3, policy_version=2, prompt_len=8400,
                            completions=completions, sample=sample, frame_size=[448, 252],
                            timings={"generate_s": 1.2, "prepare_s": 0.3})
    tensors = {"input_ids": torch.randint(0, 150_000, (1, 8400), generator=g),
               "attention_mask": torch.ones(1, 8400, dtype=torch.int64),
               "pixel_values": torch.randn(8192, 1176, generator=g).to(torch.bfloat16),
               "image_grid_thw": torch.tensor([[1, 16, 32]] * 16)}

    def timed(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    def ours(with_tensors: bool):
        def run():
            frames = encode(group, tensors if with_tensors else None)
            decode(frames, TrajectoryGroup, max_frame_bytes=1 << 30)
        return run

    def baseline(with_tensors: bool):
        obj = (msgspec.structs.asdict(group), tensors if with_tensors else None)

        def run():
            pickle.loads(pickle.dumps(obj, protocol=5))  # noqa: S301 - benchmark baseline only, own bytes
        return run

    out = {}
    for with_tensors in (False, True):
        key = "with_tensors" if with_tensors else "header_only"
        m, p = timed(ours(with_tensors)), timed(baseline(with_tensors))
        out[key] = {"msgspec_ms": m * 1e3, "pickle_ms": p * 1e3, "pickle_over_msgspec": p / m}
    out["tensor_mib"] = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    out["header_kib"] = len(encode(group)[0]) / 1024
    return out


def bench_latency(cfg, keys, curve: bool, n: int) -> dict:
    import ray

    _, _, Echo, Pinger = _make_actors()
    echo = Echo.remote(cfg, keys)
    address = ray.get(echo.address.remote())
    rtts = ray.get(Pinger.remote().run.remote(address, cfg, keys, keys.public if curve else None, n))
    ray.get(echo.close.remote())
    ray.kill(echo)
    return {"curve": curve, "n": n, "p50_us": statistics.median(rtts) * 1e6,
            "p99_us": rtts[int(0.99 * (len(rtts) - 1))] * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="state dict size (GB)")
    parser.add_argument("--bucket-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import ray

    from stgrl.actors.config import TransportConfig
    from stgrl.actors.security import CurveKeys, generate_keypair

    base = Path(tempfile.mkdtemp(prefix="stgrl-bench-", dir="/tmp"))
    (base / "home").mkdir()
    os.environ["HOME"] = str(base / "home")
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(base / "ray"), runtime_env={"env_vars": env})
    keys = CurveKeys(*generate_keypair())
    results: dict = {"host": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    try:
        results["encoding"] = bench_encoding(max(3, args.repeats))
        log.info("encoding: %s", results["encoding"])
        for name, curve, shm in [("plain", False, False), ("curve", True, False), ("shm", False, True)]:
            cfg = TransportConfig(curve="on" if curve else "off", weight_bucket_mib=args.bucket_mib, timeout_s=300,
                                  weight_shm=shm)
            if not shm:
                results[f"latency_{name}"] = bench_latency(cfg, keys, curve, args.latency_n)
                log.info("latency %s: %s", name, results[f"latency_{name}"])
            results[f"weights_{name}"] = bench_weights(args, cfg, keys, curve)
            log.info("weights %s: %s", name, results[f"weights_{name}"])
    finally:
        ray.shutdown()
    results["host"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    log.info("results:\n%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
