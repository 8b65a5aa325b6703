"""Pipeline benchmark (issue 9): RL steps/s of the async schedule against the sync one on the demo
config, and the framework's overhead share of step time.

    .venv/bin/python benchmarks/pipeline.py --steps 8 --workers 1 2 --json runs/bench/pipeline.json

For each rollout pool size in ``--workers`` it runs the real RL driver (`RLDriver`: Ray actors,
ZeroMQ data plane, DeepSpeed learner, reward shards) twice, back to back in one Ray session with the
same seed: ``run.mode=sync run.max_staleness=0`` then ``run.mode=async run.max_staleness=1``. Pool
start-up is not timed; the first step of each run is a warm-up (pipeline fill) and the last a
cool-down (async: nothing is generated next to its training, so it runs uncontended and short);
steps/s and the other means are over the steps in between.

Columns come from the driver's ``metrics.jsonl`` (``pipeline/step_time_s``,
``pipeline/wait_rollout_s``, ``learner/step_time_s``, ``reward/latency_s``, ``weights/sync_time_s``)
plus two things the driver does not log, captured by a thin subclass of the driver:

- the learner's compute split (``time_old_logprobs_s``, ``time_forward_s``, ``time_backward_s``,
  ``time_optimizer_s``, returned by ``train_rl_batch`` but not written to ``metrics.jsonl``);
- each trajectory group's ``timings`` (``generate_s`` and the wall-clock ``created_unix_s`` at which
  generation ended), which give every generate interval on a common clock.

Overhead share = fraction of the steady-state wall time during which no rollout worker is inside
``generate`` and the learner is not computing (old log-probs, forward, backward, optimizer): the
time spent in everything else — prompt/video preparation, transport, Ray calls, reward scoring,
weight publishing, waiting. It is the measure of the union of generate intervals (all workers) and
learner-compute intervals, taken from the wall time. The learner's compute inside one
``train_rl_batch`` call is placed at the end of the call (its overhead — shipping the batch to the
rank — comes first); ``learner s - compute s`` bounds the error of that placement.

Overlap bound (sync rows): ``step / max(wait rollout, step - wait rollout)`` of the sync run, the
async speedup if generation and the rest of the step overlapped perfectly at the speed each phase ran
in the sync run, i.e. with enough free cores that the pools do not slow each other down.

Starts its own Ray instance in a temp dir (state, token and logs never touch the home directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

log = logging.getLogger("benchmarks.pipeline")

REPO = Path(__file__).resolve().parents[1]
COMPUTE_KEYS = ("time_old_logprobs_s", "time_forward_s", "time_backward_s", "time_optimizer_s")
STEP_KEYS = ("train/reward_mean", "pipeline/step_time_s", "pipeline/wait_rollout_s", "pipeline/generate_max_s", "learner/step_time_s",
             "reward/latency_s", "weights/sync_time_s", "weights/version_lag")
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "WANDB_MODE": "offline"}


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `intervals` clipped to [lo, hi]."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo))
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def _timed_driver_class():
    from stgrl.orchestration.rl_loop import RLDriver

    class TimedDriver(RLDriver):
        """The real driver, recording per-group generate timings and the learner's compute split."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bench_groups: dict[int, list[dict[str, float]]] = {}
            self.bench_train: dict[int, dict[str, float]] = {}
            self.bench_step_end: dict[int, float] = {}

        def _collect(self, step: int):
            groups = super()._collect(step)
            self.bench_groups[step] = [dict(g.timings) for g, _ in groups]
            return groups

        def _train(self, groups, rewards, step: int):
            t0 = time.time()
            out = super()._train(groups, rewards, step)
            self.bench_train[step] = {"start": t0, "end": time.time(),
                                      **{k: float(out.get(k, 0.0)) for k in COMPUTE_KEYS}}
            return out

    return TimedDriver


def _prepare(workdir: Path, n_train: int) -> tuple[Path, Path]:
    """The tiny model and an easy synthetic train split under `workdir` (reused when present)."""
    from stgrl.orchestration.config import load_config
    from stgrl.rollout.data.synth import generate_split
    from stgrl.rollout.tiny_model import build_tiny_model

    model = workdir / "model"
    if not (model / "config.json").is_file():
        log.info("building the tiny model in %s", model)
        build_tiny_model(model, seed=0)
    train = workdir / "data" / "train.jsonl"
    if not train.is_file() or len(train.read_text().splitlines()) < n_train:
        log.info("generating %d synthetic train records in %s", n_train, train.parent)
        cfg = load_config(REPO / "configs" / "demo.yaml")
        generate_split(workdir / "data", "train", n_train, seed=0, difficulty="easy", data_cfg=cfg.data,
                       progress=False)
    return model, train


