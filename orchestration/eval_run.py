"""`stgrl eval run`: generate held-out answers with the rollout engine (greedy) and score them.

Scores, all written to `<out>/metrics.json` (predictions to `<out>/predictions.jsonl`):
- the reward components and total, at the *final* curriculum σ (step = total_steps - 1), so a
  before/after comparison cannot be faked by the curriculum loosening;
- optionally (`sampled=k`) the same at the training temperature: the mean over k seeded samples per
  prompt (`eval_sampled/...`). This is the quantity RL maximises, E_{y~pi}[r]; greedy decoding only
  sees the policy's mode, so a policy that got better on average can score the same greedily (docs/design.md §11);
- V-STAR metrics for the spatio-temporal items, on the V-STAR protocol's two chains: besides the
  held-out answer (the "what"), each item gets one prompt per chain asking its questions in the
  chain's order (chain 1 what → when → where, chain 2 what → where → when). A chain's "when" is the
  span its answer states (`<t>S</t>s to <t>E</t>s`, else two numbers in its text), its "where" the
  boxes it claims by time; both chains reuse the greedy generation path, so it stays CPU-sized;
- grounding diagnostics (issue 13): claim box IoU and centre error vs the mean-box and random-box
  baselines, claim time error vs the always-middle baseline;
- the swapped-video test: target-token loss of each sample's reference answer with its own video vs
  another sample's video (a model that uses the pixels does worse with the wrong video).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config

log = logging.getLogger(__name__)


def _scoring_sample(record: Any, completion: str, frame_size: tuple[int, int]):
    from stgrl.reward_service.types import KeyFrame, ScoringSample

    return ScoringSample(
        id=record.id, task=record.task, completion=completion, frame_size=list(frame_size),
        answer=record.answer, options=list(record.options) if record.options else None,
        key_frames=[KeyFrame(k.idx, k.time) for k in record.key_frames], key_items=record.key_items,
        span=list(record.span) if record.span else None,
    )


WHEN_FORM = "answer as <t>S</t>s to <t>E</t>s"
WHERE_FORM = "answer as <obj>name</obj><box>[x1,y1,x2,y2]</box>at<t>T</t>s for each frame"


CHAIN_FORMS = ((WHEN_FORM, WHERE_FORM), (WHERE_FORM, WHEN_FORM))
"""The answer forms of the questions after the "what": chain 1 asks when then where, chain 2 the reverse."""


def chain_prompt_question(chain: tuple[str, ...], index: int) -> str:
    """Chain `index`'s (0 or 1) questions in its order as one prompt's question: the "what" first, then
    the "when" and "where" questions in the chain's order, each with the answer form it asks for."""
    what, *rest = chain
    return "\n".join([what] + [f"{q} ({form})" for q, form in zip(rest, CHAIN_FORMS[index])])


def chain_answers(completion: str) -> dict[str, Any]:
    """The "when" and "where" answers of one chain's completion: the span its answer states (the
    first two `<t>` of the answer, else a `[S, E]` in it), or `[]` with the answer text in
    `answer_temporal_pre` for the evaluator's text reading; the boxes of every claim (think and
    answer) keyed by the claim's time."""
    from stgrl.reward_service.parser import claim_boxes, parse_claims, parse_completion, predicted_span

    parsed = parse_completion(completion)
    span = predicted_span(parsed)
    temporal = [span[0], span[1]] if span is not None and all(math.isfinite(v) for v in span) else []
    spatial: dict[str, list[list[float]]] = {}
    for claim in parse_claims(completion, 0, len(completion)):
        t = claim[2]
        if t is None or not math.isfinite(t):
            continue
        boxes = [list(b) for b in claim_boxes(claim) if b is not None]
        if boxes:
            spatial.setdefault(f"{t:.1f}", []).extend(boxes)
    return {"answer_temporal": temporal, "answer_temporal_pre": parsed.answer or "", "answer_spatial": spatial}


def vstar_prediction(sample_id: str, completion: str, frame_size: tuple[int, int],
                     chains: tuple[str, str] | None = None) -> dict:
    """V-STAR answers of one item: `answer_vqa` from `completion` (the answer to the "what"), each
    chain's span and boxes from its own completion (`chains`; without them both chains read
    `completion`, the one-prompt fallback). Boxes are in `frame_size` pixels (the evaluator rescales)."""
    from stgrl.reward_service.parser import parse_completion

    c1, c2 = chains if chains is not None else (completion, completion)
    one, two = chain_answers(c1), chain_answers(c2)
    return {"id": sample_id, "answer_vqa": parse_completion(completion).answer or "",
            "answer_temporal": one["answer_temporal"], "answer_temporal_pre": one["answer_temporal_pre"],
            "answer_spatial": one["answer_spatial"],
            "answer_temporal_2": two["answer_temporal"], "answer_temporal_pre_2": two["answer_temporal_pre"],
            "answer_spatial_2": two["answer_spatial"], "frame_size": list(frame_size)}


