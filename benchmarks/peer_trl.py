"""Side by side with the peer a user would pick instead (issue 25): stgrl sync, stgrl async and TRL's
``GRPOTrainer`` in GSPO mode (``importance_sampling_level="sequence"``) on the same job, in one run.

    make bench-trl                                   # = the line below, after `make setup trl-venv`
    .venv/bin/python benchmarks/peer_trl.py --trl-python .venv-trl/bin/python [--wall-s 120] [--json out.json]
    .venv/bin/python benchmarks/peer_trl.py --smoke  # a few steps of each, to see that it all runs

The same job for every system:

- the model: the demo config's SFT output (``stgrl init-model`` + ``stgrl data synth`` + ``stgrl sft
  --config configs/demo.yaml``, run once under ``--workdir`` and reused; nothing is downloaded);
- the prompts: step ``s`` trains the 8 records ``prompts_for_step(train, s, 8, seed)`` of stgrl's own
  prompt source; TRL gets them in that order (``shuffle_dataset=False``), each prompt's frames as
  images after the same ``Frame k at {t}s:`` labels (``build_messages``), resized exactly as stgrl's
  processor call resizes them (checked: TRL's rendering of the first records must give stgrl's
  prompt text and token ids, or the run stops);
- the reward: stgrl's ``score_batch`` at the same curriculum step (``trainer_state.global_step``),
  plugged in as TRL's one reward function;
- the batch (8 prompts x G 4, one optimizer step per batch, no old-log-prob pass), 96 new tokens,
  T 0.7, top-p 1, lr 1e-4 with 2 warm-up steps then cosine over ``run.total_steps`` (80, the demo's),
  AdamW (0.9, 0.999), no weight decay, grad clip 1, fp32, GSPO clip 3e-4/4e-4, no KL, Dr. GRPO
  advantages (``scale_rewards="none"``; stgrl ``advantage_scale: none``), a sequence-mean loss
  (TRL ``loss_type="grpo"`` with sequence-level ratios = stgrl's ``gspo_loss``);
- the threads: every stgrl actor and the TRL process run with ``torch_threads`` (1) torch threads;
  TRL is also run with 2 (``--trl-threads``), since stgrl's pools use both cores at once;
- the priority: Ray starts every actor at niceness 15, so the TRL process is niced to 15 too
  (``--trl-nice``); otherwise any other job on a shared machine takes the CPU from stgrl first.

Each system trains for ``--wall-s`` seconds of wall time (start-up excluded, reported apart) or
until ``run.total_steps``, exporting an HF checkpoint every ``--checkpoint-every`` steps and at the
end. Measured per system, in its own process tree (stgrl: the driver, Ray's daemons and every
actor; sampled every 0.5 s with psutil): steady-state steps/s (step-end times after
``--warmup`` steps, checkpoint exports subtracted) and 1 / the median step time, CPU seconds per
step (the work, which other load changes far less than wall time), peak RSS and PSS summed over the
tree, generate time per step. Then every checkpoint and the shared start are scored by the project's held-out
evaluation (``evaluate_model``: greedy and ``--eval-sampled`` draws at T 0.7 per prompt, seeded
per record so all checkpoints see the same random numbers) on ``--eval-samples`` held-out records.
From those: held-out reward after equal steps (the last checkpoint step all systems reached),
after equal wall time (each system's final checkpoint at ``--wall-s``), and the wall time to a
target reward (``--target``; default halfway from the start to the best final reward).
``--from-json`` re-prints a saved run's summary; ``generate-probe`` times stgrl's per-prompt HF
generate against one batched call of the same prompts (what TRL does).

The TRL system runs in its own venv (``make trl-venv``: ``requirements/trl.lock`` = the core lock +
trl and what it brings), never in the core install; this file is its worker too, run there with
``worker-trl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.peer_trl")

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SYSTEMS = ("sync", "async", "trl")
STGRL_MODES = {"sync": 0, "async": 1}  # mode -> run.max_staleness
CHECKED_PROMPTS = 4  # records whose TRL-side rendering is compared with stgrl's prompt before training


class BenchError(ValueError):
    """A setting of this benchmark is wrong; the message names it and what is allowed."""


# ---------------------------------------------------------------------------------------------- settings
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-trl",
                    help="model, data and SFT checkpoint (made once, reused) and each run's output")
    ap.add_argument("--trl-python", type=Path, default=REPO / ".venv-trl" / "bin" / "python",
                    help="the interpreter of the TRL venv (`make trl-venv`)")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--trl-threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads of the TRL process, one TRL run each (default: 1 2)")
    ap.add_argument("--trl-nice", type=int, default=15,
                    help="niceness of the TRL process: Ray starts every actor at 15 (RAY_worker_niceness), so "
                         "other jobs on a shared machine take CPU from stgrl's actors first unless TRL runs at the "
                         "same (default 15; 0 = as started)")
    ap.add_argument("--wall-s", type=float, default=120.0, help="training wall time per system (default 120)")
    ap.add_argument("--total-steps", type=int, default=None,
                    help="run.total_steps: step cap and length of the lr/σ schedules (default: the config's)")
    ap.add_argument("--checkpoint-every", type=int, default=2,
                    help="export an HF checkpoint every N steps (cheap: 4.7 MB); the equal-steps point is the "
                         "last multiple of N all systems reached")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of steps/s (pipeline fill, first calls)")
    ap.add_argument("--eval-samples", type=int, default=32, help="held-out records per evaluation")
    ap.add_argument("--eval-sampled", type=int, default=4, help="draws per record at the rollout temperature")
    ap.add_argument("--eval-parallel", type=int, default=2, help="evaluations at once (each one thread)")
    ap.add_argument("--target", type=float, default=None,
                    help="held-out sampled reward for 'wall time to reward' (default: halfway from the start to "
                         "the best final reward of the systems)")
    ap.add_argument("--curve-every", type=int, default=8,
                    help="also evaluate every N steps' checkpoint (the reward-over-wall-time curve)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="only re-print the summary of a saved run (its --json file), e.g. with another --target")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every system (repeatable)")
    ap.add_argument("--smoke", action="store_true",
                    help="a short run: 40 s per system, checkpoints every 2 steps, 4 held-out records x 2")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    g = sub.add_parser("generate-probe", help="stgrl's per-prompt HF generate vs one batched generate of the "
                       "same prompts (the main venv; one thread; see docs/benchmarks.md)")
    g.add_argument("--model", type=Path, default=None, help="default: the SFT checkpoint under --workdir")
    g.add_argument("--repeats", type=int, default=3)
    for name in ("worker-stgrl", "worker-trl", "worker-eval"):
        w = sub.add_parser(name, help=argparse.SUPPRESS)
        w.add_argument("--spec", type=Path, required=True, help="the job spec JSON the orchestrator wrote")
        w.add_argument("--out", type=Path, required=True)
        w.add_argument("--mode", choices=list(STGRL_MODES), default="sync")
        w.add_argument("--threads", type=int, default=1)
        w.add_argument("--model", type=Path, default=None)
        w.add_argument("--nice", type=int, default=0, help="raise this process's niceness by N first")
    return ap


def apply_smoke(args: argparse.Namespace) -> None:
    """`--smoke`: a few steps of each system and a tiny evaluation, to check that everything runs."""
    if args.smoke:
        args.wall_s, args.checkpoint_every, args.warmup = 40.0, 2, 1  # stgrl's step 0 holds the workers' model load
        args.eval_samples, args.eval_sampled = 4, 2
        args.trl_threads = args.trl_threads[:1]


def validate(args: argparse.Namespace) -> None:
    """Every setting checked before any work starts (a 20-minute run must not fail at minute 15)."""
    if args.wall_s <= 0:
        raise BenchError(f"--wall-s must be > 0 seconds, got {args.wall_s}")
    if args.checkpoint_every < 1:
        raise BenchError(f"--checkpoint-every must be >= 1 step, got {args.checkpoint_every}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0 steps, got {args.warmup}")
    if args.total_steps is not None and args.total_steps < args.warmup + 2:
        raise BenchError(f"--total-steps must leave at least 2 timed steps after --warmup {args.warmup}, "
                         f"got {args.total_steps}")
    if args.eval_samples < 1 or args.eval_sampled < 1:
        raise BenchError(f"--eval-samples and --eval-sampled must be >= 1, got {args.eval_samples} and "
                         f"{args.eval_sampled} (the held-out reward compared is the sampled one)")
    if args.curve_every < 1 or args.curve_every % args.checkpoint_every:
        raise BenchError(f"--curve-every must be a multiple of --checkpoint-every {args.checkpoint_every} (only "
                         f"those steps are exported), got {args.curve_every}")
    if args.eval_parallel < 1:
        raise BenchError(f"--eval-parallel must be >= 1, got {args.eval_parallel}")
    if not 0 <= args.trl_nice <= 19:
        raise BenchError(f"--trl-nice must be 0..19, got {args.trl_nice}")
    if any(t < 1 for t in args.trl_threads):
        raise BenchError(f"--trl-threads must all be >= 1, got {args.trl_threads}")
    if not args.config.is_file():
        raise BenchError(f"--config {args.config} does not exist")
    if "trl" in args.systems and not Path(args.trl_python).is_file():
        raise BenchError(f"--trl-python {args.trl_python} does not exist: build the TRL venv with `make trl-venv` "
                         "(or leave trl out of --systems)")
    from stgrl.orchestration.config import load_config

    cfg = load_config(args.config, args.overrides)  # raises the project's ConfigError on a bad --set
    if cfg.rollout.engine != "hf":
        raise BenchError(f"rollout.engine must be 'hf' (TRL generates with transformers here), got "
                         f"{cfg.rollout.engine!r}")
    if cfg.learner.num_minibatches != 1 or cfg.learner.loss != "gspo":
        raise BenchError("the TRL mapping covers learner.loss=gspo with learner.num_minibatches=1 (one on-policy "
                         f"update per batch), got loss={cfg.learner.loss!r}, num_minibatches="
                         f"{cfg.learner.num_minibatches}")
    if cfg.learner.advantage_scale not in ("none", "group"):
        raise BenchError(f"learner.advantage_scale {cfg.learner.advantage_scale!r} has no TRL scale_rewards twin "
                         "(none or group)")


def job_spec(args: argparse.Namespace, model: Path, train: Path, evalp: Path) -> dict[str, Any]:
    """What every worker needs, as JSON: config, overrides (the same for all systems), run budget."""
    from stgrl.orchestration.config import load_config

    cfg = load_config(args.config, args.overrides)
    total = args.total_steps or cfg.run.total_steps
    overrides = [*args.overrides, f"model.path={model}", f"data.train={train}", f"data.eval={evalp}",
                 "metrics.wandb=false", f"run.total_steps={total}", "learner.checkpoint_every=0"]
    return {"config": str(args.config), "overrides": overrides, "total_steps": total, "wall_s": args.wall_s,
            "checkpoint_every": args.checkpoint_every, "eval_samples": args.eval_samples,
            "eval_sampled": args.eval_sampled}


# ---------------------------------------------------------------------------------------------- preparation
def _stgrl(*argv: str, log_path: Path) -> None:
    """One `stgrl` CLI command of the main venv, its output in `log_path`; a failure names the log."""
    cmd = [str(Path(sys.executable).with_name("stgrl")), *argv]
    with log_path.open("w") as fh:
        rc = subprocess.call(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    if rc != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:4])} ...` failed (exit {rc}); see {log_path}")


def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The demo config's SFT checkpoint and its data under --workdir, made with the project's own
    commands when missing (init-model with base pretraining and data synth side by side, then SFT:
    ~10 min on 2 cores); reused otherwise."""
    w = args.workdir
    model, data, sft = w / "model", w / "data", w / "sft"
    ckpt = sft / "sft" / "hf"
    train, evalp = data / "train.jsonl", data / "eval.jsonl"
    w.mkdir(parents=True, exist_ok=True)
    if not (train.is_file() and evalp.is_file()):
        log.info("synthesising the demo's data in %s", data)
        synth = subprocess.Popen([str(Path(sys.executable).with_name("stgrl")), "data", "synth", "--config",
                                  str(args.config), "--out", str(data)], cwd=REPO, env={**os.environ, **ENV},
                                 stdout=(w / "synth.log").open("w"), stderr=subprocess.STDOUT)
    else:
        synth = None
    if not (model / "config.json").is_file():
        log.info("building and pretraining the embedded model in %s (minutes)", model)
        _stgrl("init-model", "--out", str(model), log_path=w / "init.log")
    if synth is not None and synth.wait() != 0:
        raise RuntimeError(f"`stgrl data synth` failed; see {w / 'synth.log'}")
    if not (ckpt / "config.json").is_file():
        log.info("SFT on the demo config -> %s (minutes)", ckpt)
        _stgrl("sft", "--config", str(args.config), "--run-dir", str(sft), f"model.path={model}",
               f"data.train={train}", f"data.eval={evalp}", "metrics.wandb=false", *args.overrides,
               log_path=w / "sft.log")
    return ckpt, train, evalp


