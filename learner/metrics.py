"""Combining per-rank learner metrics into one record per step (pure)."""

from __future__ import annotations

from collections.abc import Sequence

SUM_KEYS = frozenset({"tokens", "num_sequences", "num_groups", "zero_std_groups", "target_tokens"})
"""Counts: summed over ranks. Everything else is averaged, except ``*_max``/``*_min`` and timings."""


def combine_rank_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Sum counts, max timings (the step waits for the slowest rank) and ``*_max``, min ``*_min``,
    mean the rest; adds ``tokens_per_s`` when ranks report ``tokens`` and ``time_step_s``."""
    if not per_rank:
        return {}
    out: dict[str, float] = {}
    for key in per_rank[0]:
        vals = [m[key] for m in per_rank if key in m]
        if key in SUM_KEYS:
            out[key] = float(sum(vals))
        elif key.startswith("time_") or key.endswith("_max"):
            out[key] = float(max(vals))
        elif key.endswith("_min"):
            out[key] = float(min(vals))
        else:
            out[key] = float(sum(vals) / len(vals))
    if "tokens" in out and out.get("time_step_s", 0.0) > 0:
        out["tokens_per_s"] = out["tokens"] / out["time_step_s"]
    return out
