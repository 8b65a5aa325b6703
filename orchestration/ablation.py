"""The curriculum ablation (issue 10 item 4): the pure parts of `stgrl ablate`.

Two RL arms start from one SFT checkpoint with the same data, steps and seed(s) and differ only in
`reward.spatial_mode`:

- **curriculum** (`gated`, the default): spatio-temporal samples get `temporal_proximity` (Gaussian in
  the distance of each claimed time to the nearest key frame, σ annealed from `sigma0` to
  `sigma_min`) plus `spatial_gated` (box IoU against the nearest key frame's ground truth, only when
  the claimed time is within `gate_delta_s` of that key frame, else 0).
- **plain**: no proximity term; the spatial slot is the box IoU against the ground truth of the key
  frame nearest the *predicted* time, with no gate (the metric keeps the name `reward/spatial_gated`
  so both runs log the same keys).

Everything here is a function of metrics rows, eval results and predictions, so it is unit-tested on
hand-made inputs; `stgrl.orchestration.commands.ablate` runs the stages and calls it. The held-out
comparison scores *both* final models with the same (curriculum, final-σ) reward and with both
spatial definitions, so an arm cannot look better just because its own reward is easier.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import msgspec

from stgrl.orchestration.config import Config
from stgrl.reward_service.config import RewardConfig


class Arm(msgspec.Struct, frozen=True):
    """One side of the ablation: a name (used in directory names and tables) and its spatial mode."""

    name: str
    spatial_mode: Literal["gated", "plain"]
    label: str
    spatial_label: str
    """What this arm's `reward/spatial_gated` metric measures (the plot's legend)."""


ARMS: tuple[Arm, ...] = (
    Arm("curriculum", "gated", "(a) curriculum: proximity + gated IoU", "gated IoU"),
    Arm("plain", "plain", "(b) plain IoU at predicted time", "ungated IoU"),
)

TRAINED_SPATIAL_KEY = "reward/spatial_gated"
"""Per-step spatial reward each run was trained on (gated IoU in arm a, ungated IoU in arm b)."""

COMMON_KEYS: tuple[str, ...] = ("reward/answer_accuracy", "reward/format")
"""Per-step components defined identically in both arms (the RL loop logs only the components of
the reward it trains on, so no common *spatial* per-step metric exists; the held-out table has one)."""

# (key in an eval summary, table label); the order of the table rows.
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("vstar/m_viou", "V-STAR m_vIoU (mean over chains)"),
    ("vstar/mam", "V-STAR mAM"),
    ("vstar/mlgm", "V-STAR mLGM"),
    ("vstar/m_tiou", "V-STAR m_tIoU (mean over chains)"),
    ("vstar/acc", "V-STAR Acc"),
    ("spatial/gated", "spatial IoU, gated (curriculum definition)"),
    ("spatial/plain", "spatial IoU, ungated (plain definition)"),
    ("spatial/gated_any_name", "spatial IoU, gated, object name ignored"),
    ("spatial/plain_any_name", "spatial IoU, ungated, object name ignored"),
    ("eval/temporal_proximity", "temporal proximity at final σ"),
    ("eval/reward_total", "reward total (curriculum reward, final σ)"),
    ("eval/format", "format"),
    ("eval/samples", "held-out samples"),
)


def arm_config(cfg: Config, arm: Arm, seed: int) -> Config:
    """The config of one RL run: the base config with the arm's spatial mode and the seed."""
    return msgspec.structs.replace(
        cfg,
        run=msgspec.structs.replace(cfg.run, seed=seed),
        reward=msgspec.structs.replace(cfg.reward, spatial_mode=arm.spatial_mode),
    )


def eval_config(cfg: Config) -> Config:
    """Config the held-out evaluation of *every* model uses: the curriculum reward (gated), so the
    reward columns of the table are on one scale whichever arm trained the model."""
    return msgspec.structs.replace(cfg, reward=msgspec.structs.replace(cfg.reward, spatial_mode="gated"))


def arm_run_dir(root: Path, arm: Arm, seed: int) -> Path:
    return Path(root) / f"{arm.name}-seed{seed}"


