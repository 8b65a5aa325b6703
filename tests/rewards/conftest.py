"""Fixtures of the reward tests."""

from __future__ import annotations

import random

import pytest

from stgrl.reward_service.types import TASKS, KeyFrame, ScoringSample


def make_samples(n: int, seed: int = 0, prefix: str = "s") -> list[ScoringSample]:
    """`n` samples of all four tasks with varied, partly wrong completions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = TASKS[i % 4]
        t = rng.choice([2.0, 2.4, 5.0, 9.0, 40.0])
        x = rng.randint(0, 40)
        claim = f"<obj>{rng.choice(['red car', 'dog'])}</obj><box>[{x},0,{x + 50},50]</box>at<t>{t}</t>s"
        answer = {"spatio_temporal": "a red car drives", "temporal": f"<t>{t}</t>s to <t>{t + 3}</t>s",
                  "spatial": f"<box>[{x},0,{x + 50},50]</box>", "general": rng.choice("ABC")}[task]
        out.append(ScoringSample(
            id=f"{prefix}{i}", task=task, completion=f"<think>{claim} then <t>{t}</t>s</think><answer>{answer}</answer>",
            answer={"temporal": "[3, 8]", "general": "B"}.get(task, "a red car drives by"),
            options=["A. x", "B. y", "C. z"] if task == "general" else None,
            key_frames=[KeyFrame(0, 2.0), KeyFrame(1, 9.2)],
            key_items={"0": {"red car": [[0.1, 0.0, 0.6, 0.5]]}, "1": {"dog": [[0.3, 0.0, 0.8, 0.5]]}},
            span=[3.0, 8.0] if task == "temporal" else None, frame_size=[100, 100]))
    return out


@pytest.fixture
def samples_of():
    """`samples_of(n, seed=0, prefix="s")`: samples of all four tasks with varied, partly wrong completions."""
    return make_samples