# ---------------------------------------------------------------------------------------------- measuring
class TreeMemory:
    """Peak RSS and PSS summed over a process and all its descendants, and their CPU time, sampled in a
    thread. RSS counts a shared library page once per process that maps it; PSS splits it among them
    (the fairer sum for many processes that all map libtorch). CPU time (user + system, summed over
    every process seen) is the work done, which other load on the machine changes far less than the
    wall time: `cpu_series` holds (unix time, CPU seconds so far) per sample."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self.cpu_series: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = 0
        for p in procs:
            try:
                mem = p.memory_full_info()
                cpu = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss += mem.rss
            pss += getattr(mem, "pss", mem.rss)
            self._cpu[p.pid] = cpu.user + cpu.system
        self.cpu_series.append((time.time(), sum(self._cpu.values())))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(procs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


def run_worker(python: Path, command: str, spec: Path, out: Path, extra: list[str], env: dict[str, str],
               log_path: Path) -> dict[str, Any]:
    """One system (or evaluation) in its own process; returns its result.json plus the process tree's
    peak memory and the command's wall time."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), command, "--spec", str(spec), "--out", str(out), *extra]
    t0 = time.perf_counter()
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{command} {' '.join(extra)} failed (exit {rc}); log {log_path}:\n{tail}")
    result = json.loads((out / "result.json").read_text())
    result.update(peak_rss_bytes=mem.peak_rss, peak_pss_bytes=mem.peak_pss, peak_processes=mem.peak_processes,
                  process_wall_s=time.perf_counter() - t0, cpu_series=mem.cpu_series)
    return result