def _target_loss(model, processor, prepared: Any, target: str) -> float:
    import torch

    from stgrl.rollout.video import sft_tensors

    batch = sft_tensors(prepared, processor, target)
    with torch.no_grad():
        out = model(**batch)
    return float(out.loss)


def evaluate_model(cfg: Config, model_path: str | Path, records: list[Any], dataset_dir: Path, out_dir: Path,
                   max_samples: int = 64, swapped: bool = True, max_new_tokens: int | None = None,
                   vstar_annotations: Path | None = None, sampled: int = 0,
                   progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Greedy generation + scoring on up to `max_samples` held-out records; returns flat metrics.

    `sampled > 0` also draws that many completions per prompt at `cfg.rollout.temperature`/`top_p`,
    seeded per record from `cfg.run.seed`, so two checkpoints are compared on the same random draws
    (common random numbers: the before/after difference then carries less sampling noise).
    `progress(i, metrics)` is called after each sample (the progress display)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stgrl.orchestration.evaluation.grounding import (
        GroundTruth,
        claims_from_text,
        diagnose,
        swapped_video_test,
    )
    from stgrl.reward_service.rewards import score_sample
    from stgrl.rollout.engine import EnginePrompt, SamplingSpec
    from stgrl.rollout.hf_engine import HFEngine
    from stgrl.rollout.prompts import target_text
    from stgrl.rollout.video import MediaError, VideoCache, prepare_prompt

    torch.set_num_threads(cfg.run.torch_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    engine = HFEngine(model=model, processor=processor)
    sampling = SamplingSpec(temperature=0.0, max_new_tokens=max_new_tokens or cfg.rollout.max_new_tokens)
    cache = VideoCache(capacity=1024)
    records = records[:max_samples]
    prepared_all, preds, scores = [], [], []
    sampled_scores: list[list[Any]] = []
    final_step = cfg.run.total_steps - 1
    for index, rec in enumerate(records):
        try:
            prepared = prepare_prompt(rec, processor, cfg.data, dataset_dir, cache)
        except MediaError as e:
            log.warning("eval: skipping %s: %s", rec.id, e)
            continue
        t_gen = time.perf_counter()
        comp = engine.generate_group(EnginePrompt(model_inputs=prepared.model_inputs), 1, sampling)[0]
        t_gen = time.perf_counter() - t_gen
        score = score_sample(_scoring_sample(rec, comp.text, prepared.frame_size), final_step,
                             cfg.run.total_steps, cfg.reward)
        prepared_all.append(prepared)
        scores.append(score)
        pred = {"id": rec.id, "task": rec.task, "completion": comp.text, "question": rec.question,
                "answer": rec.answer, "frame_times": prepared.frame_times,
                "frame_size": list(prepared.frame_size), "reward_total": score.total,
                "reward_components": score.components, "record": msgspec.to_builtins(rec)}
        if sampled > 0:
            spec = SamplingSpec(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                max_new_tokens=sampling.max_new_tokens, seed=cfg.run.seed * 1_000_003 + index)
            group = engine.generate_group(EnginePrompt(model_inputs=prepared.model_inputs), sampled, spec)
            drawn = [score_sample(_scoring_sample(rec, c.text, prepared.frame_size), final_step,
                                  cfg.run.total_steps, cfg.reward) for c in group]
            sampled_scores.append(drawn)
            pred["sampled_reward_totals"] = [d.total for d in drawn]
        preds.append(pred)
        if progress is not None:
            progress(index, {"eval/reward_total": score.total,
                             "eval/tokens_per_s": len(comp.token_ids) / max(1e-9, t_gen)})
    with (out_dir / "predictions.jsonl").open("w") as fh:
        for p in preds:
            fh.write(json.dumps(p) + "\n")

    metrics: dict[str, float] = {"eval/samples": float(len(scores))} | score_means(scores, "eval")
    if sampled_scores:
        draws = [d for group in sampled_scores for d in group]
        metrics |= {"eval_sampled/draws": float(len(draws))} | score_means(draws, "eval_sampled")

    # grounding diagnostics on spatio-temporal samples (claims vs ground truth and baselines)
    st = [(claims_from_text(p["completion"]), GroundTruth.from_record(p["record"], p["frame_size"]))
          for p in preds if p["task"] == "spatio_temporal"]
    if st:
        rep = diagnose(st, seed=cfg.run.seed)
        for key, value in _flatten("grounding", msgspec.to_builtins(rep)).items():
            metrics[key] = value

    if swapped and len(prepared_all) >= 2:
        own, other = [], []
        for i, prep in enumerate(prepared_all):
            rec = prep.record
            target = target_text(rec, prep.frame_size)
            own.append(_target_loss(model, processor, prep, target))
            donor = _donor(prepared_all, i)
            if donor is None:
                own.pop()
                continue
            swapped_rec = msgspec.structs.replace(rec, video_path=donor.record.video_path,
                                                  image_path=donor.record.image_path)
            try:
                sp = prepare_prompt(swapped_rec, processor, cfg.data, dataset_dir, cache)
            except (MediaError, ValueError):
                continue
            if sp.frame_size != prep.frame_size or len(sp.frame_times) != len(prep.frame_times):
                own.pop()
                continue
            other.append(_target_loss(model, processor, sp, target))
        if own and len(own) == len(other):
            # losses: lower is better, so "own better" means swapped - own > 0
            diff = swapped_video_test([-x for x in own], [-x for x in other], seed=cfg.run.seed)
            metrics["swap/loss_own"] = sum(own) / len(own)
            metrics["swap/loss_swapped"] = sum(other) / len(other)
            for key, value in _flatten("swap", msgspec.to_builtins(diff)).items():
                metrics[key] = value

    if vstar_annotations is not None and Path(vstar_annotations).is_file():
        from stgrl.orchestration.evaluation.vstar import decode_predictions, evaluate, load_annotations

        items = load_annotations(vstar_annotations)
        by_id = {p["id"]: p for p in preds}
        prepared_by_id = {p.record.id: p for p in prepared_all}
        vpreds = []
        for item in items:
            if item.key not in by_id or item.key not in prepared_by_id:
                continue
            chains = None
            if len(item.chains) == 2:  # one prompt per chain, in the chain's question order
                rec = prepared_by_id[item.key].record
                chains = tuple(
                    engine.generate_group(EnginePrompt(model_inputs=prepare_prompt(
                        msgspec.structs.replace(rec, question=chain_prompt_question(chain, c)), processor,
                        cfg.data, dataset_dir, cache).model_inputs), 1, sampling)[0].text
                    for c, chain in enumerate(item.chains))
            else:
                log.warning("V-STAR item %s has no chain questions: both chains read the held-out answer",
                            item.key)
            vpreds.append(vstar_prediction(item.key, by_id[item.key]["completion"],
                                           tuple(by_id[item.key]["frame_size"]), chains))  # type: ignore[arg-type]
        with (out_dir / "vstar_predictions.jsonl").open("w") as fh:
            for vp in vpreds:
                fh.write(json.dumps(vp) + "\n")
        wanted = {p["id"] for p in vpreds}
        items = [i for i in items if i.key in wanted]
        if items:
            report = evaluate(items, decode_predictions(vpreds))
            (out_dir / "vstar.json").write_text(msgspec.json.encode(report).decode())
            for key, value in _flatten("vstar", msgspec.to_builtins(report.overall)).items():
                metrics[key] = value
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def score_means(scores: list[Any], prefix: str) -> dict[str, float]:
    """`<prefix>/reward_total` and `<prefix>/<component>`: means over the scores that have each one
    (components apply per task). For sampled draws every prompt has the same number, so prompts
    weigh equally."""
    out = {f"{prefix}/reward_total": sum(s.total for s in scores) / max(1, len(scores))}
    comp_vals: dict[str, list[float]] = {}
    for s in scores:
        for k, v in s.components.items():
            comp_vals.setdefault(k, []).append(v)
    for k, vals in comp_vals.items():
        out[f"{prefix}/{k}"] = sum(vals) / len(vals)
    return out


def _donor(prepared: list[Any], i: int) -> Any | None:
    """Another sample whose media is of the same kind (video or still) and frame count as sample i."""
    me = prepared[i]
    n = len(prepared)
    for k in range(1, n):
        other = prepared[(i + k) % n]
        if (other.record.media_path != me.record.media_path
                and (other.record.video_path is None) == (me.record.video_path is None)
                and len(other.frame_times) == len(me.frame_times) and other.frame_size == me.frame_size):
            return other
    return None


def _flatten(prefix: str, value: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out |= _flatten(f"{prefix}/{k}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out
