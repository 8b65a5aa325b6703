"""End-of-run report: ``report.md`` plus PNG plots made from ``metrics.jsonl`` and the eval results.

The report opens with the run's verdict (the same lines the demo prints last) and the key plots,
then the full held-out table, then every plot.

Plots: reward total and each component over steps, the proximity σ curriculum, throughput, idle
ratios, weight-version lag, and the engine-vs-learner log-prob gap (the check that rollout and
learner see the same pixels and weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stgrl.orchestration.metric_names import REWARD_COMPONENTS
from stgrl.orchestration.metrics import read_metrics

log = logging.getLogger(__name__)

PLOTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reward.png", "Reward over steps (train batches)", ("train/reward_mean",)
     + tuple(f"reward/{c}" for c in REWARD_COMPONENTS)),
    ("sigma.png", "Adaptive proximity curriculum σ", ("reward/sigma",)),
    ("throughput.png", "Throughput", ("rollout/tokens_per_s", "learner/tokens_per_s")),
    ("idle.png", "Idle ratio per pool", ("pipeline/idle_ratio/rollout", "pipeline/idle_ratio/learner")),
    ("version_lag.png", "Weight version lag (steps)", ("weights/version_lag",)),
    ("logprob_gap.png", "Engine vs learner log-prob gap (mean |Δ|)", ("learner/logprob_gap",)),
    ("learner.png", "Learner: clip fraction and IS weight", ("learner/clip_fraction", "learner/is_weight")),
)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def trailing_mean(ys: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start). Why: a step's train reward
    averages only prompts_per_step x group_size samples, so on small runs the trend is invisible in
    the raw curve."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


SMOOTH_MIN_POINTS = 20
"""Series at least this long get a trailing mean over a tenth of their length (>= 5 steps) on top."""


def make_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per entry of PLOTS that has data; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, title, keys in PLOTS:
        series = {k: _series(rows, k) for k in keys}
        series = {k: v for k, v in series.items() if v[0]}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
        for k, (xs, ys) in series.items():
            if len(xs) < SMOOTH_MIN_POINTS:
                ax.plot(xs, ys, marker=".", label=k)
                continue
            window = max(5, len(xs) // 10)
            (raw,) = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
            ax.plot(xs, trailing_mean(ys, window), color=raw.get_color(), label=f"{k} (mean of last {window})")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def eval_table(evals: dict[str, dict]) -> str:
    """Markdown table of held-out results per phase (before SFT, after SFT, after RL)."""
    if not evals:
        return "_no evaluation results_\n"
    keys: list[str] = []
    for res in evals.values():
        for k in res:
            if k not in keys and isinstance(res[k], (int, float)):
                keys.append(k)
    lines = ["| metric | " + " | ".join(evals) + " |", "|---|" + "---|" * len(evals)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(evals[p].get(k, "")) for p in evals) + " |")
    return "\n".join(lines) + "\n"


KEY_PLOTS = ("reward.png",)
"""Shown right under the verdict: is the train reward going up."""


def write_report(run_dir: Path, evals: dict[str, dict] | None = None, extra_sections: dict[str, str] | None = None,
                 verdict: list[str] | None = None) -> Path:
    """Write ``report.md`` (+ plots in ``plots/``) for a run directory; returns the report path.
    `verdict`: lines shown first (`stgrl.orchestration.verdict`), with the key plots under them."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    plots = make_plots(rows, run_dir / "plots")
    evals = evals or {}
    (run_dir / "eval_summary.json").write_text(json.dumps(evals, indent=2))
    parts = [f"# stgrl run report: {run_dir.name}\n"]
    if verdict:
        parts.append("## Verdict\n")
        parts.append("```\n" + "\n".join(verdict) + "\n```\n")
        parts += [f"![{p.stem}](plots/{p.name})\n" for p in plots if p.name in KEY_PLOTS]
    if rows:
        last = rows[-1]
        parts.append(f"RL steps: {len(rows)}; final train reward mean: {_fmt(last.get('train/reward_mean'))}\n")
    parts.append("## Held-out evaluation (full table)\n" if verdict else "## Held-out evaluation\n")
    parts.append("Rewards are scored at the *final* curriculum σ for every phase, so the curriculum cannot fake a rise.\n")
    parts.append(eval_table(evals))
    for title, body in (extra_sections or {}).items():
        parts.append(f"## {title}\n\n{body}\n")
    if plots:
        parts.append("## Plots\n")
        for p in plots:
            parts.append(f"![{p.stem}](plots/{p.name})\n")
    report = run_dir / "report.md"
    report.write_text("\n".join(parts))
    log.info("report written to %s", report)
    return report