# ------------------------------------------------------------------------------- per-step curves
class Curve(msgspec.Struct):
    """A per-step series across seeds: the mean and the min/max band at each step."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    n_seeds: int


def step_curve(rows_by_seed: dict[int, list[dict]], key: str) -> Curve:
    """Mean (and min/max) of `key` per step over the seeds' metrics rows; steps where no seed logged a
    finite value are left out (a NaN logged as null stays out rather than becoming 0)."""
    values: dict[int, list[float]] = {}
    for rows in rows_by_seed.values():
        for r in rows:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values.setdefault(int(r["step"]), []).append(float(v))
    steps = sorted(values)
    return Curve(steps=steps, mean=[sum(values[s]) / len(values[s]) for s in steps],
                 low=[min(values[s]) for s in steps], high=[max(values[s]) for s in steps],
                 n_seeds=len(rows_by_seed))


def curves(metrics: dict[str, dict[int, list[dict]]],
           keys: tuple[str, ...] = (TRAINED_SPATIAL_KEY, *COMMON_KEYS)) -> dict[str, dict[str, Curve]]:
    """`{arm: {key: Curve}}` from `{arm: {seed: metrics rows}}`; keys without data are omitted."""
    out: dict[str, dict[str, Curve]] = {}
    for arm, by_seed in metrics.items():
        out[arm] = {}
        for key in keys:
            c = step_curve(by_seed, key)
            if c.steps:
                out[arm][key] = c
    return out


# ------------------------------------------------------------------------------- held-out summary
SPATIAL_VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("gated", "gated", None),
    ("plain", "plain", None),
    ("gated_any_name", "gated", "any"),
    ("plain_any_name", "plain", "any"),
)
"""(summary key under `spatial/`, spatial_mode, object_match) of each held-out spatial rescoring: both
arms' definitions as trained (object_match None = the config's, `name` by default), and each with
the claimed object name ignored (`any`; V-STAR's vIoU ignores names too)."""


def rescore_spatial(prediction: dict, reward: RewardConfig) -> dict[str, float] | None:
    """Spatial reward of one held-out prediction under every SPATIAL_VARIANTS definition, computed by
    the real reward code; None for samples that are not spatio-temporal."""
    from stgrl.reward_service.rewards import score_components
    from stgrl.reward_service.types import KeyFrame, ScoringSample

    if prediction.get("task") != "spatio_temporal":
        return None
    rec = prediction["record"]
    sample = ScoringSample(
        id=str(prediction["id"]), task="spatio_temporal", completion=prediction["completion"],
        frame_size=list(prediction["frame_size"]), answer=rec.get("answer", ""),
        options=list(rec["options"]) if rec.get("options") else None,
        key_frames=[KeyFrame(int(k["idx"]), float(k["time"])) for k in rec.get("key_frames", [])],
        key_items=rec.get("key_items", {}), span=rec.get("span"),
    )
    out = {}
    for key, mode, match in SPATIAL_VARIANTS:
        variant = msgspec.structs.replace(reward, spatial_mode=mode, object_match=match or reward.object_match)
        out[key] = score_components(sample, 0, 1, variant)["spatial_gated"]
    return out


def eval_summary(metrics: dict[str, float], vstar_report: dict | None, predictions: list[dict],
                 reward: RewardConfig) -> dict[str, float]:
    """The numbers of one evaluated model that the ablation compares (see TABLE_ROWS), plus every
    flat metric `evaluate_model` returned (kept in ablation.json)."""
    out = dict(metrics)
    if vstar_report is not None:
        overall = vstar_report["overall"]
        chains = overall.get("chains") or []
        if chains:
            out["vstar/m_viou"] = sum(c["viou"] for c in chains) / len(chains)
            out["vstar/m_tiou"] = sum(c["tiou"] for c in chains) / len(chains)
            for i, c in enumerate(chains, 1):
                out[f"vstar/chain{i}/viou"] = c["viou"]
                out[f"vstar/chain{i}/tiou"] = c["tiou"]
                out[f"vstar/chain{i}/am"] = c["am"]
        for k in ("acc", "mam", "mlgm"):
            if k in overall:
                out[f"vstar/{k}"] = overall[k]
    scored = [s for s in (rescore_spatial(p, reward) for p in predictions) if s is not None]
    if scored:
        for key, _, _ in SPATIAL_VARIANTS:
            out[f"spatial/{key}"] = sum(s[key] for s in scored) / len(scored)
        out["spatial/n_samples"] = float(len(scored))
    return out


class Stat(msgspec.Struct):
    """Mean and sample standard deviation (0 for one seed) of a metric over seeds."""

    mean: float
    std: float
    n: int


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, Stat]:
    """Mean and std over seeds of every finite metric."""
    keys: list[str] = []
    for d in per_seed:
        keys += [k for k in d if k not in keys]
    out: dict[str, Stat] = {}
    for k in keys:
        vals = [float(d[k]) for d in per_seed
                if isinstance(d.get(k), (int, float)) and math.isfinite(float(d[k]))]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out[k] = Stat(mean=mean, std=std, n=len(vals))
    return out


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return "–"
    if stat.n > 1:
        return f"{stat.mean:.3f} ± {stat.std:.3f}"
    return f"{stat.mean:.3f}"


