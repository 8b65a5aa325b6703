"""The demo's verdict (≤ 12 lines, before/after with intervals, paired RL − SFT) and report.md opening
with it."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from stgrl.orchestration.verdict import MAX_LINES, demo_verdict, mean_interval, paired_difference


def _predictions(folder: Path, greedy: list[float], sampled: list[list[float]] | None = None) -> Path:
    folder.mkdir(parents=True)
    with (folder / "predictions.jsonl").open("w") as fh:
        for i, g in enumerate(greedy):
            row = {"id": f"s{i}", "reward_total": g}
            if sampled is not None:
                row["sampled_reward_totals"] = sampled[i]
            fh.write(json.dumps(row) + "\n")
    return folder


def test_mean_interval_is_the_normal_approximation():
    values = [1.0, 2.0, 3.0, 4.0, 6.0]
    iv = mean_interval(values)
    half = 1.959964 * statistics.stdev(values) / math.sqrt(5)
    assert iv.mean == pytest.approx(3.2) and iv.low == pytest.approx(3.2 - half) and iv.high == pytest.approx(3.2 + half)
    assert math.isnan(mean_interval([1.0]).low) and mean_interval([1.0]).text() == "1.000"


def test_paired_difference_is_tighter_than_the_separate_intervals():
    sft = {f"s{i}": (float(i), None) for i in range(20)}  # prompts differ a lot from one another
    rl = {k: (g + 0.1 + (0.01 if int(k[1:]) % 2 else -0.01), None) for k, (g, _) in sft.items()}
    d = paired_difference(sft, rl, 0)
    assert d.mean == pytest.approx(0.1) and d.low > 0.09 and d.high < 0.11
    separate = mean_interval([g for g, _ in rl.values()])
    assert separate.high - separate.low > 10 * (d.high - d.low)


def test_demo_verdict_lines(tmp_path):
    dirs = {"untrained": _predictions(tmp_path / "u", [0.0, 0.1, 0.2, 0.1]),
            "after SFT": _predictions(tmp_path / "s", [1.0, 1.2, 1.4, 1.2], [[1.0, 0.9], [1.1, 1.1], [1.3, 1.5], [1.2, 1.0]]),
            "after RL": _predictions(tmp_path / "r", [1.1, 1.3, 1.5, 1.3], [[1.2, 1.1], [1.3, 1.3], [1.5, 1.6], [1.4, 1.2]])}
    lines = demo_verdict(dirs, {"total": 600.0, "model and data": 0.5, "SFT and RL": 300.0}, ["SFT 3 steps", "evaluation of 4 samples"],
                         tmp_path / "report.md", temperature=0.7)
    assert len(lines) <= MAX_LINES
    assert lines[0] == "stgrl demo finished in 10.0 min (SFT and RL 5.0 min)"
    assert lines[1:3] == ["  ran: SFT 3 steps", "  ran: evaluation of 4 samples"]
    assert lines[3].startswith("  held-out reward, greedy (mean [95% CI], 4 prompts): untrained 0.100 [")
    assert "-> after SFT 1.200 [" in lines[3] and "-> after RL 1.300 [" in lines[3]
    assert lines[4].startswith("  held-out reward, sampled at T 0.7: after SFT 1.137 [")
    # paired: every prompt gained exactly 0.1 greedy, so the interval is the point
    assert lines[5].startswith("  RL - SFT on the same prompts: greedy +0.100 [+0.100, +0.100], sampled +0.187 [+0.163, +0.212]: RL helped")
    assert lines[-1] == f"  report: {tmp_path / 'report.md'} (logs: {tmp_path / 'logs'})"


def test_report_opens_with_the_verdict_then_the_full_table(tmp_path):
    from stgrl.orchestration.metrics import MetricsSink
    from stgrl.orchestration.report import write_report

    sink = MetricsSink(tmp_path, wandb_enabled=False, wandb_mode="disabled", wandb_project="x",
                       wandb_run_name=None, prometheus=False)
    for step in range(3):
        sink.log(step, {"train/reward_mean": 1.0 + step})
    sink.close()
    verdict = ["stgrl demo finished in 1.0 min", "  report: here"]
    text = write_report(tmp_path, {"after RL": {"eval/reward_total": 1.5}}, verdict=verdict).read_text()
    assert text.index("## Verdict") < text.index("stgrl demo finished in 1.0 min") < text.index("![reward](plots/reward.png)")
    assert text.index("![reward](plots/reward.png)") < text.index("## Held-out evaluation (full table)")
    assert text.index("## Held-out evaluation (full table)") < text.index("| eval/reward_total | 1.500 |")


def test_gain_words_say_whether_the_gain_beats_the_noise():
    from stgrl.orchestration.verdict import Interval, gain_words

    up, flat, down = Interval(0.06, 0.02, 0.10), Interval(0.03, -0.02, 0.08), Interval(-0.05, -0.09, -0.01)
    assert gain_words({"greedy": flat, "sampled": up}) == "RL helped (sampled interval above 0)"
    assert gain_words({"greedy": flat, "sampled": flat}) == "no change beyond the noise (every interval includes 0)"
    assert gain_words({"greedy": down}) == "RL hurt (greedy interval below 0)"
    assert gain_words({"greedy": down, "sampled": up}) == "mixed (better sampled, worse greedy)"