class WallClock:
    """Step-end times since training began, with checkpoint exports taken out of the clock, and the
    decision to export / to stop. Shared by the stgrl and the TRL worker so both count alike."""

    def __init__(self, out: Path, wall_s: float, every: int, total: int) -> None:
        self.out, self.wall_s, self.every, self.total = out, wall_s, every, total
        self.t0 = time.perf_counter()
        self.export_s = 0.0
        self.steps: list[dict[str, float]] = []
        self.checkpoints: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.export_s

    def step_end(self, step: int, export: Any, **extra: float) -> bool:
        """Record step `step` (0-based) ending now; export a checkpoint (``export(path)``) when due.
        Returns True when the wall budget is spent (the caller stops training)."""
        t = self.elapsed()
        self.steps.append({"step": step, "end_s": t, "end_unix_s": time.time(), **extra})
        stop = t >= self.wall_s or step + 1 >= self.total
        if (step + 1) % self.every == 0 or stop:
            path = self.out / "checkpoints" / f"step-{step + 1}"
            t_export = time.perf_counter()
            export(path)
            self.export_s += time.perf_counter() - t_export
            self.checkpoints.append({"steps": step + 1, "wall_s": t, "path": str(path)})
        return stop

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"steps": self.steps, "checkpoints": self.checkpoints, "export_s": self.export_s, **extra}


