"""Learner throughput: tokens/s of a GSPO update and the split of a step, with 1 and 2 ranks.

    .venv/bin/python benchmarks/learner.py [--model DIR] [--ranks 1 2] [--steps 3] [--out results.json]

1. Uses the demo model (`--model`, default: the embedded tiny Qwen2.5-VL built into a temp dir).
2. Builds one rollout batch the shape of the demo's (8 prompts x G=4, `--frames` frames of
   `--frame-px` px through the real processor, completions of ~`--completion-len` tokens) with
   random completions and rewards — the learner's cost does not depend on what the tokens say.
3. Starts a local Ray (temp dir) and, per rank count, a learner group (ZeRO-2, fp32, gloo on CPU),
   takes one warm-up update, then `--steps` timed updates of `num_minibatches` optimizer steps each.
   Reports per update: old log-prob pass, training forward, backward, optimizer (summed over
   minibatches, slowest rank), the whole update, learner tokens/s (prompt + completion tokens of
   the training forwards / update time), and the weight publish = full state gather on the ranks
   plus the driver-side fetch of rank 0's CPU state dict through Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

log = logging.getLogger("benchmarks.learner")

PHASES = ("time_old_logprobs_s", "time_forward_s", "time_backward_s", "time_optimizer_s", "time_step_s")


def make_batch(model_dir: Path, prompts: int, group: int, frames: int, frame_px: int, completion_len: int,
               seed: int):
    """One RL batch of real processor outputs (random pixels) and random completions/rewards."""
    from PIL import Image
    from transformers import AutoProcessor

    from stgrl.learner.batch import RLBatch, ScoredGroup

    proc = AutoProcessor.from_pretrained(model_dir)
    vocab = len(proc.tokenizer)
    rng = np.random.default_rng(seed)
    groups = []
    for p in range(prompts):
        content = []
        for k in range(frames):
            content += [{"type": "text", "text": f"Frame {k} at {k * 0.5:.1f}s: "}, {"type": "image"}]
        content.append({"type": "text", "text": "When and where does the red circle appear?"})
        text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = [Image.fromarray(rng.integers(0, 256, (frame_px, frame_px, 3), dtype=np.uint8))
                  for _ in range(frames)]
        inputs = dict(proc(text=[text], images=images, return_tensors="pt"))
        lens = rng.integers(max(1, completion_len // 2), completion_len * 3 // 2 + 1, size=group)
        comps = [rng.integers(20, vocab, size=int(n)).tolist() for n in lens]
        groups.append(ScoredGroup(model_inputs=inputs, completion_ids=comps,
                                  behaviour_logprobs=[[-float(np.log(vocab))] * len(c) for c in comps],
                                  rewards=rng.random(group).tolist(), group_id=f"bench-{p}"))
    prompt_len = int(groups[0].model_inputs["input_ids"].shape[1])
    return RLBatch(groups=groups), prompt_len


def bench(ranks: int, model_dir: Path, batch, steps: int, lr: float) -> dict[str, float]:
    from stgrl.learner.actor import start_learner_group
    from stgrl.learner.config import LearnerConfig

    cfg = LearnerConfig(lr=lr, num_ranks=ranks, num_minibatches=4)
    t0 = time.perf_counter()
    group = start_learner_group(ranks, model_dir, cfg, seed=0)
    start_s = time.perf_counter() - t0
    try:
        group.train_rl_batch(batch)  # warm-up: allocator, first DeepSpeed step
        runs = [group.train_rl_batch(batch) for _ in range(steps)]
        pubs = []
        for v in range(steps):
            t = time.perf_counter()
            rank_side = group.publish_weights(v)
            state = group.full_state_dict()
            pubs.append({"gather_s": rank_side["time_gather_s"], "gather_and_fetch_s": time.perf_counter() - t,
                         "mib": sum(x.numel() * x.element_size() for x in state.values()) / 2**20})
    finally:
        group.shutdown()
    out = {k: statistics.median(r[k] for r in runs) for k in PHASES}
    out["tokens"] = runs[0]["tokens"]
    out["tokens_per_s"] = statistics.median(r["tokens"] / r["time_step_s"] for r in runs)
    out["optimizer_steps"] = runs[0]["num_minibatches"]
    out["publish_gather_s"] = statistics.median(p["gather_s"] for p in pubs)
    out["publish_gather_fetch_s"] = statistics.median(p["gather_and_fetch_s"] for p in pubs)
    out["state_mib"] = pubs[0]["mib"]
    out["group_start_s"] = start_s
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="HF checkpoint dir (default: build the tiny model)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--frame-px", type=int, default=112)
    ap.add_argument("--completion-len", type=int, default=45)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="stgrl-bench-", dir="/tmp"))
    model_dir = args.model
    if model_dir is None:
        from stgrl.rollout.tiny_model import build_tiny_model

        model_dir = build_tiny_model(tmp / "tiny", seed=0)
    n_params = None
    cfg_file = Path(model_dir) / "stgrl_tiny_model.json"
    if cfg_file.exists():
        n_params = json.loads(cfg_file.read_text()).get("parameters")
    batch, prompt_len = make_batch(Path(model_dir), args.prompts, args.group, args.frames, args.frame_px,
                                   args.completion_len, seed=0)
    os.environ["HOME"] = str(tmp)  # Ray's auth token and state stay out of the user's home
    ray.init(num_cpus=max(2, max(args.ranks)), resources={"learner": max(args.ranks)}, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "ray"), log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
                                       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    results = {}
    try:
        for r in args.ranks:
            log.info("benchmarking %d rank(s)", r)
            results[r] = bench(r, Path(model_dir), batch, args.steps, args.lr)
    finally:
        ray.shutdown()

    table = Table(title=f"learner GSPO update: {args.prompts} prompts x G={args.group}, prompt {prompt_len} tok, "
                        f"~{args.completion_len} completion tok, 4 minibatches (medians of {args.steps})")
    cols = ["ranks", "old logp s", "forward s", "backward s", "optimizer s", "update s", "tokens/s",
            "gather s", "gather+fetch s"]
    for c in cols:
        table.add_column(c, justify="right")
    for r, m in results.items():
        table.add_row(str(r), *(f"{m[k]:.3f}" for k in PHASES), f"{m['tokens_per_s']:.0f}",
                      f"{m['publish_gather_s']:.4f}", f"{m['publish_gather_fetch_s']:.4f}")
    Console(width=150).print(table)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "prompt_len": prompt_len,
                                        "parameters": n_params, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
