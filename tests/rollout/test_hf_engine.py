"""HF generate engine on the embedded tiny Qwen2.5-VL with real video prompts: behaviour log-probs
equal the learner's teacher-forced log-probs, vision tokens are never sampled, weights load by
version."""

from __future__ import annotations

import pytest
import torch

from stgrl.learner.logprobs import completion_logprobs
from stgrl.rollout.engine import EnginePrompt, RolloutEngine, SamplingSpec
from stgrl.rollout.hf_engine import expand_group

pytestmark = pytest.mark.timeout(300)

PARITY_TOL = 1e-4


def _parity_error(engine, prepared, group, temperature: float) -> float:
    """max |behaviour - teacher-forced| over the group, teacher-forced by the learner's function."""
    comps = [c.token_ids for c in group]
    with torch.no_grad():
        ref, mask = completion_logprobs(engine.model, prepared.model_inputs, comps, pad_id=0,
                                        temperature=temperature)
    worst = 0.0
    for i, c in enumerate(group):
        assert int(mask[i].sum()) == len(c.token_ids)
        got = torch.tensor(c.behaviour_logprobs)
        worst = max(worst, (ref[i, :len(c.token_ids)] - got).abs().max().item())
    return worst


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_behaviour_logprobs_equal_learner_teacher_forcing(hf_engine, prepared_prompts, temperature):
    assert isinstance(hf_engine, RolloutEngine)
    prepared = prepared_prompts[0]
    spec = SamplingSpec(temperature=temperature, max_new_tokens=24, seed=5)
    group = hf_engine.generate_group(EnginePrompt(prepared.model_inputs), 4, spec)
    assert len(group) == 4
    for c in group:
        assert c.finish_reason in ("stop", "length") and len(c.token_ids) == len(c.behaviour_logprobs)
        assert (c.finish_reason == "stop") == (c.token_ids[-1] in hf_engine.stop_token_ids)
        assert c.finish_reason == "stop" or len(c.token_ids) == 24
    if temperature == 0.0:
        assert len({tuple(c.token_ids) for c in group}) == 1
    else:
        assert len({tuple(c.token_ids) for c in group}) > 1
    err = _parity_error(hf_engine, prepared, group, spec.logprob_temperature)
    assert err < PARITY_TOL, f"behaviour vs teacher-forced log-probs differ by {err:.2e}"
    # the check has teeth: the same tokens scored at another temperature are far off
    assert _parity_error(hf_engine, prepared, group, spec.logprob_temperature * 2) > 1e-2


def test_seeded_groups_reproduce_and_pixels_matter(hf_engine, prepared_prompts):
    a, b = prepared_prompts[0], prepared_prompts[1]
    spec = SamplingSpec(temperature=1.0, max_new_tokens=16, seed=9)
    first = hf_engine.generate_group(EnginePrompt(a.model_inputs), 3, spec)
    again = hf_engine.generate_group(EnginePrompt(a.model_inputs), 3, spec)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.behaviour_logprobs for c in first] == [c.behaviour_logprobs for c in again]
    # same text tokens, another video's pixels: the greedy continuation's log-probs move
    swapped = dict(a.model_inputs)
    if b.model_inputs["pixel_values"].shape == a.model_inputs["pixel_values"].shape:
        swapped["pixel_values"] = b.model_inputs["pixel_values"]
    else:
        swapped["pixel_values"] = a.model_inputs["pixel_values"].flip(0)
    greedy = SamplingSpec(temperature=0.0, max_new_tokens=8)
    own = hf_engine.generate_group(EnginePrompt(a.model_inputs), 1, greedy)[0]
    other = hf_engine.generate_group(EnginePrompt(swapped), 1, greedy)[0]
    assert own.behaviour_logprobs != other.behaviour_logprobs


