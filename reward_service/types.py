"""What a reward request and its answer look like (docs/design.md §3, "Reward service contract").

The payload Structs (`ScoringSample`, `ScoringGroup`, `KeyFrame`, `Score`) are both the pure API
(`score_sample`) and the wire schema; they are defined in `stgrl.transport.scoring` (the wire layer
carries them and imports nothing above it) and re-exported here. The task and component names are
the reward service's own.
"""

from __future__ import annotations

from stgrl.transport.scoring import Box, KeyFrame, Score, ScoringGroup, ScoringSample, completion_id

__all__ = ["COMPONENTS", "TASKS", "Box", "KeyFrame", "Score", "ScoringGroup", "ScoringSample", "completion_id"]

COMPONENTS: tuple[str, ...] = (
    "format",
    "answer_accuracy",
    "answer_tiou",
    "answer_viou",
    "think_temporal_segment",
    "temporal_proximity",
    "spatial_gated",
)
"""Every reward component name, in the order the design lists them."""

TASKS: tuple[str, ...] = ("spatio_temporal", "temporal", "spatial", "general")