def run_once(config: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One RL run with the instrumented driver; returns the per-step rows and captured timings."""
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.metrics import read_metrics
    from stgrl.orchestration.stage_support import load_split, make_sink

    cfg = load_config(config, overrides)
    train, dataset_dir = load_split(cfg.data.train, "train")
    sink = make_sink(cfg, run_dir, "rl")
    driver = _timed_driver_class()(cfg, run_dir, cfg.model.path, train, dataset_dir)
    t_start = time.perf_counter()
    try:
        driver.start()
        startup_s = time.perf_counter() - t_start

        def progress(step: int, metrics: dict[str, float]) -> None:
            driver.bench_step_end[step] = time.time()
            log.info("%s step %d: %.2fs (wait rollout %.2fs, learner %.2fs)", cfg.run.mode, step,
                     metrics["pipeline/step_time_s"], metrics["pipeline/wait_rollout_s"],
                     metrics["learner/step_time_s"])

        driver.run(sink, progress)
    finally:
        driver.close()
        sink.close()
    return {"rows": read_metrics(run_dir / "metrics.jsonl"), "groups": driver.bench_groups,
            "train": driver.bench_train, "step_end": driver.bench_step_end, "startup_s": startup_s,
            "workers": cfg.rollout.num_workers}


def summarize(raw: dict[str, Any], warmup: int = 1, cooldown: int = 1) -> dict[str, float]:
    """Steady-state numbers over the steps after `warmup` and before the last `cooldown` ones (see the
    module docstring for the definitions)."""
    last = max(r["step"] for r in raw["rows"])
    rows = [r for r in raw["rows"] if warmup <= r["step"] <= last - cooldown]
    steps = [r["step"] for r in rows]
    n = len(rows)
    if n == 0:
        raise ValueError("no step between the warm-up and the cool-down: raise --steps")

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / n

    step_times = sorted(float(r["pipeline/step_time_s"]) for r in rows)
    step_sum = sum(step_times)
    train = raw["train"]
    compute = [sum(train[s][k] for k in COMPUTE_KEYS) for s in steps]
    lo, hi = raw["step_end"][warmup - 1], raw["step_end"][steps[-1]]
    wall = hi - lo
    gen_iv = [(g["created_unix_s"] - g["generate_s"], g["created_unix_s"])
              for gs in raw["groups"].values() for g in gs]
    learn_iv = [(train[s]["end"] - c, train[s]["end"]) for s, c in zip(steps, compute)]
    busy = _union_length(gen_iv + learn_iv, lo, hi)
    gen_busy = _union_length(gen_iv, lo, hi)
    gen_per_worker = [sum(g["generate_s"] for g in raw["groups"][s]) / raw["workers"] for s in steps]
    prepare = [sum(g.get("prepare_s", 0.0) for g in raw["groups"][s]) / raw["workers"] for s in steps]
    return {
        "steps_timed": float(n),
        "steps_per_s": n / step_sum,
        "steps_per_s_wall": n / wall,
        "step_time_s": step_sum / n,
        "step_time_median_s": statistics.median(step_times),
        "step_time_min_s": step_times[0],
        "step_time_max_s": step_times[-1],
        "wait_rollout_s": mean("pipeline/wait_rollout_s"),
        "generate_max_s": mean("pipeline/generate_max_s"),
        "generate_per_worker_s": sum(gen_per_worker) / n,
        "prepare_per_worker_s": sum(prepare) / n,
        "reward_s": mean("reward/latency_s"),
        "learner_s": mean("learner/step_time_s"),
        "learner_compute_s": sum(compute) / n,
        **{k.removeprefix("time_"): sum(train[s][k] for s in steps) / n for k in COMPUTE_KEYS},
        "weight_sync_s": mean("weights/sync_time_s"),
        "version_lag": mean("weights/version_lag"),
        "generating_share": gen_busy / wall,
        "learner_compute_share": sum(compute) / wall,
        "overhead_share": 1.0 - busy / wall,
        "reward_mean": mean("train/reward_mean"),
        "startup_s": raw["startup_s"],
        # sync only: the async speedup if rollout and the rest of the step overlapped perfectly at the
        # speed each phase ran in this sync run (i.e. with cores to spare for both pools)
        "overlap_bound": step_sum / n / max(mean("pipeline/wait_rollout_s"),
                                            step_sum / n - mean("pipeline/wait_rollout_s")),
    }


def results_table(results: dict[str, dict[str, float]], title: str) -> Table:
    """One row per run: steps/s, the step's parts (driver's view), pool busy shares, overhead, ratio."""
    table = Table(title=title)
    cols = ["mode", "workers", "steps/s", "step s", "median s", "wait s", "gen s/worker", "reward s", "learner s",
            "compute s", "weights s", "lag", "generating", "learner busy", "overhead", "vs sync", "overlap bound"]
    for c in cols:
        table.add_column(c, justify="right")
    for key, m in results.items():
        mode, w = key.split("/w")
        table.add_row(mode, w, f"{m['steps_per_s']:.3f}", f"{m['step_time_s']:.2f}", f"{m['step_time_median_s']:.2f}",
                      f"{m['wait_rollout_s']:.2f}", f"{m['generate_per_worker_s']:.2f}", f"{m['reward_s']:.3f}",
                      f"{m['learner_s']:.2f}", f"{m['learner_compute_s']:.2f}", f"{m['weight_sync_s']:.3f}",
                      f"{m['version_lag']:.2f}", f"{100 * m['generating_share']:.0f}%",
                      f"{100 * m['learner_compute_share']:.0f}%", f"{100 * m['overhead_share']:.1f}%",
                      f"{m['speedup_vs_sync']:.2f}x", f"{m['overlap_bound']:.2f}x" if mode == "sync" else "")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="total RL steps per run (the first and last are not timed)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="rollout pool sizes to measure")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--workdir", type=Path, default=None, help="keep/reuse the model and data here")
    ap.add_argument("--train-records", type=int, default=64)
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (repeatable), e.g. rollout.max_new_tokens=48")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (run dirs, Ray logs) instead of deleting it")
    args = ap.parse_args(argv)
    if args.steps < 3:
        ap.error("--steps must be >= 3 (the first step is a warm-up, the last a cool-down)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    import ray

    base = Path(tempfile.mkdtemp(prefix="stgrl-bench-pipe-", dir="/tmp"))  # short path: unix socket limit
    workdir = args.workdir or base / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    model, train = _prepare(workdir, args.train_records)

    old_home = os.environ.get("HOME")
    (base / "home").mkdir()
    os.environ["HOME"] = str(base / "home")  # Ray's auth token and state stay in the temp dir
    os.environ["RAY_TMPDIR"] = str(base)
    ray.init(num_cpus=8, resources={"rollout": 4, "reward": 4, "learner": 4}, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=str(base / "ray"), log_to_driver=False,
             runtime_env={"env_vars": dict(ENV)})
    if old_home is not None:
        os.environ["HOME"] = old_home
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    per_step: dict[str, list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    try:
        for w in args.workers:
            for mode, staleness in (("sync", 0), ("async", 1)):
                key = f"{mode}/w{w}"
                log.info("run %s: %d steps, %d rollout worker(s)", key, args.steps, w)
                ov = [f"model.path={model}", f"data.train={train}", f"data.eval={train}", "metrics.wandb=false",
                      f"run.total_steps={args.steps}", f"run.mode={mode}", f"run.max_staleness={staleness}",
                      f"rollout.num_workers={w}", *args.extra]
                raw = run_once(args.config, ov, base / "runs" / key.replace("/", "-"))
                results[key] = summarize(raw)
                per_step[key] = [{"step": r["step"], **{k: r[k] for k in STEP_KEYS if k in r},
                                  **{f"learner/{k}": v for k, v in raw["train"][r["step"]].items()},
                                  "end_unix_s": raw["step_end"][r["step"]],
                                  "groups": raw["groups"][r["step"]]} for r in raw["rows"]]
                log.info("%s: %.3f steps/s, overhead share %.1f%%", key, results[key]["steps_per_s"],
                         100 * results[key]["overhead_share"])
    finally:
        ray.shutdown()
        if args.keep:
            log.info("run directories and Ray logs kept in %s", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    total_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    for key, m in results.items():
        m["speedup_vs_sync"] = m["steps_per_s"] / results[f"sync/w{key.split('/w')[1]}"]["steps_per_s"]
    console = Console(width=200)
    console.print(results_table(results, f"RL pipeline, {args.config.name} ({args.steps} steps per run, means "
                                         f"per step over steps 1..{args.steps - 2})"))
    console.print(f"machine: {os.cpu_count()} CPU(s) {platform.machine()}, load average before/after "
                  f"{load_before[0]:.1f}/{load_after[0]:.1f}; total {total_s:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": load_after, "total_s": total_s,
            "results": results, "per_step": per_step}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
