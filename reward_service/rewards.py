"""Per-sample routing and the weighted total (docs/design.md §3): the pure core the service and CLI wrap.

**[fix]** Every sample is routed by its *own* task; the reference routes a whole batch by the task
of its first sample. The completion is parsed once and every component reads that parse.

Components per task:

| task | components |
|---|---|
| spatio_temporal | format, answer_accuracy, temporal_proximity, spatial_gated |
| temporal | format, answer_tiou, think_temporal_segment (+ answer_accuracy with options) |
| spatial | format, answer_viou |
| general | format, answer_accuracy |

With `spatial_mode="plain"` (ablation baseline) spatio_temporal drops `temporal_proximity`, and the
`spatial_gated` slot holds the ungated IoU at the nearest key frame (the name stays so metric names
and dashboards stay comparable across the ablation's runs).

Two paths give the same floats: `score_components_reference` chains the per-component functions of
`components.py` (the definition), and `score_batch`/`score_sample`/`score_components` run the
task-specialised `fast.py`, which prepares each group's ground truth once (the tests hold them equal).
"""

from __future__ import annotations

import logging

from stgrl.reward_service import components as C
from stgrl.reward_service import fast, parser, text
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.parser import parse_completion
from stgrl.reward_service.types import TASKS, Score, ScoringSample

log = logging.getLogger(__name__)


def components_for(task: str, has_options: bool, spatial_mode: str = "gated") -> tuple[str, ...]:
    """Names of the components that apply to a sample of `task` (see the module table)."""
    if task == "spatio_temporal":
        if spatial_mode == "plain":
            return ("format", "answer_accuracy", "spatial_gated")
        return ("format", "answer_accuracy", "temporal_proximity", "spatial_gated")
    if task == "temporal":
        if has_options:
            return ("format", "answer_accuracy", "answer_tiou", "think_temporal_segment")
        return ("format", "answer_tiou", "think_temporal_segment")
    if task == "spatial":
        return ("format", "answer_viou")
    if task == "general":
        return ("format", "answer_accuracy")
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def score_components(sample: ScoringSample, step: int, total_steps: int, cfg: RewardConfig) -> dict[str, float]:
    """Every applicable component of one sample (raises ValueError only for an unknown task)."""
    return fast.components(sample, fast.Truth(sample), fast.Run(step, total_steps, cfg))


def score_components_reference(sample: ScoringSample, step: int, total_steps: int,
                               cfg: RewardConfig) -> dict[str, float]:
    """`score_components` along the definition: one call per component of `components.py`, each
    reading the raw ground truth (the reference twin of `fast.py`)."""
    names = components_for(sample.task, bool(sample.options), cfg.spatial_mode)
    parsed = parse_completion(sample.completion)
    out: dict[str, float] = {}
    span = C.truth_span(sample.span, sample.answer) if sample.task == "temporal" else None
    for name in names:
        if name == "format":
            v = C.format_reward(parsed, claims_required=sample.task == "spatio_temporal")
        elif name == "answer_accuracy":
            v = C.answer_accuracy(parsed, sample.answer, sample.options)
        elif name == "answer_tiou":
            v = C.answer_tiou(parsed, span)
        elif name == "answer_viou":
            v = C.answer_viou(parsed, C.all_gt_boxes(sample.key_items), sample.frame_size)
        elif name == "think_temporal_segment":
            v = C.think_temporal_segment(parsed, span)
        elif name == "temporal_proximity":
            sigma = C.curriculum_sigma(step, total_steps, cfg.sigma0, cfg.sigma_min)
            v = C.temporal_proximity(parsed, sample.key_frames, sigma, cfg.proximity_scope)
        else:  # spatial_gated
            gate = None if cfg.spatial_mode == "plain" else cfg.gate_delta_s
            v = C.spatial_reward(parsed, sample.key_frames, sample.key_items, sample.frame_size,
                                 gate, cfg.object_match)
        out[name] = v
    return out


def weighted_total(components: dict[str, float], cfg: RewardConfig) -> float:
    """`sum_c w_c * r_c` over the given components."""
    return sum(getattr(cfg.weights, name) * v for name, v in components.items())


def score_sample(sample: ScoringSample, step: int, total_steps: int, cfg: RewardConfig) -> Score:
    """The reward of one sample. Pure and deterministic: the same request always gets the same Score.

    Never raises: an invalid sample (unknown task, or a defect here) yields `total=0` and `error` set,
    so one bad sample cannot take down a batch or a shard.
    """
    return score_batch([sample], step, total_steps, cfg)[0]


def score_batch(samples: list[ScoringSample], step: int, total_steps: int, cfg: RewardConfig) -> list[Score]:
    """`score_sample` over a batch, in order; each sample routed by its own task. Consecutive samples
    with the same ground truth (a group) share its preparation (`fast.Truth`)."""
    run = fast.Run(step, total_steps, cfg)
    out: list[Score] = []
    truth: fast.Truth | None = None
    by_task, new_truth, form, blocks = fast.BY_TASK, fast.Truth, parser.FORM.fullmatch, parser.blocks
    scorer = None
    for sample in samples:
        try:
            if truth is None or not truth.same(sample):
                truth = None
                truth = new_truth(sample)
                scorer = by_task[truth.task]
            text = sample.completion
            m = form(text)  # `parser.blocks`, its common case inlined
            if m is not None:
                _, think, answer = m.regs
                comps, total = scorer(text, think, answer, True, truth, run)  # type: ignore[misc]
            else:
                comps, total = scorer(text, *blocks(text), truth, run)  # type: ignore[misc]
        except ValueError as e:
            out.append(Score(id=sample.id, total=0.0, components={}, error=str(e)))
            continue
        except Exception as e:  # a defect in a component must not kill the shard; it is logged loudly
            log.exception("reward of sample %s failed", sample.id)
            out.append(Score(id=sample.id, total=0.0, components={}, error=f"{type(e).__name__}: {e}"))
            continue
        out.append(Score(id=sample.id, total=total, components=comps))
    return out


def reset_caches() -> None:
    """Forget every memo of the reward path (numbers, tokens, stems, ROUGE references, object
    names), so a benchmark pass starts cold. Ground truth prepared per group lives only for one
    `score_batch` call and needs no reset."""
    parser.reset_caches()
    text.reset_caches()
