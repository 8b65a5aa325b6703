"""Reward options (docs/design.md §3). Pure msgspec: importable without torch, Ray or ZeroMQ."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

NonNegFloat = Annotated[float, Meta(ge=0.0)]
PosFloat = Annotated[float, Meta(gt=0.0)]
Weight = Annotated[float, Meta(ge=0.0, le=1e6)]
"""A component weight: bounded so the weighted total of 7 components in [0, 1] stays finite (1.7e308
made it inf, sent as ``"total": null``)."""
Seconds = Annotated[float, Meta(gt=0.0, le=7 * 86400.0)]


class RewardWeights(Struct, forbid_unknown_fields=True, kw_only=True):
    """Weight w_c of each component in the total (only components that apply to a task count)."""

    format: Weight = 1.0
    answer_accuracy: Weight = 1.0
    answer_tiou: Weight = 1.0
    answer_viou: Weight = 1.0
    think_temporal_segment: Weight = 1.0
    temporal_proximity: Weight = 1.0
    spatial_gated: Weight = 1.0


class RewardConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How completions are scored and how the sharded reward service runs."""

    weights: RewardWeights = msgspec.field(default_factory=RewardWeights)
    gate_delta_s: Annotated[float, Meta(gt=0.0, le=1e9)] = 1.0
    """Temporal gate: a claim's box is scored only if |t - nearest key frame| <= this (seconds)."""
    sigma0: Annotated[float, Meta(gt=0.0, le=1e9)] = 4.0
    """Adaptive proximity: initial sigma (seconds) of the curriculum."""
    sigma_min: Annotated[float, Meta(gt=0.0, le=1e9)] = 1.0
    """Adaptive proximity: final (minimum) sigma."""
    proximity_scope: Literal["claims", "all"] = "claims"
    """`claims`: mean over claim times; `all`: every `<t>X</t>s` mention in the think, as the reference
    (its pattern is `<t>([\\d.]+)</t>s`: a `<t>X</t>` without the `s` is not a mention)."""
    object_match: Literal["name", "any"] = "name"
    """`name`: boxes are compared with the same object's ground truth; `any` ignores names (reference)."""
    spatial_mode: Literal["gated", "plain"] = "gated"
    """`plain` is the ablation baseline: IoU at the predicted time without gating or proximity."""
    num_shards: Annotated[int, Meta(ge=1, le=256)] = 2
    deadline_s: Seconds = 2.0
    """Per-request deadline before the client retries on another shard."""
    batch_size: Annotated[int, Meta(ge=1, le=65536)] = 32
