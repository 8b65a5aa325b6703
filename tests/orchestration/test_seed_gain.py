"""scripts/grounding_seeds.py's verdict for issue 9 (RL's gain over SFT against the seed noise), on
hand-made per-seed metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "grounding_seeds.py"
spec = importlib.util.spec_from_file_location("grounding_seeds", SCRIPT)
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)

KEY = "eval_sampled/reward_total"


def _runs(pairs):
    return {i: {"after_SFT": {KEY: a}, "after_RL": {KEY: b}} for i, (a, b) in enumerate(pairs)}


def test_gain_beats_noise_by_hand():
    # SFT 1.0, 1.1, 1.2 (sample std 0.1); gains 0.2, 0.15, 0.25 (mean 0.2 > 0.1, all positive)
    g = seeds.rl_gain(_runs([(1.0, 1.2), (1.1, 1.25), (1.2, 1.45)]), KEY)
    assert g["mean_gain"] == pytest.approx(0.2) and g["sft_seed_std"] == pytest.approx(0.1)
    assert g["min_gain"] == pytest.approx(0.15) and g["beats_noise"] == 1.0


def test_one_seed_going_down_or_a_small_mean_does_not_beat_noise():
    down = seeds.rl_gain(_runs([(1.0, 1.5), (1.1, 1.6), (1.2, 1.19)]), KEY)
    assert down["mean_gain"] > down["sft_seed_std"] and down["beats_noise"] == 0.0
    small = seeds.rl_gain(_runs([(1.0, 1.05), (1.1, 1.15), (1.2, 1.25)]), KEY)
    assert small["min_gain"] > 0 and small["beats_noise"] == 0.0


def test_needs_two_seeds_and_the_table_skips_missing_scores():
    assert seeds.rl_gain(_runs([(1.0, 1.2)]), KEY) is None
    table = seeds.gain_table(_runs([(1.0, 1.2), (1.1, 1.25), (1.2, 1.45)]))
    assert "sampled reward total" in table and "greedy reward total" not in table
    assert "+0.200, +0.150, +0.250" in table and "| yes |" in table
