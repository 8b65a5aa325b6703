"""Issues 13 and 9's measurement: the demo (SFT + RL on the embedded default) over several training
seeds, then grounding and reward after SFT and after RL with seed-to-seed spread, as a table and a
plot, and the verdict of issue 9: is RL's gain over SFT larger than the seed-to-seed noise?

    .venv/bin/python scripts/grounding_seeds.py --seeds 0 1 2 --out runs/grounding
    .venv/bin/python scripts/grounding_seeds.py --summarize runs/grounding   # tables + plot only

Each seed is one `stgrl demo --run-dir OUT/sN run.seed=N --eval-samples E` (the model and the data
are the same for every seed: the seed changes the SFT data order, rollout sampling and RL). Writes
OUT/grounding.md (markdown table, mean ± sample std over seeds) and OUT/grounding.png.

The gain verdict, per reward score (greedy, and sampled at the rollout temperature when the runs
have it): each seed's RL − SFT, their mean, and the seed noise = the sample std over seeds of the
after-SFT score. RL "beats the noise" when every seed gained and the mean gain exceeds that std.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("grounding_seeds")

STAGES = ("untrained", "after_SFT", "after_RL")
ROWS = (
    ("eval/reward_total", "reward total (final σ)"),
    ("eval/spatial_gated", "spatial_gated reward"),
    ("eval/answer_viou", "answer box IoU (spatial task)"),
    ("grounding/model/iou", "claim box IoU: model"),
    ("grounding/mean_box/iou", "claim box IoU: always-mean-box baseline"),
    ("grounding/random_box/iou", "claim box IoU: random-box baseline"),
    ("grounding/model/center_error", "claim centre error (normalized): model"),
    ("grounding/mean_box/center_error", "claim centre error: mean-box baseline"),
    ("grounding/time_error", "claim time error (s)"),
    ("swap/mean_diff", "swapped-video loss − own-video loss"),
    ("swap/ci_low", "  its 95% CI lower end"),
    ("eval/answer_accuracy", "answer accuracy"),
    ("vstar/mam", "V-STAR mAM"),
    ("eval_sampled/reward_total", "reward total, sampled at the rollout T (mean of k draws)"),
    ("eval_sampled/format", "format, sampled"),
)
GAIN_KEYS = (("eval/reward_total", "greedy reward total"), ("eval_sampled/reward_total", "sampled reward total"))


def rl_gain(runs: dict[int, dict[str, dict[str, float]]], key: str) -> dict[str, Any] | None:
    """RL − SFT of `key` per seed (`per_seed`, in seed order), against the seed noise (std over seeds
    of the after-SFT value).

    Returns None unless at least 2 seeds have the key after SFT and after RL."""
    pairs = [(runs[s]["after_SFT"][key], runs[s]["after_RL"][key]) for s in sorted(runs)
             if key in runs[s].get("after_SFT", {}) and key in runs[s].get("after_RL", {})]
    if len(pairs) < 2:
        return None
    gains = [b - a for a, b in pairs]
    noise = statistics.stdev([a for a, _ in pairs])
    mean = statistics.mean(gains)
    return {"seeds": float(len(pairs)), "per_seed": gains, "mean_gain": mean, "gain_std": statistics.stdev(gains),
            "min_gain": min(gains), "sft_seed_std": noise,
            "beats_noise": float(min(gains) > 0 and mean > noise)}


def gain_table(runs: dict[int, dict[str, dict[str, float]]]) -> str:
    lines = ["| score | RL − SFT per seed | mean gain | SFT seed std | beats the noise |", "|---|---|---|---|---|"]
    for key, label in GAIN_KEYS:
        g = rl_gain(runs, key)
        if g is None:
            continue
        per_seed = ", ".join(f"{x:+.3f}" for x in g["per_seed"])
        lines.append(f"| {label} | {per_seed} | {g['mean_gain']:+.3f} | {g['sft_seed_std']:.3f} | "
                     f"{'yes' if g['beats_noise'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run_seed(seed: int, out: Path, eval_samples: int, config: str, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "stgrl", "demo", "--config", config, "--run-dir", str(out / f"s{seed}"),
           "--eval-samples", str(eval_samples), f"run.seed={seed}", *extra]
    log.info("seed %d: %s", seed, " ".join(cmd))
    subprocess.run(cmd, check=True, env=os.environ.copy())


def load(out: Path) -> dict[int, dict[str, dict[str, float]]]:
    runs: dict[int, dict[str, dict[str, float]]] = {}
    for d in sorted(out.glob("s*")):
        if d.is_dir() and d.name[1:].isdigit():
            runs[int(d.name[1:])] = {s: json.loads((d / "eval" / s / "metrics.json").read_text())
                                     for s in STAGES if (d / "eval" / s / "metrics.json").is_file()}
    return runs


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: dict[int, dict[str, dict[str, float]]]) -> str:
    seeds = sorted(runs)
    lines = [f"seeds {seeds}; mean ± sample std over seeds", "",
             "| held-out | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for key, label in ROWS:
        cells = [spread([runs[s][st][key] for s in seeds if st in runs[s] and key in runs[s][st]]) for st in STAGES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "per seed (after SFT → after RL):", "",
              "| seed | spatial_gated | answer box IoU | claim box IoU | swap diff | reward total |", "|---|---|---|---|---|---|"]
    for s in seeds:
        r = runs[s]

        def pair(key: str, r=r) -> str:
            a, b = r.get("after_SFT", {}).get(key), r.get("after_RL", {}).get(key)
            return f"{a:.3f} → {b:.3f}" if a is not None and b is not None else "–"

        lines.append(f"| {s} | {pair('eval/spatial_gated')} | {pair('eval/answer_viou')} | "
                     f"{pair('grounding/model/iou')} | {pair('swap/mean_diff')} | {pair('eval/reward_total')} |")
    lines += ["", "RL's gain over SFT against the seed-to-seed noise (every seed gained and the mean gain exceeds "
              "the after-SFT std over seeds):", "", gain_table(runs)]
    return "\n".join(lines) + "\n"


def plot(runs: dict[int, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(runs)
    panels = (("answer box IoU (spatial task)", [("model", "eval/answer_viou")]),
              ("claim box IoU vs baselines", [("model", "grounding/model/iou"), ("mean box", "grounding/mean_box/iou"),
                                              ("random box", "grounding/random_box/iou")]),
              ("swapped − own video loss", [("model", "swap/mean_diff")]),
              ("reward total (final σ)", [("model", "eval/reward_total")]))
    gains = [(label, key, rl_gain(runs, key)) for key, label in GAIN_KEYS]
    gains = [(label, key, g) for label, key, g in gains if g is not None]
    fig, axes = plt.subplots(1, len(panels) + bool(gains), figsize=(4.2 * (len(panels) + bool(gains)), 3.4))
    if gains:
        _plot_gains(axes[-1], gains)
    for ax, (title, series) in zip(axes, panels):
        width = 0.8 / len(series)
        for j, (name, key) in enumerate(series):
            xs, means, errs = [], [], []
            for i, st in enumerate(STAGES):
                vals = [runs[s][st][key] for s in seeds if st in runs[s] and key in runs[s][st]]
                if vals:
                    xs.append(i + (j - (len(series) - 1) / 2) * width)
                    means.append(statistics.mean(vals))
                    errs.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=name)
            for i, st in enumerate(STAGES):
                for s in seeds:
                    if st in runs[s] and key in runs[s][st]:
                        ax.plot(i + (j - (len(series) - 1) / 2) * width, runs[s][st][key], "k.", ms=4)
        ax.set_xticks(range(len(STAGES)), STAGES)
        ax.set_title(title, fontsize=10)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"held-out grounding on easy, {len(seeds)} seeds (bars: mean ± std, dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_gains(ax, gains: list) -> None:
    """Issue 9's picture: each seed's RL − SFT per score next to the band of ± the after-SFT seed std."""
    for i, (_label, _key, g) in enumerate(gains):
        ax.bar(i, g["mean_gain"], 0.6, color="tab:green" if g["beats_noise"] else "tab:gray")
        ax.plot([i] * len(g["per_seed"]), g["per_seed"], "k.", ms=5)
        ax.fill_between([i - 0.4, i + 0.4], -g["sft_seed_std"], g["sft_seed_std"], color="tab:red", alpha=0.15,
                        label="± SFT seed std" if i == 0 else None)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(gains)), [label.replace(" reward total", "") for label, _, _ in gains])
    ax.set_title("RL − SFT reward (bar: mean, dots: seeds)", fontsize=10)
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/grounding", help="one run directory per seed goes here")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--summarize", metavar="OUT", help="only build the table and plot from OUT")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides for every seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.summarize or args.out)
    if not args.summarize:
        out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            run_seed(seed, out, args.eval_samples, args.config, args.overrides)
    runs = load(out)
    if not runs:
        log.error("no seed run directories (s0, s1, …) with eval metrics under %s", out)
        return 1
    (out / "grounding.md").write_text(table(runs))
    plot(runs, out / "grounding.png")
    log.info("wrote %s and %s", out / "grounding.md", out / "grounding.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
