"""DeepSpeed config dict from a :class:`LearnerConfig` (pure: no DeepSpeed import).

Batch sizes are nominal: the learner feeds DeepSpeed one already-formed minibatch per
``backward``/``step`` (gradient accumulation 1), so ``train_batch_size`` only satisfies DeepSpeed's
consistency check. Bucket sizes stay small (docs/design.md §4 pitfalls: the default 2 GB ZeRO-2 bucket is
re-allocated every step on CPU).
"""

from __future__ import annotations

from typing import Any

from stgrl.learner.config import LearnerConfig


def build_ds_config(cfg: LearnerConfig, world_size: int, bf16_supported: bool = True) -> dict[str, Any]:
    """ZeRO-2/3 + AdamW (``torch_adam``: no JIT-built CPU Adam) + grad clip + optional bf16."""
    bucket = int(cfg.reduce_bucket_size)
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "reduce_bucket_size": bucket,
        "contiguous_gradients": True,
        "overlap_comm": False,
    }
    if cfg.zero_stage == 2:
        zero["allgather_bucket_size"] = bucket
    else:
        zero |= {
            "stage3_prefetch_bucket_size": bucket,
            "stage3_param_persistence_threshold": 0,
            "stage3_max_live_parameters": 10 * bucket,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16" and bf16_supported},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": cfg.weight_decay,
                       "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
