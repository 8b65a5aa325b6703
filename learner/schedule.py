"""Learning-rate schedule: linear warmup then cosine decay (docs/design.md §4), as a pure function of the step.

Used through ``torch.optim.lr_scheduler.LambdaLR`` so DeepSpeed checkpoints its position
(``last_epoch``) and an exact resume continues the same curve.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Linear from ``1/(warmup+1)`` to 1 over ``warmup_steps`` (never 0: the first step must move the
    weights, or the first GSPO minibatch would be wasted), then cosine from 1 to ``min_ratio`` by
    ``total_steps``; constant 1 after warmup when ``total_steps`` is 0 (unknown length).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if total_steps <= 0:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
