"""Teacher-forced completion log-probs on the tiny Qwen2.5-VL: the grouped, right-padded re-forward
(pixel blocks repeated per completion) equals one plain forward per completion."""

from __future__ import annotations

import pytest
import torch

from stgrl.learner.logprobs import batched_completion_logprobs, completion_logprobs


@pytest.fixture(scope="module")
def vl_model(vl_model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(vl_model_dir).eval()


def _single(model, inputs, comp, temperature):
    """Reference: one sequence, no padding, no repetition; log_softmax(logits / T) at each token."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([comp])], dim=1)
    kw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(comp), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm, **kw).logits
    p = inputs["input_ids"].shape[1]
    lp = torch.log_softmax(logits[0, p - 1:-1].float() / temperature, dim=-1)
    return lp[torch.arange(len(comp)), torch.tensor(comp)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_group_reforward_matches_single_sequences(vl_model, vl_prompt, temperature):
    inputs = vl_prompt(seed=1, n_frames=3)
    vocab = vl_model.config.text_config.vocab_size
    g = torch.Generator().manual_seed(0)
    comps = [torch.randint(20, vocab, (n,), generator=g).tolist() for n in (5, 2, 7)]
    with torch.no_grad():
        logp, mask = completion_logprobs(vl_model, inputs, comps, pad_id=0, temperature=temperature)
    assert logp.shape == (3, 7) and mask.sum(1).tolist() == [5, 2, 7]
    for i, c in enumerate(comps):
        assert torch.allclose(logp[i, :len(c)], _single(vl_model, inputs, c, temperature), atol=1e-5)
        assert torch.all(logp[i, len(c):] == 0)


def test_batched_prompts_of_different_length_match_per_prompt(vl_model, vl_prompt):
    a = vl_prompt(seed=2, n_frames=2, question="What moves?")
    b = vl_prompt(seed=3, n_frames=3, question="Where is the red circle at the end of the video?")
    assert a["input_ids"].shape[1] != b["input_ids"].shape[1]
    ca, cb = [[30, 31, 32], [40]], [[50, 51], [60, 61, 62, 63], [70]]
    with torch.no_grad():
        both, mask = batched_completion_logprobs(vl_model, [(a, ca), (b, cb)], pad_id=0)
        la, _ = completion_logprobs(vl_model, a, ca, pad_id=0)
        lb, _ = completion_logprobs(vl_model, b, cb, pad_id=0)
    assert both.shape == (5, 4)
    assert torch.allclose(both[:2, :3], la, atol=1e-5)
    assert torch.allclose(both[2:], lb, atol=1e-5)
    assert mask.sum().item() == 3 + 1 + 2 + 4 + 1


def test_pixels_matter_and_gradients_flow(vl_model, vl_prompt):
    """The re-forward must actually use each row's pixels (swapping frames changes log-probs)."""
    a, b = vl_prompt(seed=4), vl_prompt(seed=5)
    swapped = dict(a) | {"pixel_values": b["pixel_values"]}
    comps = [[30, 31, 32, 33]]
    la, _ = completion_logprobs(vl_model, a, comps, pad_id=0)
    with torch.no_grad():
        ls, _ = completion_logprobs(vl_model, swapped, comps, pad_id=0)
    assert not torch.allclose(la.detach(), ls, atol=1e-6)
    la.sum().backward()
    grads = [p.grad for p in vl_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    vl_model.zero_grad(set_to_none=True)


def test_rejects_batched_prompt_and_unknown_keys(vl_model, vl_prompt):
    a = vl_prompt(seed=6)
    two = dict(a) | {"input_ids": a["input_ids"].repeat(2, 1)}
    with pytest.raises(ValueError, match="ONE prompt"):
        completion_logprobs(vl_model, two, [[1]], pad_id=0)
    with pytest.raises(ValueError, match="does not know"):
        completion_logprobs(vl_model, dict(a) | {"cache_position": torch.zeros(1)}, [[1]], pad_id=0)


def test_vision_once_per_prompt_equals_repeated_pixels(vl_model, vl_prompt):
    """Encoding each prompt's frames once and sharing the features over its G rows gives the same
    log-probs AND the same gradients (vision tower included) as repeating the pixel blocks G times."""
    groups = [(vl_prompt(seed=7, n_frames=2), [[30, 31, 32], [40, 41], [50]]),
              (vl_prompt(seed=8, n_frames=3), [[60, 61], [70, 71, 72, 73]])]
    w = torch.linspace(0.5, 1.5, 4)

    def run(once):
        vl_model.zero_grad(set_to_none=True)
        lp, mask = batched_completion_logprobs(vl_model, groups, pad_id=0, encode_images_once=once)
        (lp * w[: lp.shape[1]]).sum().backward()
        grads = {n: p.grad.clone() for n, p in vl_model.named_parameters() if p.grad is not None}
        return lp.detach(), grads

    lp_once, g_once = run(True)
    lp_rep, g_rep = run(False)
    vl_model.zero_grad(set_to_none=True)
    assert torch.allclose(lp_once, lp_rep, atol=1e-5)
    assert g_once.keys() == g_rep.keys() and any(k.startswith("model.visual") for k in g_once)
    for k in g_once:
        assert torch.allclose(g_once[k], g_rep[k], atol=1e-5, rtol=1e-4), k