# ---------------------------------------------------------------------------------------------- workers
def _load_spec(path: Path, *extra: str) -> tuple[dict[str, Any], Any]:
    from stgrl.orchestration.config import load_config

    spec = json.loads(path.read_text())
    return spec, load_config(spec["config"], [*spec["overrides"], *extra])


class _WallBudgetSpent(Exception):
    """Raised from the driver's progress callback to end a stgrl run at the wall budget."""


def worker_stgrl(args: argparse.Namespace) -> int:
    """The real RL driver (Ray actors, ZeroMQ, DeepSpeed learner, reward shards) in sync or async mode,
    stopped at the wall budget; Ray is local and its state lives in a temp dir."""
    import ray

    from stgrl.orchestration.ray_setup import actor_env, local_init_kwargs
    from stgrl.orchestration.rl_loop import RLDriver
    from stgrl.orchestration.stage_support import load_split, make_sink

    spec, cfg = _load_spec(args.spec, f"run.mode={args.mode}", f"run.max_staleness={STGRL_MODES[args.mode]}")
    train, dataset_dir = load_split(cfg.data.train, "train")
    tmp = Path(tempfile.mkdtemp(prefix="stgrl-ptrl-", dir="/tmp"))  # short: unix socket path limit
    ray.init(**local_init_kwargs(cfg), _temp_dir=str(tmp / "ray"), runtime_env={"env_vars": actor_env(cfg)})
    run_dir = args.out / "run"
    sink = make_sink(cfg, run_dir, "rl")
    driver = RLDriver(cfg, run_dir, cfg.model.path, train, dataset_dir)
    t_start = time.perf_counter()
    try:
        driver.start()
        startup_s = time.perf_counter() - t_start
        clock = WallClock(args.out, spec["wall_s"], spec["checkpoint_every"], spec["total_steps"])

        def progress(step: int, metrics: dict[str, float]) -> None:
            stop = clock.step_end(step, driver.learners.export_hf, generate_s=metrics["rollout/generate_total_s"],
                                  learner_s=metrics["learner/step_time_s"],
                                  train_reward=metrics["train/reward_mean"])
            log.info("%s step %d at %.1fs", args.mode, step, clock.steps[-1]["end_s"])
            if stop:
                raise _WallBudgetSpent

        try:
            driver.run(sink, progress)
        except _WallBudgetSpent:
            pass
    finally:
        driver.close()
        sink.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    (args.out / "result.json").write_text(json.dumps(clock.result(startup_s=startup_s, system=args.mode)))
    return 0


