"""One GPU check of the real-model path (run by ``scripts/gpu_check.sh``; table in docs/benchmarks.md).

On one GPU, in under 8 minutes, with random weights of the Qwen2.5-VL-7B shape (no download):

1. build the checkpoint (our tokenizer and processor, the 7B text and vision towers, bf16);
2. vLLM: start-up; 8 prompts x G 8 with 8 frames (126 visual tokens each) in one ``generate_groups``
   call (tokens/s);
   an in-place update from tensors named as the learner names them (``model.language_model.*``,
   ``model.visual.*``, seconds), then the same prompts again;
3. the log-prob gap between those post-update vLLM samples and a transformers teacher-forced pass
   (the learner's ``completion_logprobs``) on the same GPU, same pixels, same tokens;
4. one DeepSpeed ZeRO-3 bf16 GSPO update (``rl_update``: gradient checkpointing, token-budget
   micro-batches) over NCCL on the vLLM samples, with a 3B-shaped model by default (a 7B ZeRO-3
   Adam state, 16 bytes per parameter, does not fit one GPU beside its activations).

Each phase runs in its own process (``phase`` sub-command) so the GPU memory one holds is free for
the next; the driver merges their JSON. ``--dry-run``: the same phases on CPU with the embedded tiny
shape, 2 prompts x G 2 of 2 small frames, fp32 and gloo (what the test suite runs); vLLM is used when it imports (``.venv-vllm``),
otherwise the HF engine stands in and the JSON says so.

The vocabulary is our tokenizer's (~730 tokens, not Qwen's 152k): the checkpoint must be loadable
without a download, and a random model sampling ids the tokenizer lacks would break detokenizing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.gpu_check")

# Qwen2.5-VL-7B-Instruct / -3B-Instruct config.json: text and vision towers (vocab aside, see above).
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"text_hidden": 3584, "text_layers": 28, "text_heads": 28, "text_kv_heads": 4, "text_intermediate": 18944,
           "vision_hidden": 1280, "vision_depth": 32, "vision_heads": 16, "vision_intermediate": 3420},
    "3b": {"text_hidden": 2048, "text_layers": 36, "text_heads": 16, "text_kv_heads": 2, "text_intermediate": 11008,
           "vision_hidden": 1280, "vision_depth": 32, "vision_heads": 16, "vision_intermediate": 3420},
    "tiny": {},
}
FRAME_HW = (252, 392)  # 9 x 14 merged 28 px cells = 126 visual tokens per frame, under 128 * 28 * 28 px
DRY_FRAME_HW = (56, 84)  # 2 x 3 cells: a dry run exercises the code, not the sizes


def build_checkpoint(out: Path, shape: str, device: str, dtype: str) -> float:
    """Random-weight Qwen2.5-VL of ``shape`` with our tokenizer/processor; returns seconds."""
    import torch
    from transformers import AutoModelForImageTextToText

    from stgrl.rollout.tiny_model import TinyModelSpec, build_config, build_processor, build_tokenizer

    started = time.perf_counter()
    spec = TinyModelSpec(**SHAPES[shape], max_position_embeddings=8192)
    tokenizer = build_tokenizer(spec, seed=0)
    config = build_config(tokenizer, spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    build_processor(tokenizer, spec).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("built %s-shaped Qwen2.5-VL (%.2fB parameters) in %s", shape, n / 1e9, out)
    return time.perf_counter() - started


def _prompts(model_dir: Path, n_prompts: int, n_frames: int, frame_hw: tuple[int, int]):
    """Prompts of random frames, through the checkpoint's processor (as the data pipeline does)."""
    import numpy as np
    from transformers import AutoProcessor

    from stgrl.rollout.engine import EnginePrompt

    processor = AutoProcessor.from_pretrained(model_dir)
    bounds = {"size": {"shortest_edge": 4 * 28 * 28, "longest_edge": 128 * 28 * 28}}  # the data pipeline's form
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(n_prompts):
        frames = [rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8) for _ in range(n_frames)]
        content: list[dict[str, Any]] = []
        for k in range(n_frames):
            content += [{"type": "text", "text": f"Frame {k + 1} at {k * 0.5:.1f}s: "}, {"type": "image"},
                        {"type": "text", "text": "\n"}]
        content.append({"type": "text", "text": f"Question {i}: where is the red circle?"})
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = {k: v for k, v in processor(text=[text], images=frames, return_tensors="pt",
                                             images_kwargs=bounds).items() if hasattr(v, "dtype")}
        prompts.append(EnginePrompt(inputs, images=frames, processor_kwargs=bounds))
    return prompts


