"""Rollout engine throughput on CPU (numbers in docs/benchmarks.md).

Two modes, because vLLM lives in its own venv (it pins torch/transformers):

- ``text`` (run in ``.venv-vllm``: ``scripts/vllm_lane.sh --bench``): tokens/s of the HF engine and
  the vLLM engine on the same tiny text Qwen2 and the same prompts, in one process, through the
  engine interface the RolloutWorker uses (one group of G per prompt).
- ``video`` (main venv: ``.venv/bin/python benchmarks/rollout.py video``): samples/s and tokens/s of
  the HF engine on the embedded tiny Qwen2.5-VL with synthetic video prompts (decode + processor
  timed separately).

Both engines run with one thread (``OMP_NUM_THREADS=1``, vLLM's OpenMP binding off) so the numbers
compare engines, not thread counts, on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.rollout")


def _text_model(out: Path, hidden: int, layers: int) -> Path:
    """The lane's tiny Qwen2 builder (tests_vllm/tiny_text_model.py), loaded by path."""
    spec = importlib.util.spec_from_file_location("tiny_text_model", ROOT / "tests_vllm" / "tiny_text_model.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.build_tiny_text_model(out, seed=0, hidden_size=hidden, num_layers=layers)


def _time_engine(engine, prompts, group_size: int, sampling) -> dict[str, float]:
    engine.generate_group(prompts[0], group_size, sampling)  # warm-up (allocations, first-call paths)
    tokens = samples = 0
    t0 = time.perf_counter()
    for p in prompts:
        group = engine.generate_group(p, group_size, sampling)
        samples += len(group)
        tokens += sum(len(c.token_ids) for c in group)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": tokens, "samples": samples, "tokens_per_s": tokens / dt,
            "samples_per_s": samples / dt}


def bench_text(args: argparse.Namespace) -> dict:
    import torch

    from stgrl.rollout.engine import EnginePrompt, SamplingSpec
    from stgrl.rollout.hf_engine import HFEngine

    torch.set_num_threads(1)
    model_dir = _text_model(Path(args.cache) / f"tiny-text-h{args.hidden}-l{args.layers}", args.hidden, args.layers)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = [EnginePrompt({"input_ids": torch.tensor([[(11 * i + 7 * k) % (vocab - 20) + 10
                                                         for k in range(args.prompt_len)]])})
               for i in range(args.prompts)]
    sampling = SamplingSpec(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    hf = HFEngine.from_pretrained(model_dir)
    results["hf"] = {"startup_s": time.perf_counter() - t0, **_time_engine(hf, prompts, args.group_size, sampling)}
    del hf
    from stgrl.rollout.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    vllm = VLLMEngine(model_dir, dtype="float32", gpu_memory_utilization=0.05, max_model_len=1024)
    results["vllm"] = {"startup_s": time.perf_counter() - t0,
                       **_time_engine(vllm, prompts, args.group_size, sampling)}
    params = sum(v.numel() for v in __import__("safetensors.torch", fromlist=["load_file"])
                 .load_file(str(model_dir / "model.safetensors")).values())
    return {"mode": "text", "model": {"hidden": args.hidden, "layers": args.layers, "vocab": vocab,
                                      "parameters": params},
            "prompts": args.prompts, "prompt_len": args.prompt_len, "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens, "results": results}


def bench_video(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoProcessor

    from stgrl.rollout.config import DataConfig
    from stgrl.rollout.data.synth import make_sample, write_media
    from stgrl.rollout.engine import EnginePrompt, SamplingSpec
    from stgrl.rollout.hf_engine import HFEngine
    from stgrl.rollout.tiny_model import build_tiny_model
    from stgrl.rollout.video import prepare_prompt

    torch.set_num_threads(1)
    cache = Path(args.cache)
    model_dir = cache / "tiny-vl"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, seed=0)
    data_cfg = DataConfig(max_frames=args.frames, min_frames=min(args.frames, 4))
    data_dir = cache / f"shapes-{args.frames}f"
    records, index = [], 0
    while len(records) < args.prompts:
        sample = make_sample(index, 0, "train", "easy", data_cfg)
        index += 1
        if sample.record.video_path is None:
            continue
        if not (data_dir / sample.record.media_path).exists():
            write_media(sample, data_dir)
        records.append(sample.record)
    processor = AutoProcessor.from_pretrained(model_dir)
    t0 = time.perf_counter()
    prepared = [prepare_prompt(r, processor, data_cfg, data_dir) for r in records]
    prepare_s = time.perf_counter() - t0
    engine = HFEngine.from_pretrained(model_dir)
    sampling = SamplingSpec(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    res = _time_engine(engine, [EnginePrompt(p.model_inputs) for p in prepared], args.group_size, sampling)
    visual_tokens = int(prepared[0].model_inputs["image_grid_thw"].prod(-1).sum()) // 4
    return {"mode": "video", "frames": args.frames, "visual_tokens_per_prompt": visual_tokens,
            "prompt_len": int(prepared[0].model_inputs["input_ids"].shape[1]),
            "prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
            "prepare_s_per_prompt": prepare_s / len(prepared), "results": {"hf": res}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["text", "video"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64, help="text mode")
    parser.add_argument("--hidden", type=int, default=256, help="text mode: hidden size (head_dim 32)")
    parser.add_argument("--layers", type=int, default=4, help="text mode")
    parser.add_argument("--frames", type=int, default=8, help="video mode: frames per prompt")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    out = bench_text(args) if args.mode == "text" else bench_video(args)
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "torch_threads": 1, "loadavg_1m": os.getloadavg()[0]}
    for engine, r in out["results"].items():
        logger.info("%-5s %-4s %8.1f tokens/s %7.2f samples/s  (%d samples, %d tokens, %.2f s%s)", out["mode"],
                    engine, r["tokens_per_s"], r["samples_per_s"], r["samples"], r["tokens"], r["seconds"],
                    f", start-up {r['startup_s']:.1f} s" if "startup_s" in r else "")
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