def trl_rows(cfg: Any, total_steps: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """TRL's training rows in stgrl's step order: row ``8 s + i`` is prompt ``i`` of step ``s``; each
    with its frames as PIL images, the chat messages with image placeholders, the record and the
    resized frame size (for the reward). Also the prepared prompts (stgrl's view) of the rows."""
    import msgspec
    from PIL import Image
    from transformers import AutoProcessor

    from stgrl.orchestration.prompt_source import prompts_for_step
    from stgrl.orchestration.stage_support import load_split
    from stgrl.rollout.prompts import build_messages
    from stgrl.rollout.video import VideoCache, prepare_prompt, record_media

    records, dataset_dir = load_split(cfg.data.train, "train")
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    cache = VideoCache(capacity=4096)
    rows, prepared = [], []
    for step in range(total_steps):
        for rec in prompts_for_step(records, step, cfg.rollout.prompts_per_step, cfg.run.seed):
            media = record_media(rec, dataset_dir, cfg.data, cache)
            prep = prepare_prompt(rec, processor, cfg.data, dataset_dir, cache)
            rows.append({"prompt": build_messages(rec, list(media.times)),
                         "images": [Image.fromarray(f) for f in media.frames],
                         "record": msgspec.json.encode(rec).decode(), "frame_size": list(prep.frame_size)})
            prepared.append(prep)
    return rows, prepared


def check_trl_prompts(dataset: Any, prepared: list[Any], processor: Any, n: int) -> None:
    """TRL's own rendering of the first `n` rows (its multimodal message filling and chat template, then
    the processor as TRL calls it) must be stgrl's prompt: same text, same token ids, same pixels.
    Otherwise the two systems would not train on the same job, and the run stops."""
    import torch
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    for i in range(min(n, len(prepared))):
        row = dataset[i]
        messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
        text = apply_chat_template({"prompt": messages}, processor)["prompt"]
        if text != prepared[i].prompt_text:
            raise RuntimeError(f"row {i}: TRL renders another prompt than stgrl:\n{text!r}\nvs\n"
                               f"{prepared[i].prompt_text!r}")
        got = processor(images=[row["images"]], text=[text], padding=True, return_tensors="pt")
        want = prepared[i].model_inputs
        if not torch.equal(got["input_ids"], want["input_ids"]):
            raise RuntimeError(f"row {i}: TRL's prompt tokens differ from stgrl's ({tuple(got['input_ids'].shape)} "
                               f"vs {tuple(want['input_ids'].shape)})")
        if not torch.allclose(got["pixel_values"], want["pixel_values"], atol=1e-5):
            raise RuntimeError(f"row {i}: TRL's pixels differ from stgrl's")


def worker_trl(args: argparse.Namespace) -> int:
    """TRL's GRPOTrainer, GSPO mode, on the same job (runs in the TRL venv)."""
    import msgspec
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from stgrl.actors.rollout_worker import ground_truth
    from stgrl.reward_service.rewards import score_batch
    from stgrl.rollout.data.records import Record
    from stgrl.rollout.hf_engine import STOP_TOKENS, VISION_TOKENS
    from stgrl.rollout.video import _size_kwargs

    torch.set_num_threads(args.threads)
    if args.nice:
        os.nice(args.nice)
    spec, cfg = _load_spec(args.spec)
    t_start = time.perf_counter()
    total = spec["total_steps"]
    rows, prepared = trl_rows(cfg, total)
    dataset = Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    # stgrl's processor call resizes frames with these bounds (rollout/video.py); TRL calls the
    # processor without kwargs, so they go into the image processor itself
    processor.image_processor.size = _size_kwargs(cfg.data)["size"]
    check_trl_prompts(dataset, prepared, processor, CHECKED_PROMPTS)
    model = AutoModelForImageTextToText.from_pretrained(cfg.model.path, dtype=torch.float32)
    vocab = processor.tokenizer.get_vocab()
    generate_s: list[float] = []
    plain_generate = model.generate

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return plain_generate(*a, **kw)
        finally:
            generate_s.append(time.perf_counter() - t0)

    model.generate = timed_generate

    def stgrl_reward(prompts: list, completions: list, record: list[str], frame_size: list, trainer_state: Any,
                     **_: Any) -> list[float]:
        """stgrl's reward (score_batch) at the current curriculum step, one completion per row."""
        samples = []
        for i, (comp, rec_json, size) in enumerate(zip(completions, record, frame_size)):
            text = comp[-1]["content"] if isinstance(comp, list) else comp
            rec = msgspec.json.decode(rec_json, type=Record)
            samples.append(msgspec.structs.replace(ground_truth(rec, tuple(size)), id=f"{rec.id}#{i}",
                                                   completion=text))
        return [s.total for s in score_batch(samples, trainer_state.global_step, total, cfg.reward)]

    lcfg, rcfg = cfg.learner, cfg.rollout
    targs = GRPOConfig(
        output_dir=str(args.out / "trainer"), use_cpu=True, bf16=False, fp16=False, seed=cfg.run.seed,
        per_device_train_batch_size=rcfg.prompts_per_step * rcfg.group_size, gradient_accumulation_steps=1,
        num_generations=rcfg.group_size, max_completion_length=rcfg.max_new_tokens,
        temperature=rcfg.temperature, top_p=rcfg.top_p, top_k=0,
        generation_kwargs={"eos_token_id": sorted({vocab[t] for t in STOP_TOKENS if t in vocab}),
                           "suppress_tokens": sorted(vocab[t] for t in VISION_TOKENS if t in vocab)},
        learning_rate=lcfg.lr, warmup_steps=lcfg.warmup_steps, lr_scheduler_type="cosine", max_steps=total,
        weight_decay=lcfg.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=lcfg.grad_clip, num_iterations=1, beta=0.0, epsilon=lcfg.eps_low,
        epsilon_high=lcfg.eps_high, importance_sampling_level="sequence", loss_type="grpo",
        scale_rewards="none" if lcfg.advantage_scale == "none" else "group",
        shuffle_dataset=False, remove_unused_columns=False, dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL turns it on by default; stgrl keeps activations (same work)
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[stgrl_reward], args=targs, train_dataset=dataset,
                          processing_class=processor)
    holder: dict[str, WallClock] = {}

    def export(path: Path) -> None:
        trainer.model.save_pretrained(path)
        processor.save_pretrained(path)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            holder["clock"] = WallClock(args.out, spec["wall_s"], spec["checkpoint_every"], total)
            holder["startup_s"] = time.perf_counter() - t_start  # type: ignore[assignment]

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step - 1
            gen = sum(generate_s)
            generate_s.clear()
            if holder["clock"].step_end(step, export, generate_s=gen):
                control.should_training_stop = True
            log.info("trl step %d at %.1fs", step, holder["clock"].steps[-1]["end_s"])

    trainer.add_callback(Clock())
    trainer.train()
    clock = holder["clock"]
    rewards = {int(h["step"]) - 1: h["reward"] for h in trainer.state.log_history if "reward" in h and "step" in h}
    for s in clock.steps:
        s["train_reward"] = rewards.get(int(s["step"]), float("nan"))
    (args.out / "result.json").write_text(json.dumps(clock.result(startup_s=holder["startup_s"],
                                                                  system=f"trl-t{args.threads}")))
    return 0


def worker_eval(args: argparse.Namespace) -> int:
    """The project's held-out evaluation of one checkpoint (greedy + sampled draws)."""
    import torch

    from stgrl.orchestration.eval_run import evaluate_model
    from stgrl.orchestration.stage_support import load_split

    spec, cfg = _load_spec(args.spec)
    torch.set_num_threads(cfg.run.torch_threads)
    records, dataset_dir = load_split(cfg.data.eval, "eval")
    t0 = time.perf_counter()
    metrics = evaluate_model(cfg, args.model, records, dataset_dir, args.out, max_samples=spec["eval_samples"],
                             swapped=False, sampled=spec["eval_sampled"])
    metrics["eval_wall_s"] = time.perf_counter() - t0
    (args.out / "result.json").write_text(json.dumps(metrics))
    return 0


def generate_probe(args: argparse.Namespace) -> int:
    """Where TRL's generation is faster: stgrl's HF engine samples a worker's prompts one ``generate``
    call each (G rows); TRL samples all its rows in one left-padded call. Same model, prompts of step
    0, T, top-p and max new tokens, one thread, interleaved repeats; per generated token."""
    import statistics

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.prompt_source import prompts_for_step
    from stgrl.orchestration.stage_support import load_split
    from stgrl.rollout.engine import EnginePrompt, SamplingSpec
    from stgrl.rollout.hf_engine import STOP_TOKENS, VISION_TOKENS, HFEngine
    from stgrl.rollout.video import VideoCache, _size_kwargs, prepare_prompt, record_media

    torch.set_num_threads(1)
    model_path = args.model or args.workdir / "sft" / "sft" / "hf"
    cfg = load_config(args.config, [*args.overrides, f"model.path={model_path}",
                                    f"data.train={args.workdir / 'data' / 'train.jsonl'}"])
    rc = cfg.rollout
    records, dataset_dir = load_split(cfg.data.train, "train")
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    engine = HFEngine(model=model, processor=processor)
    cache = VideoCache(capacity=64)
    recs = prompts_for_step(records, 0, rc.prompts_per_step, cfg.run.seed)
    prepared = [prepare_prompt(r, processor, cfg.data, dataset_dir, cache) for r in recs]
    spec = SamplingSpec(temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens, seed=0)
    vocab = processor.tokenizer.get_vocab()
    gen_cfg = GenerationConfig(max_new_tokens=rc.max_new_tokens, do_sample=True, temperature=rc.temperature,
                               top_p=rc.top_p, top_k=None, num_return_sequences=rc.group_size,
                               eos_token_id=[vocab[t] for t in STOP_TOKENS if t in vocab],
                               pad_token_id=processor.tokenizer.pad_token_id,
                               bad_words_ids=[[vocab[t]] for t in VISION_TOKENS if t in vocab])
    processor.tokenizer.padding_side = "left"

    def per_prompt(n: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        groups = engine.generate_groups([EnginePrompt(model_inputs=p.model_inputs) for p in prepared[:n]],
                                        rc.group_size, [spec] * n)
        return time.perf_counter() - t0, sum(len(c.token_ids) for g in groups for c in g)

    def batched(n: int) -> tuple[float, int]:
        frames = [f for r in recs[:n] for f in record_media(r, dataset_dir, cfg.data, cache).frames]
        inputs = processor(text=[p.prompt_text for p in prepared[:n]], images=frames, padding=True,
                           return_tensors="pt", images_kwargs=_size_kwargs(cfg.data))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, generation_config=gen_cfg)
        dt = time.perf_counter() - t0
        new = out[:, inputs["input_ids"].shape[1]:]
        stops = set(gen_cfg.eos_token_id)
        tokens = sum(next((i + 1 for i, t in enumerate(row.tolist()) if t in stops), new.shape[1]) for row in new)
        return dt, tokens

    half = rc.prompts_per_step // max(1, rc.num_workers)
    cases = {f"stgrl engine, {half} prompts one call each (a worker's step)": lambda: per_prompt(half),
             f"one batched generate, {half} prompts x G": lambda: batched(half),
             f"one batched generate, {rc.prompts_per_step} prompts x G (TRL's call)": lambda: batched(rc.prompts_per_step)}
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, int]]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(fn())
    base = None
    for name, runs in times.items():
        per_token = statistics.median(dt / max(1, n) for dt, n in runs)
        base = base or per_token
        log.info("%s: median %.2f s per call, %.0f tokens, %.2f ms per token (%.2fx the engine's)", name,
                 statistics.median(dt for dt, _ in runs), statistics.median(n for _, n in runs), 1e3 * per_token,
                 base / per_token)
    return 0


