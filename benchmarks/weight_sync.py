"""Weight sync across two pods (issue 20): one learner-side `WeightPublisher` -> 4 `WeightSubscriber`s.

    sudo .venv/bin/python benchmarks/weight_sync.py --gb 1.0 --out runs/bench/weight_sync.json

Two network-namespace pods from the pod box (`scripts/podbox.py`: own netns + veth into a bridge,
own hostname and /dev/shm, so the same-host /dev/shm path is never taken): pod ``learner`` runs the
publisher, pod ``rollout`` runs 4 subscriber processes that start together and each pull the whole
``--gb`` GB bf16 version (manifest, every bucket, checksums) into fresh memory. CURVE off and on,
``transport.weight_streams`` 1 and 4. In the same run, between the same two pods: a memcpy of the
same bytes (one thread, preallocated and touched) and a `torch.distributed` gloo broadcast of the
same bytes from the learner pod to 4 ranks in the rollout pod.

Reported: aggregate GB/s (4 x bytes over the wall time from the first start to the last verified
version), per-subscriber GB/s, ratios to memcpy and to gloo, and from the measured per-stream rates
a paper estimate for a 7B bf16 model to 4 workers over a 100 Gb/s NIC. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.weight_sync")
SUBSCRIBERS = 4
PARAMS_7B = 8.29e9  # Qwen2.5-VL-7B (text + vision)
NIC_GBPS = 100 / 8  # 100 Gb/s in GB/s


def _shapes(gb: float) -> dict[str, tuple[int, ...]]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from transport import _shapes as shapes  # the transport benchmark's transformer-shaped bf16 tensors

    return shapes(gb)


def _wait_file(path: Path, timeout: float = 600.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.02)
    return path.read_text()


def _cfg(args):
    from stgrl.transport.config import TransportConfig

    return TransportConfig(bind_host=args.bind, curve=args.curve, weight_shm=False, weight_streams=args.streams,
                           timeout_s=300.0)


def _keys(work: Path):
    from stgrl.transport.security import CurveKeys

    k = json.loads((work / "keys.json").read_text())
    return CurveKeys(bytes.fromhex(k["public"]), bytes.fromhex(k["secret"]))


def role_publisher(args) -> None:
    import torch

    from stgrl.transport.weight_channel import WeightPublisher

    torch.set_num_threads(1)
    work = Path(args.work)
    state = {name: torch.ones(shape, dtype=torch.bfloat16) for name, shape in _shapes(args.gb).items()}
    pub = WeightPublisher(_cfg(args), _keys(work) if args.curve == "on" else None)
    m = pub.publish(1, state)
    del state
    (work / "publisher.json").write_text(json.dumps({"address": pub.address, "nbytes": m.total_nbytes}))
    _wait_file(work / "stop")
    log.info("buckets served per stream: %s", pub.buckets_served)
    pub.close()


def role_subscriber(args) -> None:
    import torch

    from stgrl.transport.weight_channel import WeightSubscriber

    torch.set_num_threads(1)
    work = Path(args.work)
    info = json.loads(_wait_file(work / "publisher.json"))
    keys = _keys(work) if args.curve == "on" else None
    sub = WeightSubscriber(info["address"], _cfg(args), keys, server_public=keys.public if keys else None,
                           subscriber_id=f"sub-{args.index}")
    out: dict[str, float] = {}
    if args.index == 0:  # memcpy of the same bytes, before anyone pulls
        src = torch.ones(info["nbytes"], dtype=torch.uint8)
        dst = torch.zeros_like(src)
        t0 = time.perf_counter()
        dst.copy_(src)
        out["memcpy_s"] = time.perf_counter() - t0
        del src, dst
    (work / f"sub-{args.index}.ready").write_text("")
    _wait_file(work / "go")
    out["start"] = time.time()
    got = sub.poll_latest(300)
    out["end"] = time.time()
    assert got is not None and got[0] == 1
    out["nbytes"] = float(info["nbytes"])
    (work / f"sub-{args.index}.json").write_text(json.dumps(out))
    sub.close()


def role_gloo(args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    nbytes = int(args.gb * 1e9)
    dist.init_process_group("gloo", init_method=f"tcp://{args.master}:{args.port}", rank=args.index,
                            world_size=SUBSCRIBERS + 1)
    buf = torch.ones(nbytes, dtype=torch.uint8) if args.index == 0 else torch.zeros(nbytes, dtype=torch.uint8)
    dist.barrier()
    t0 = time.perf_counter()
    dist.broadcast(buf, src=0)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if args.index == 1:
        assert int(buf[-1]) == 1
    Path(args.work, f"gloo-{args.index}.json").write_text(json.dumps({"s": elapsed, "nbytes": nbytes}))
    dist.destroy_process_group()


def _me(role: str, args, **extra) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--gb", str(args.gb), "--work", str(extra.pop("work"))]
    for k, v in extra.items():
        argv += [f"--{k}", str(v)]
    return argv


def orchestrate(args) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    import podbox

    from stgrl.transport.security import generate_keypair

    why = podbox.can_run()
    if why:
        raise SystemExit(f"the pod box cannot run here: {why}")
    root = Path(tempfile.mkdtemp(prefix="wsync-", dir="/tmp"))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    box = podbox.Box(cluster={"metadata": {"name": "wsync"}}, data_dir=root, work_dir=root / "pods", token="-",
                     image_env=env)
    results: dict = {"gb": args.gb, "subscribers": SUBSCRIBERS, "runs": []}
    with box:
        learner, rollout = box.add_plain_pod("learner"), box.add_plain_pod("rollout")
        results["pods"] = {"learner": learner.ip, "rollout": rollout.ip}
        for curve in ("off", "on"):
            for streams in (1, 4):
                work = root / f"{curve}-{streams}"
                work.mkdir()
                pub, sec = generate_keypair()
                (work / "keys.json").write_text(json.dumps({"public": pub.hex(), "secret": sec.hex()}))
                common = dict(work=work, curve=curve, streams=streams)
                procs = [box.spawn(learner, _me("publisher", args, bind=learner.ip, **common), work / "pub.log")]
                procs += [box.spawn(rollout, _me("subscriber", args, index=i, bind=rollout.ip, **common),
                                    work / f"sub-{i}.log") for i in range(SUBSCRIBERS)]
                for i in range(SUBSCRIBERS):
                    _wait_file(work / f"sub-{i}.ready")
                (work / "go").write_text("")
                subs = [json.loads(_wait_file(work / f"sub-{i}.json")) for i in range(SUBSCRIBERS)]
                (work / "stop").write_text("")
                for p in procs:
                    p.wait(60)
                wall = max(s["end"] for s in subs) - min(s["start"] for s in subs)
                nbytes = subs[0]["nbytes"]
                run = {"curve": curve, "streams": streams, "aggregate_GBps": SUBSCRIBERS * nbytes / wall / 1e9,
                       "per_subscriber_GBps": [nbytes / (s["end"] - s["start"]) / 1e9 for s in subs],
                       "memcpy_GBps": nbytes / subs[0]["memcpy_s"] / 1e9, "wall_s": wall}
                log.info("%s", run)
                results["runs"].append(run)
        work = root / "gloo"
        work.mkdir()
        port = 29611
        procs = [box.spawn(learner if i == 0 else rollout,
                           _me("gloo", args, work=work, index=i, master=learner.ip, port=port), work / f"gloo-{i}.log")
                 for i in range(SUBSCRIBERS + 1)]
        for p in procs:
            p.wait(600)
        gloo = [json.loads((work / f"gloo-{i}.json").read_text()) for i in range(SUBSCRIBERS + 1)]
        slowest = max(g["s"] for g in gloo)
        results["gloo_broadcast"] = {"aggregate_GBps": SUBSCRIBERS * gloo[0]["nbytes"] / slowest / 1e9,
                                     "wall_s": slowest}
    results.update(estimate(results))
    return results


def estimate(results: dict) -> dict:
    """7B bf16 to 4 workers over 100 Gb/s, on paper, from the measured rates.

    The publisher's NIC carries 4 copies; each stream (one serving thread + one ZeroMQ I/O thread,
    CURVE there) moves at most its measured single-stream rate; streams scale until the NIC is full.
    """
    nbytes = 2 * PARAMS_7B
    out = {}
    for curve in ("off", "on"):
        one = next(r for r in results["runs"] if r["curve"] == curve and r["streams"] == 1)
        per_stream = one["aggregate_GBps"]  # one stream served all 4 subscribers
        for streams in (4, 16):
            rate = min(NIC_GBPS, streams * per_stream)
            out[f"estimate_7B_curve_{curve}_{streams}_streams_s"] = SUBSCRIBERS * nbytes / rate / 1e9
    out["estimate_7B_nic_bound_s"] = SUBSCRIBERS * nbytes / NIC_GBPS / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="orchestrate", choices=["orchestrate", "publisher", "subscriber", "gloo"])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--work", default="")
    ap.add_argument("--curve", default="off")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--master", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=29611)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.role != "orchestrate":
        {"publisher": role_publisher, "subscriber": role_subscriber, "gloo": role_gloo}[args.role](args)
        return
    results = orchestrate(args)
    text = json.dumps(results, indent=2)
    log.info("%s", text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
