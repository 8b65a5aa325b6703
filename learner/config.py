"""Learner options (docs/design.md §4-5). Pure msgspec: importable without torch or DeepSpeed."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

PosFloat = Annotated[float, Meta(gt=0.0)]
NonNegFloat = Annotated[float, Meta(ge=0.0)]
PosInt = Annotated[int, Meta(ge=1, le=10**6)]
Steps = Annotated[int, Meta(ge=0, le=10**9)]


class LearnerConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """GSPO on DeepSpeed: ranks, ZeRO stage, optimiser, loss."""

    num_ranks: Annotated[int, Meta(ge=1, le=1024)] = 1
    zero_stage: Literal[2, 3] = 2
    precision: Literal["fp32", "bf16"] = "fp32"
    lr: Annotated[float, Meta(gt=0.0, le=1.0)] = 2e-4
    warmup_steps: Steps = 2
    weight_decay: NonNegFloat = 0.0
    grad_clip: PosFloat = 1.0
    num_minibatches: PosInt = 4
    loss: Literal["gspo", "gspo_token"] = "gspo"
    advantage_scale: Literal["std", "none"] = "std"
    """Group advantage: (r - mean) / std (GSPO paper) or r - mean ("none", Dr. GRPO; see gspo.group_advantages)."""
    eps_low: Annotated[float, Meta(gt=0.0, lt=1.0)] = 3e-4
    eps_high: Annotated[float, Meta(gt=0.0)] = 4e-4
    kl_beta: NonNegFloat = 0.0
    is_cap: Annotated[float, Meta(ge=1.0)] = 2.0
    """Truncation C of the sequence-level importance weight for stale / engine-mismatched samples."""
    checkpoint_every: Steps = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    reduce_bucket_size: Annotated[int, Meta(ge=1, le=2**40)] = 5_000_000
    total_steps: Steps = 0
    """Optimizer steps the cosine decay spans (RL: batches x num_minibatches); 0: constant after warmup."""
    min_lr_ratio: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    """Cosine floor as a fraction of `lr`."""
    use_is_weights: bool = True
    """Weight each sequence by the truncated IS weight min(exp(mean(old - behaviour)), is_cap)."""
    num_gpus_per_rank: Annotated[float, Meta(ge=0.0, le=64.0)] = 0.0
    """GPUs each learner rank asks Ray for (0: CPU ranks with DS_ACCELERATOR=cpu and gloo)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them (7B: the
    activations of a 3.7k-token sequence would otherwise dominate memory; costs ~1 extra forward)."""
    weight_group_mib: Annotated[int, Meta(ge=1, le=65536)] = 256
    """Under ZeRO-3, how many MiB of parameters are gathered at a time while rank 0 copies a new
    weight version into its publisher's snapshot (the transient cost on every rank's device)."""
    micro_batch_tokens: Annotated[int, Meta(ge=0)] = 0
    """Token budget of one forward/backward (rows x padded length, groups kept whole); a minibatch
    larger than this is split into micro-batches whose gradients add up to the minibatch's before its
    one optimizer step. 0: the whole minibatch in one forward."""


class SFTConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Cold-start SFT: same engine code as the learner, loss on target tokens only."""

    steps: Steps = 300
    batch_size: PosInt = 8
    lr: Annotated[float, Meta(gt=0.0, le=1.0)] = 2e-3
    warmup_steps: Steps = 20
    eval_every: Steps = 100
    eval_samples: PosInt = 64
    num_ranks: Annotated[int, Meta(ge=1, le=1024)] = 1
    checkpoint_every: Steps = 0
    """Save a checkpoint (under `<run-dir>/sft/checkpoints`) every N steps (0: only at the end);
    `stgrl sft --resume` continues from the newest one."""