# ---------------------------------------------------------------------------------------------- summary
def steady_rate(steps: list[dict[str, float]], warmup: int) -> float:
    """Steps per second after the first `warmup` steps: (n - warmup) / (end of last - end of warm-up)."""
    if len(steps) <= warmup + 1:
        return float("nan")
    t_first = steps[warmup - 1]["end_s"] if warmup > 0 else 0.0
    return (len(steps) - warmup) / max(1e-9, steps[-1]["end_s"] - t_first)


def median_rate(steps: list[dict[str, float]], warmup: int) -> float:
    """1 / the median step time after the warm-up: what a step costs when the machine's other load
    leaves it alone (spikes from other jobs move the mean, not the median)."""
    ends = [s["end_s"] for s in steps[max(0, warmup - 1):]]
    gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
    return 1.0 / gaps[len(gaps) // 2] if gaps else float("nan")


def cpu_per_step(run: dict[str, Any], warmup: int) -> float:
    """CPU seconds (all processes of the system) per step over the steps after the warm-up, from the
    sampled CPU series interpolated at the first and last timed step ends."""
    series, steps = run.get("cpu_series") or [], run["steps"]
    if len(steps) <= warmup + 1 or len(series) < 2 or "end_unix_s" not in steps[-1]:
        return float("nan")

    def at(t: float) -> float:
        for (t0, c0), (t1, c1) in zip(series, series[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(1e-9, t1 - t0)
        return series[-1][1] if t > series[-1][0] else series[0][1]

    first = steps[warmup - 1]["end_unix_s"] if warmup > 0 else steps[0]["end_unix_s"]
    return (at(steps[-1]["end_unix_s"]) - at(first)) / (len(steps) - max(1, warmup))


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """Wall time of the first (time, reward) point at or above `target`; None if never."""
    return next((t for t, r in sorted(points) if r >= target), None)


def equal_steps(runs: dict[str, dict[str, Any]]) -> int:
    """The last checkpoint step (a multiple of each run's export period) that every system reached."""
    return min(max((c["steps"] for c in r["checkpoints"] if c["steps"] % r.get("every", 1) == 0), default=0)
               for r in runs.values())


def to_evaluate(runs: dict[str, dict[str, Any]], curve_every: int) -> list[str]:
    """The checkpoints worth a held-out evaluation: each system's every `curve_every` steps (the reward
    curve over wall time), at the equal-steps point and its last (equal wall time); the other exports
    only make sure the equal-steps point exists."""
    n = equal_steps(runs)
    picked = []
    for r in runs.values():
        last = r["checkpoints"][-1] if r["checkpoints"] else None
        picked += [c["path"] for c in r["checkpoints"]
                   if c is last or c["steps"] == n or c["steps"] % curve_every == 0]
    return picked


def summarize(runs: dict[str, dict[str, Any]], evals: dict[str, dict[str, float]], start_reward: float,
              warmup: int, target: float | None) -> dict[str, Any]:
    """Per system: steps/s, memory, generate time, and held-out rewards at equal steps / equal wall
    time; `evals` maps checkpoint path -> metrics (the checkpoints of `to_evaluate`)."""
    key = "eval_sampled/reward_total"
    n_equal = equal_steps(runs)
    rows: dict[str, dict[str, Any]] = {}
    for name, r in runs.items():
        ckpts = r["checkpoints"]
        points = [(0.0, start_reward)] + [(c["wall_s"], evals[c["path"]][key]) for c in ckpts if c["path"] in evals]
        at_steps = next((evals[c["path"]][key] for c in ckpts if c["steps"] == n_equal), float("nan"))
        timed = r["steps"][warmup:]
        rows[name] = {
            "steps": len(r["steps"]), "steps_per_s": steady_rate(r["steps"], warmup),
            "steps_per_s_median": median_rate(r["steps"], warmup), "cpu_s_per_step": cpu_per_step(r, warmup),
            "wall_s": r["steps"][-1]["end_s"] if r["steps"] else float("nan"), "startup_s": r["startup_s"],
            "generate_s_per_step": sum(s.get("generate_s", 0.0) for s in timed) / max(1, len(timed)),
            "peak_rss_gb": r["peak_rss_bytes"] / 1e9, "peak_pss_gb": r["peak_pss_bytes"] / 1e9,
            "peak_processes": r["peak_processes"], "reward_equal_steps": at_steps,
            "reward_equal_wall": evals[ckpts[-1]["path"]][key] if ckpts else float("nan"),
            "greedy_equal_wall": evals[ckpts[-1]["path"]]["eval/reward_total"] if ckpts else float("nan"),
            "curve": points,
        }
    if target is None:  # halfway from the shared start to the best final reward
        target = start_reward + 0.5 * max(0.0, max(row["reward_equal_wall"] for row in rows.values()) - start_reward)
    for row in rows.values():
        row["time_to_target_s"] = time_to(row["curve"], target)
    return {"equal_steps": n_equal, "target": target, "start_reward": start_reward, "systems": rows}


def markdown_table(summary: dict[str, Any], baseline: str) -> str:
    """The docs table: one row per system, ratios against `baseline` (a TRL run)."""
    base = summary["systems"][baseline]
    lines = [f"| system | steps in the budget | steady steps/s | vs {baseline} | median-step steps/s | vs {baseline} "
             "| CPU s/step | generate s/step | peak RSS GB | peak PSS GB "
             f"| held-out @ {summary['equal_steps']} steps | held-out @ equal wall | greedy @ equal wall "
             f"| s to {summary['target']:.3f} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["systems"].items():
        ttt = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
        lines.append(f"| {name} | {r['steps']} | {r['steps_per_s']:.3f} | {r['steps_per_s'] / base['steps_per_s']:.2f}× "
                     f"| {r['steps_per_s_median']:.3f} | {r['steps_per_s_median'] / base['steps_per_s_median']:.2f}× "
                     f"| {r['cpu_s_per_step']:.2f} | {r['generate_s_per_step']:.2f} "
                     f"| {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} "
                     f"| {r['reward_equal_steps']:.3f} | {r['reward_equal_wall']:.3f} | {r['greedy_equal_wall']:.3f} "
                     f"| {ttt} |")
    lines.append(f"\nshared start (SFT checkpoint): held-out sampled reward {summary['start_reward']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    if args.command == "worker-stgrl":
        return worker_stgrl(args)
    if args.command == "worker-trl":
        return worker_trl(args)
    if args.command == "worker-eval":
        return worker_eval(args)
    if args.command == "generate-probe":
        return generate_probe(args)
    if args.from_json is not None:
        return reprint(args)
    apply_smoke(args)
    try:
        validate(args)
    except BenchError as e:
        ap.error(str(e))
    return orchestrate(args)


def reprint(args: argparse.Namespace) -> int:
    """The summary of a saved run, recomputed (no training, no evaluation)."""
    from rich.console import Console

    saved = json.loads(args.from_json.read_text())
    runs, evals = saved["runs"], saved["evals"]
    summary = summarize(runs, evals, evals["start"]["eval_sampled/reward_total"], args.warmup, args.target)
    baseline = next((n for n in runs if n.startswith("trl")), next(iter(runs)))
    Console(width=220).print(f"{markdown_table(summary, baseline)}\n{saved['settings']}\n{saved['machine']}",
                             markup=False, highlight=False)
    return 0


def orchestrate(args: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    load_before = os.getloadavg()
    model, train, evalp = prepare(args)
    t_runs = time.perf_counter()
    out = args.workdir / ("smoke" if args.smoke else "run")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec_path = out / "spec.json"
    spec = job_spec(args, model, train, evalp)
    spec_path.write_text(json.dumps(spec, indent=2))
    tmp_home = Path(tempfile.mkdtemp(prefix="stgrl-ptrl-home-", dir="/tmp"))
    env = {**os.environ, **ENV, "HOME": str(tmp_home), "RAY_TMPDIR": "/tmp"}  # Ray's token/state off the home dir
    runs: dict[str, dict[str, Any]] = {}
    try:
        for system in args.systems:
            variants = ([(f"trl-t{t}", ["--threads", str(t)]) for t in args.trl_threads] if system == "trl"
                        else [(f"stgrl-{system}", ["--mode", system])])
            for name, extra in variants:
                python = Path(args.trl_python) if system == "trl" else Path(sys.executable)
                if system == "trl":
                    extra += ["--nice", str(args.trl_nice)]
                command = "worker-trl" if system == "trl" else "worker-stgrl"
                log.info("run %s (%.0f s of training)", name, args.wall_s)
                runs[name] = run_worker(python, command, spec_path, out / name, extra, env, out / f"{name}.log")
                runs[name]["every"] = args.checkpoint_every
                log.info("%s: %d steps, %.1f GB peak RSS", name, len(runs[name]["steps"]),
                         runs[name]["peak_rss_bytes"] / 1e9)
        t_evals = time.perf_counter()
        jobs = [("start", model)] + [(path, Path(path)) for path in to_evaluate(runs, args.curve_every)]
        log.info("held-out evaluation of %d checkpoints, %d at a time", len(jobs), args.eval_parallel)

        def evaluate(job: tuple[str, Path]) -> tuple[str, dict[str, float]]:
            key, path = job
            name = "start" if key == "start" else f"{Path(key).parent.parent.name}-{Path(key).name}"
            res = run_worker(Path(sys.executable), "worker-eval", spec_path, out / "evals" / name,
                             ["--model", str(path)], env, out / "evals" / f"{name}.log")
            return key, res

        (out / "evals").mkdir()
        with ThreadPoolExecutor(args.eval_parallel) as pool:
            evals = dict(pool.map(evaluate, jobs))
    finally:
        shutil.rmtree(tmp_home, ignore_errors=True)
    eval_s = time.perf_counter() - t_evals
    for r in runs.values():  # keep the evaluated checkpoints only
        for c in r["checkpoints"]:
            if c["path"] not in evals:
                shutil.rmtree(c["path"], ignore_errors=True)
    summary = summarize(runs, evals, evals["start"]["eval_sampled/reward_total"], args.warmup, args.target)
    baseline = next((n for n in runs if n.startswith("trl")), next(iter(runs)))
    table = markdown_table(summary, baseline)
    load_after = os.getloadavg()
    settings = (f"settings: {args.config.name} {' '.join(args.overrides)}; wall budget {args.wall_s:.0f} s per system, "
                f"run.total_steps {spec['total_steps']}, checkpoints every {args.checkpoint_every} steps, "
                f"steps/s after {args.warmup} warm-up steps, held-out {args.eval_samples} records x "
                f"{args.eval_sampled} draws (+ greedy); TRL threads {args.trl_threads}, TRL niceness {args.trl_nice} "
                f"(Ray actors: 15)")
    machine = (f"machine: {os.cpu_count()} CPU(s) {platform.machine()}, load average before/after "
               f"{load_before[0]:.1f}/{load_after[0]:.1f}; preparation {t_runs - t_all:.0f} s, runs "
               f"{t_evals - t_runs:.0f} s, evaluations {eval_s:.0f} s, total {time.perf_counter() - t_all:.0f} s")
    from rich.console import Console

    Console(width=220).print(f"{table}\n{settings}\n{machine}", markup=False, highlight=False)
    (out / "table.md").write_text(f"{table}\n\n{settings}\n\n{machine}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "spec": spec,
                                         "summary": summary, "runs": runs, "evals": evals, "settings": settings,
                                         "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
