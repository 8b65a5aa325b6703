"""Transport benchmark (issue 6): weight sync, wire encoding and round-trip latency between two Ray
actors on this machine, CURVE off and on.

    .venv/bin/python benchmarks/transport.py --gb 1.0 --out runs/bench/transport.json

Measures
- weight sync of a ~``--gb`` GB bf16 state dict, publisher actor -> subscriber actor, end to end:
  manifest, all buckets, checksums, and the load (``copy_``) into the subscriber's model, i.e.
  preallocated, touched tensors of the same shapes. Over TCP (CURVE off and on; into fresh memory and
  into a reused staging buffer) and over the same-host /dev/shm path (checksums on, and off to
  measure their cost). Best of ``--repeats`` syncs against a memcpy of the same bytes into a
  preallocated, touched buffer in the same actor, one torch thread, measured right before each sync.
  The time to the verified state dict without the load (``pull``) is reported too.
- msgspec (`stgrl.transport.wire`) vs pickle encode+decode of a realistic trajectory group, with and
  without its tensors. Pickle appears only here, as the baseline; actors never unpickle.
- small-message (Ack) round-trip latency p50/p99 over DEALER/ROUTER.

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


def _shapes(gb: float) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a transformer's bf16 tensors (embeddings, attention and MLP blocks), ~gb GB."""
    hidden, inter, vocab = 2048, 5632, 32000
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (vocab, hidden)}
    nbytes, layer = vocab * hidden * 2, 0
    while nbytes < gb * 1e9:
        p = f"layers.{layer}."
        for name, shape in [("q", (hidden, hidden)), ("k", (hidden // 4, hidden)), ("v", (hidden // 4, hidden)),
                            ("o", (hidden, hidden)), ("gate", (inter, hidden)), ("up", (inter, hidden)),
                            ("down", (hidden, inter))]:
            shapes[p + name + ".weight"] = shape
            nbytes += shape[0] * shape[1] * 2
        shapes[p + "norm.weight"] = (hidden,)
        nbytes += hidden * 2
        layer += 1
    return shapes


def _state_dict(gb: float):
    """The learner's bf16 state dict (random weights, norms at one)."""
    import torch

    return {name: torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1
            else torch.randn(*shape).to(torch.bfloat16) for name, shape in _shapes(gb).items()}


def _make_actors():
    import ray
    import torch

    from stgrl.transport.endpoints import ClientSocket, ServerSocket
    from stgrl.transport.weight_channel import WeightPublisher, WeightSubscriber
    from stgrl.transport.wire import Ack, decode, encode

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
        def __init__(self, address, cfg, keys, server_public, reuse, verify, gb):
            torch.set_num_threads(1)
            self.sub = WeightSubscriber(address, cfg, keys, server_public=server_public, reuse_buffer=reuse,
                                        verify=verify)
            # the rollout model the weights are loaded into: preallocated and touched
            self.model = {name: torch.zeros(shape, dtype=torch.bfloat16) for name, shape in _shapes(gb).items()}
            nbytes = sum(t.numel() * t.element_size() for t in self.model.values())
            self.src = torch.ones(nbytes, dtype=torch.uint8)  # memcpy baseline, same bytes, both touched
            self.dst = torch.zeros(nbytes, dtype=torch.uint8)

        def memcpy(self) -> float:
            t0 = time.perf_counter()
            self.dst.copy_(self.src)
            return time.perf_counter() - t0

        def sync(self):
            """memcpy baseline, then pull the new version and load it into the model (end to end)."""
            memcpy_s = min(self.memcpy() for _ in range(2))
            t0 = time.perf_counter()
            got = self.sub.poll_latest(300)
            t1 = time.perf_counter()
            assert got is not None
            version, state = got
            for name, t in state.items():
                self.model[name].copy_(t)
            t2 = time.perf_counter()
            del got, state, t  # the caller drops the version once loaded (lets the snapshot be reused)
            return {"version": version, "pull_s": t1 - t0, "sync_s": t2 - t0, "memcpy_s": memcpy_s,
                    "path": self.sub.last_path}

        def close(self):
            self.sub.close()
            self.model = self.src = self.dst = None

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
            msg = Ack(["w0/1"])  # a small control-sized message
            rtts = []
            for i in range(n + 50):
                t0 = time.perf_counter()
                client.sock.send_multipart(encode(msg))
                if not client.sock.poll(10_000):
                    raise client.timeout("echo", 10)
                decode(client.sock.recv_multipart(copy=False), Ack, max_frame_bytes=1 << 20)
                if i >= 50:  # warm-up excluded
                    rtts.append(time.perf_counter() - t0)
            client.close()
            rtts.sort()
            return rtts

    return Learner, Worker, Echo, Pinger


def bench_weights(args, cfg, keys, curve: bool, variants: list[tuple[str, bool, bool]]) -> dict:
    """One publisher; per variant ``(label, reuse_buffer, verify)`` a fresh subscriber that syncs
    ``--repeats`` versions (plus one first sync into a fresh /dev/shm mapping, reported apart)."""
    import ray

    Learner, Worker, _, _ = _make_actors()
    learner = Learner.remote(cfg, keys, args.gb)
    address = ray.get(learner.address.remote())
    path = "shm" if cfg.weight_shm else "tcp"
    out: dict = {"curve": curve, "path": path, "loadavg_start": os.getloadavg()}
    for label, reuse, verify in variants:
        worker = Worker.remote(address, cfg, keys, keys.public if curve else None, reuse, verify, args.gb)
        syncs, publish_s = [], []
        for r in range(args.repeats + (path == "shm")):
            version, nbytes, pack_s = ray.get(learner.publish.remote())
            got = ray.get(worker.sync.remote())
            assert got["version"] == version and got["path"] == path, got
            syncs.append(got)
            publish_s.append(pack_s)
            log.info("%s %s %s sync %d: pull %.3f s, pull+load %.3f s (%.2f GB/s), memcpy %.3f s, publish %.2f s",
                     path, "curve" if curve else "plain", label, r, got["pull_s"], got["sync_s"],
                     nbytes / got["sync_s"] / 1e9, got["memcpy_s"], pack_s)
        ray.get(worker.close.remote())
        ray.kill(worker)
        first = None
        if path == "shm":  # the first sync maps a new file; later ones reuse the mapping
            first, syncs = syncs[0], syncs[1:]
        memcpy_s = min(s["memcpy_s"] for s in syncs)
        best_sync = min(s["sync_s"] for s in syncs)
        best_pull = min(s["pull_s"] for s in syncs)
        out[label] = {
            "syncs": syncs, "first_sync": first, "publish_s": publish_s,
            "memcpy_gbps": nbytes / memcpy_s / 1e9, "sync_gbps": nbytes / best_sync / 1e9,
            "ratio_vs_memcpy": memcpy_s / best_sync, "pull_only_ratio_vs_memcpy": memcpy_s / best_pull,
        }
        out["nbytes"] = nbytes
    ray.get(learner.close.remote())
    ray.kill(learner)
    out["loadavg_end"] = os.getloadavg()
    return out


def bench_encoding(repeats: int) -> dict:
    """msgspec+frames vs pickle for one realistic trajectory group (G=8, 1k tokens each, 16 frames)."""
    import torch

    from stgrl.transport.wire import Completion, KeyFrame, ScoringSample, TrajectoryGroup, decode, encode

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

    from stgrl.transport.config import TransportConfig
    from stgrl.transport.security import CurveKeys, generate_keypair

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
        tcp = [("fresh", False, True), ("reuse", True, True)]
        shm = [("verify", False, True), ("no_verify", False, False)]
        for name, curve, variants in [("shm", False, shm), ("plain", False, tcp), ("curve", True, tcp)]:
            cfg = TransportConfig(curve="on" if curve else "off", weight_bucket_mib=args.bucket_mib, timeout_s=300,
                                  weight_shm=variants is shm)
            if variants is tcp:
                results[f"latency_{name}"] = bench_latency(cfg, keys, curve, args.latency_n)
                log.info("latency %s: %s", name, results[f"latency_{name}"])
            results[f"weights_{name}"] = bench_weights(args, cfg, keys, curve, variants)
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