def learner_named(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's tensors under the learner's names (what ``full_state_dict`` sends)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            if name.startswith("model."):
                name = "model.language_model." + name[len("model."):]
            elif name.startswith("visual."):
                name = "model." + name
            state[name] = tensor
    return state


def phase_generate(model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """vLLM (or, in a dry run without vLLM, the HF engine): start-up, one batched step, update, again."""
    import torch

    from stgrl.rollout.engine import SamplingSpec

    dry_run, max_new_tokens = args.dry_run, args.max_new_tokens
    out: dict[str, Any] = {"prompts": args.prompts, "group_size": args.group, "frames": args.frames}
    try:
        import vllm  # noqa: F401
        have_vllm = True
    except ImportError:
        have_vllm = False
    if not have_vllm and not dry_run:
        raise SystemExit("vLLM does not import in this venv: scripts/gpu_check.sh builds one with it")
    started = time.perf_counter()
    if have_vllm:
        from stgrl.rollout.vllm_engine import VLLMEngine

        out["engine"] = "vllm"
        engine = VLLMEngine(model_dir, dtype="float32" if dry_run else "bfloat16",
                            gpu_memory_utilization=0.05 if dry_run else 0.6, max_model_len=2048 + max_new_tokens,
                            enforce_eager=args.eager or dry_run, max_images_per_prompt=args.frames,
                            logprob_mode="raw",
                            kv_cache_bytes=256 * 2**20 if dry_run else 0)
    else:
        from stgrl.rollout.hf_engine import HFEngine

        out["engine"] = "hf (vLLM not installed)"
        engine = HFEngine.from_pretrained(model_dir)
    out["startup_s"] = time.perf_counter() - started
    prompts = _prompts(model_dir, args.prompts, args.frames, DRY_FRAME_HW if dry_run else FRAME_HW)
    specs = [SamplingSpec(temperature=1.0, max_new_tokens=max_new_tokens, seed=i) for i in range(args.prompts)]
    t0 = time.perf_counter()
    groups = engine.generate_groups(prompts, args.group, specs)
    out["generate_s"] = time.perf_counter() - t0
    out["generated_tokens"] = sum(len(c.token_ids) for g in groups for c in g)
    out["tokens_per_s"] = out["generated_tokens"] / out["generate_s"]
    out["prompt_tokens"] = [int(p.model_inputs["input_ids"].shape[1]) for p in prompts]
    state = learner_named(model_dir)
    t0 = time.perf_counter()
    engine.load_weights(state, version=1)
    out["update_s"] = time.perf_counter() - t0
    out["update_tensors"] = len(state)
    out["update_gib"] = sum(t.numel() * t.element_size() for t in state.values()) / 2**30
    del state
    groups = engine.generate_groups(prompts, args.group, specs)  # after the update: what the gap measures
    torch.save({"prompts": [dict(p.model_inputs) for p in prompts],
                "completions": [[(c.token_ids, c.behaviour_logprobs) for c in g] for g in groups]},
               work / "samples.pt")
    close = getattr(engine, "close", None)
    if close is not None:
        close()
    return out


def phase_gap(model_dir: Path, work: Path, device: str, dtype: str) -> dict[str, Any]:
    """The learner's teacher-forced log-probs of the post-update samples on the same device."""
    import torch

    from stgrl.learner.engine import load_model
    from stgrl.learner.logprobs import completion_logprobs

    model = load_model(model_dir, getattr(torch, dtype)).to(device).eval()
    saved = torch.load(work / "samples.pt", weights_only=False)
    total, worst, n = 0.0, 0.0, 0
    with torch.no_grad():
        for inputs, group in zip(saved["prompts"], saved["completions"]):
            ids = [c[0] for c in group]
            logp, mask = completion_logprobs(model, inputs, ids, pad_id=0, temperature=1.0)
            behav = torch.zeros_like(logp)
            for i, (_, lp) in enumerate(group):
                behav[i, :len(lp)] = torch.tensor(lp, device=logp.device)
            gap = (logp - behav).abs() * mask
            total += float(gap.sum())
            worst = max(worst, float(gap.max()))
            n += int(mask.sum())
    return {"mean_abs": total / max(1, n), "max_abs": worst, "tokens": n, "dtype": dtype}


def phase_learner(model_dir: Path, work: Path, dry_run: bool) -> dict[str, Any]:
    """One ZeRO-3 GSPO update (bf16 on GPU, NCCL; fp32 and gloo in a dry run) on the vLLM samples."""
    import torch

    from stgrl.learner.batch import ScoredGroup
    from stgrl.learner.config import LearnerConfig
    from stgrl.learner.engine import LearnerEngine, WorldInfo
    from stgrl.learner.rl import rl_update
    from stgrl.learner.testing import free_port

    saved = torch.load(work / "samples.pt", weights_only=False)
    gen = torch.Generator().manual_seed(0)
    groups = [ScoredGroup(model_inputs=inputs, completion_ids=[c[0] for c in group],
                          behaviour_logprobs=[c[1] for c in group],
                          rewards=torch.rand(len(group), generator=gen).tolist(), group_id=f"g{i}")
              for i, (inputs, group) in enumerate(zip(saved["prompts"], saved["completions"]))]
    cfg = LearnerConfig(zero_stage=3, precision="fp32" if dry_run else "bf16", lr=1e-6, warmup_steps=0,
                        num_minibatches=1, gradient_checkpointing=True, micro_batch_tokens=16384)
    started = time.perf_counter()
    engine = LearnerEngine(model_dir, cfg, WorldInfo(master_port=free_port()))
    init_s = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = rl_update(engine, groups)
    step_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"zero_stage": 3, "precision": cfg.precision, "backend": "gloo" if dry_run else "nccl",
            "init_s": init_s, "step_s": step_s, "tokens": metrics["tokens"], "tokens_per_s": metrics["tokens"] / step_s,
            "micro_batches": metrics["num_micro_batches"], "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
            "peak_gib": peak}


def _run_phase(name: str, args: argparse.Namespace, work: Path, model_dir: Path) -> dict[str, Any]:
    """One phase in a child process (its GPU memory is released when it exits)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "phase", name, "--model", str(model_dir),
           "--work", str(work), "--max-new-tokens", str(args.max_new_tokens), "--prompts", str(args.prompts),
           "--group", str(args.group), "--frames", str(args.frames)]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--eager"] if args.eager else []
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    result = json.loads((work / f"{name}.json").read_text())
    result["phase_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("7b", "3b"), default="7b", help="model of the vLLM and gap checks")
    parser.add_argument("--learner-shape", choices=("7b", "3b"), default="3b",
                        help="model of the DeepSpeed step (7b needs ~125 GiB for weights + Adam state)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 256 (dry run 8)")
    for flag, full, dry in (("--prompts", 8, 2), ("--group", 8, 2), ("--frames", 8, 2)):
        parser.add_argument(flag, type=int, default=None, help=f"default {full} (dry run {dry})")
    parser.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs (faster start)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, embedded tiny shape, fp32, gloo")
    parser.add_argument("--work", default=None, help="scratch directory (checkpoints: ~15 GiB for 7b)")
    parser.add_argument("--out", default="gpu_check.json")
    sub = parser.add_subparsers(dest="command")
    phase = sub.add_parser("phase")
    phase.add_argument("name", choices=("generate", "gap", "learner"))
    phase.add_argument("--model", required=True)
    phase.add_argument("--work", required=True)
    phase.add_argument("--max-new-tokens", type=int, required=True)
    for flag in ("--prompts", "--group", "--frames"):
        phase.add_argument(flag, type=int, required=True)
    phase.add_argument("--dry-run", action="store_true")
    phase.add_argument("--eager", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    device, dtype = ("cpu", "float32") if args.dry_run else ("cuda", "bfloat16")
    if args.command == "phase":
        work, model_dir = Path(args.work), Path(args.model)
        if args.name == "generate":
            result = phase_generate(model_dir, work, args)
        elif args.name == "gap":
            result = phase_gap(model_dir, work, device, dtype)
        else:
            result = phase_learner(model_dir, work, args.dry_run)
        (work / f"{args.name}.json").write_text(json.dumps(result, indent=2))
        return 0

    import tempfile

    for name, full, dry in (("max_new_tokens", 256, 8), ("prompts", 8, 2), ("group", 8, 2), ("frames", 8, 2)):
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else full)
    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="stgrl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = "tiny" if args.dry_run else args.shape
    learner_shape = "tiny" if args.dry_run else args.learner_shape
    report: dict[str, Any] = {"shape": shape, "learner_shape": learner_shape, "device": device, "dtype": dtype,
                              "dry_run": args.dry_run, "max_new_tokens": args.max_new_tokens}
    logger.info("gpu check: %s shape, %d prompts x G %d, %d frames", shape, args.prompts, args.group, args.frames)
    model_dir = work / f"model-{shape}"
    report["build_s"] = build_checkpoint(model_dir, shape, device, dtype)
    report["generate"] = _run_phase("generate", args, work, model_dir)
    report["logprob_gap"] = _run_phase("gap", args, work, model_dir)
    learner_dir = model_dir
    if learner_shape != shape:
        learner_dir = work / f"model-{learner_shape}"
        report["learner_build_s"] = build_checkpoint(learner_dir, learner_shape, device, dtype)
    report["learner"] = _run_phase("learner", args, work, learner_dir)
    report["total_s"] = time.perf_counter() - started
    report["gpu"] = os.environ.get("STGRL_GPU_NAME") or _gpu_name()
    Path(args.out).write_text(json.dumps(report, indent=2))
    logger.info("gpu check done in %.0f s: %s", report["total_s"], args.out)
    print(json.dumps(report, indent=2))
    return 0


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        return "none"


if __name__ == "__main__":
    sys.exit(main())