def test_vision_tokens_never_sampled_even_when_the_model_prefers_them(hf_engine, prepared_prompts):
    """A version whose head puts almost all mass on the vision tokens: they are still never sampled,
    and the behaviour log-probs stay the raw (unsuppressed) ones the learner computes."""
    state = {k: v.clone() for k, v in hf_engine.model.state_dict().items()}
    head = next(k for k in state if k.endswith("lm_head.weight"))
    vision = hf_engine.suppressed_token_ids
    assert len(vision) == 4
    keep = state[head][vision].clone()
    state[head].zero_()
    state[head][vision] = 100.0 * keep
    hf_engine.load_weights(state, version=7)
    assert hf_engine.version == 7
    prepared = prepared_prompts[0]
    with torch.no_grad():
        probs = hf_engine.model(**prepared.model_inputs).logits[0, -1].softmax(-1)
    assert probs[vision].sum() > 0.9, "the doctored head should prefer vision tokens"
    group = hf_engine.generate_group(EnginePrompt(prepared.model_inputs), 4,
                                     SamplingSpec(temperature=1.0, max_new_tokens=12, seed=1))
    assert not any(t in vision for c in group for t in c.token_ids)
    assert _parity_error(hf_engine, prepared, group, 1.0) < PARITY_TOL


def test_load_weights_is_all_or_nothing(hf_engine):
    state = hf_engine.model.state_dict()
    name = next(iter(state))
    before = state[name].clone()
    partial = {name: torch.zeros_like(before)}
    with pytest.raises(KeyError, match="missing"):
        hf_engine.load_weights(partial, version=3)
    with pytest.raises(KeyError, match="unknown"):
        hf_engine.load_weights({**state, "not.a.weight": before}, version=3)
    assert torch.equal(hf_engine.model.state_dict()[name], before) and hf_engine.version == -1
    doubled = [(k, v * 2) for k, v in state.items()]
    hf_engine.load_weights(doubled, version=4)
    assert hf_engine.version == 4
    assert torch.equal(hf_engine.model.state_dict()[name], before * 2)


def test_stop_strings_end_the_completion_and_stay_in_it(hf_engine, prepared_prompts):
    spec = SamplingSpec(temperature=1.0, max_new_tokens=48, seed=2, stop=("e",))
    group = hf_engine.generate_group(EnginePrompt(prepared_prompts[2].model_inputs), 4, spec)
    stopped = [c for c in group if c.finish_reason == "stop" and c.token_ids[-1] not in hf_engine.stop_token_ids]
    assert stopped, "expected some completion to stop on the stop string"
    for c in stopped:
        assert "e" in c.text
        assert "e" not in hf_engine.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)


def test_expand_group_repeats_rows_and_image_blocks(prepared_prompts):
    mi = prepared_prompts[0].model_inputs
    g = expand_group(mi, 3)
    assert g["input_ids"].shape == (3, mi["input_ids"].shape[1])
    assert torch.equal(g["input_ids"][2], mi["input_ids"][0])
    n = mi["pixel_values"].shape[0]
    assert g["pixel_values"].shape[0] == 3 * n and torch.equal(g["pixel_values"][2 * n:], mi["pixel_values"])
    assert torch.equal(g["image_grid_thw"], mi["image_grid_thw"].repeat(3, 1))
    with pytest.raises(ValueError, match="expand"):
        expand_group({**mi, "mystery": torch.zeros(1)}, 2)


def test_group_sampling_equals_the_explicitly_expanded_batch(hf_engine, prepared_prompts):
    """``num_return_sequences`` (vision tower once) samples exactly what G explicit rows (pixels
    concatenated G times) sample under the same seed: same tokens, same log-probs."""
    from transformers import GenerationConfig

    prepared = prepared_prompts[1]
    spec = SamplingSpec(temperature=1.0, max_new_tokens=10, seed=4)
    group = hf_engine.generate_group(EnginePrompt(prepared.model_inputs), 3, spec)
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                              eos_token_id=hf_engine.stop_token_ids, pad_token_id=0,
                              bad_words_ids=[[i] for i in hf_engine.suppressed_token_ids],
                              output_logits=True, return_dict_in_generate=True)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        out = hf_engine.model.generate(**expand_group(prepared.model_inputs, 3), generation_config=config)
    prompt_len = prepared.model_inputs["input_ids"].shape[1]
    logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
    for r, c in enumerate(group):
        n = len(c.token_ids)
        assert out.sequences[r, prompt_len:prompt_len + n].tolist() == c.token_ids
        ref = logp[r, :n].gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert torch.allclose(ref, torch.tensor(c.behaviour_logprobs), atol=1e-6)