def build_table(arms: dict[str, dict[str, Stat]], start: dict[str, float] | None = None,
                labels: dict[str, str] | None = None) -> str:
    """Markdown table: one row per TABLE_ROWS metric, a column for the start (SFT) checkpoint when
    given, one column per arm (mean ± std over seeds when there are several), and the b − a
    difference of the means when there are exactly two arms."""
    labels = labels or {}
    cols = list(arms)
    header = ["held-out metric"] + (["SFT start"] if start is not None else []) + [labels.get(a, a) for a in cols]
    diff = len(cols) == 2
    if diff:
        header.append(f"{cols[1]} − {cols[0]}")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key, label in TABLE_ROWS:
        if start is None or key not in start:
            if not any(key in arms[a] for a in cols):
                continue
        row = [label]
        if start is not None:
            v = start.get(key)
            row.append(f"{v:.3f}" if isinstance(v, (int, float)) else "–")
        row += [_cell(arms[a].get(key)) for a in cols]
        if diff:
            a, b = arms[cols[0]].get(key), arms[cols[1]].get(key)
            row.append(f"{b.mean - a.mean:+.3f}" if a is not None and b is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- the plot
def plot_spatial_reward(arm_curves: dict[str, dict[str, Curve]], path: Path,
                        labels: dict[str, str] | None = None) -> Path:
    """Two panels: the per-step spatial reward each arm trained on, and the per-step components both
    arms define identically. A band shows min..max over seeds when there are several. `labels` names
    the arms in the legend (default: `<arm>: <what its spatial metric measures>` for known arms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = labels or {a.name: f"{a.name}: {a.spatial_label}" for a in ARMS}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=90)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for i, (arm, by_key) in enumerate(arm_curves.items()):
        color = colors[i % len(colors)]
        c = by_key.get(TRAINED_SPATIAL_KEY)
        if c is not None:
            ax1.plot(c.steps, c.mean, marker=".", color=color, label=labels.get(arm, arm))
            if c.n_seeds > 1:
                ax1.fill_between(c.steps, c.low, c.high, color=color, alpha=0.2)
        for key, style in zip(COMMON_KEYS, ("-", "--")):
            c = by_key.get(key)
            if c is None:
                continue
            ax2.plot(c.steps, c.mean, linestyle=style, marker=".", color=color, label=f"{arm}: {key.split('/')[-1]}")
            if c.n_seeds > 1:
                ax2.fill_between(c.steps, c.low, c.high, color=color, alpha=0.15)
    ax1.set_title("Spatial reward trained on (train batches, per step)", fontsize=10)
    ax2.set_title("Components common to both rewards (per step)", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.03, 1.03)  # every component is in [0, 1]: a flat zero is shown as such
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    ax1.set_ylabel("mean spatial reward")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
