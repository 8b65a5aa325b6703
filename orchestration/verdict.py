"""The short verdict at the end of `stgrl demo` (and at the top of its report.md): what ran, how
long it took, the held-out reward before and after with 95 % intervals, where the report is.

At most 12 lines: a person reads it in one glance; the full table stays in report.md. Intervals are
normal-approximation 95 % intervals of a mean over held-out prompts (n = 200 on the demo, so the
approximation is fine); the RL − SFT difference is paired over the same prompts, and with the
seeded sampled draws over the same random numbers, which is what makes it tighter than the two
separate intervals suggest. Pure functions, apart from reading the predictions files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

MAX_LINES = 12
Z95 = 1.959964


class Interval(NamedTuple):
    """A mean and its 95 % interval; low/high are NaN with fewer than 2 values."""

    mean: float
    low: float
    high: float

    def text(self, signed: bool = False) -> str:
        mean, low, high = self
        fmt = "{:+.3f}" if signed else "{:.3f}"
        if not math.isfinite(low):
            return fmt.format(mean)
        return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def mean_interval(values: list[float]) -> Interval:
    """Mean and its 95 % normal-approximation interval."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half)


def per_prompt_rewards(predictions: Path) -> dict[str, tuple[float, float | None]]:
    """id -> (greedy reward, mean of the sampled draws or None) from an evaluation's predictions.jsonl."""
    out: dict[str, tuple[float, float | None]] = {}
    if not predictions.is_file():
        return out
    for line in predictions.read_text().splitlines():
        try:
            p = json.loads(line)
        except json.JSONDecodeError:
            continue
        draws = p.get("sampled_reward_totals") or []
        out[str(p["id"])] = (float(p["reward_total"]), sum(draws) / len(draws) if draws else None)
    return out


def reward_intervals(per_prompt: dict[str, tuple[float, float | None]]) -> tuple[Interval, Interval | None]:
    """(greedy, sampled or None) intervals of one evaluation."""
    greedy = mean_interval([g for g, _ in per_prompt.values()])
    sampled = [s for _, s in per_prompt.values() if s is not None]
    return greedy, (mean_interval(sampled) if sampled else None)


def paired_difference(before: dict[str, tuple[float, float | None]], after: dict[str, tuple[float, float | None]],
                      which: int) -> Interval | None:
    """after − before over the prompts both scored (`which`: 0 greedy, 1 sampled)."""
    diffs = [after[k][which] - before[k][which] for k in before.keys() & after.keys()
             if before[k][which] is not None and after[k][which] is not None]
    return mean_interval(diffs) if diffs else None


def gain_words(diffs: dict[str, Interval]) -> str:
    """The RL − SFT verdict in words: beyond the noise when an interval lies wholly above (below) 0."""
    above = [n for n, d in diffs.items() if d.low > 0]
    below = [n for n, d in diffs.items() if d.high < 0]
    if above and not below:
        return f"RL helped ({' and '.join(above)} interval above 0)"
    if below and not above:
        return f"RL hurt ({' and '.join(below)} interval below 0)"
    if above and below:
        return f"mixed (better {', '.join(above)}, worse {', '.join(below)})"
    return "no change beyond the noise (every interval includes 0)"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def demo_verdict(eval_dirs: dict[str, Path], timings: dict[str, float], what_ran: list[str], report: Path,
                 temperature: float | None = None) -> list[str]:
    """The verdict lines. `eval_dirs`: phase -> evaluation output folder (with predictions.jsonl), in
    order (untrained, after SFT, after RL); `timings`: step -> seconds, "total" first."""
    total = timings.get("total", 0.0)
    # steps that took no time (a model and data reused from an earlier run) are not worth a word
    parts = ", ".join(f"{k} {_minutes(v)}" for k, v in timings.items() if k != "total" and v >= 3.0)
    lines = [f"stgrl demo finished in {_minutes(total)}" + (f" ({parts})" if parts else "")]
    lines += [f"  ran: {item}" for item in what_ran]
    scores = {phase: per_prompt_rewards(d / "predictions.jsonl") for phase, d in eval_dirs.items()}
    scores = {k: v for k, v in scores.items() if v}
    if scores:
        n = max(len(v) for v in scores.values())
        greedy = [f"{phase} {reward_intervals(v)[0].text()}" for phase, v in scores.items()]
        lines.append(f"  held-out reward, greedy (mean [95% CI], {n} prompts): " + " -> ".join(greedy))
        sampled = [(phase, reward_intervals(v)[1]) for phase, v in scores.items()]
        sampled = [f"{phase} {iv.text()}" for phase, iv in sampled if iv is not None]
        if sampled:
            at = f" at T {temperature:g}" if temperature else ""
            lines.append(f"  held-out reward, sampled{at}: " + " -> ".join(sampled))
        if "after SFT" in scores and "after RL" in scores:
            diffs = [(name, paired_difference(scores["after SFT"], scores["after RL"], i))
                     for i, name in enumerate(("greedy", "sampled"))]
            diffs = [(name, d) for name, d in diffs if d is not None]
            lines.append("  RL - SFT on the same prompts: " + ", ".join(f"{n} {d.text(signed=True)}" for n, d in diffs)
                         + f": {gain_words(dict(diffs))}")
    lines.append(f"  report: {report} (logs: {report.parent / 'logs'})")
    return lines[:MAX_LINES]
