"""The learner at 7B scale, checked small on CPU: token-budget micro-batches give the unsplit update,
gradient checkpointing gives the same gradients, pixels reach the device once per prompt, bf16 loads
as bf16."""

from __future__ import annotations

import pytest
import torch

from stgrl.learner.batch import ScoredGroup, padded_tokens, token_budget_split
from stgrl.learner.config import LearnerConfig
from stgrl.learner.engine import (
    LearnerEngine,
    WorldInfo,
    enable_gradient_checkpointing,
    train_without_dropout,
)
from stgrl.learner.logprobs import batched_completion_logprobs, build_group_batch
from stgrl.learner.rl import rl_update
from stgrl.learner.testing import free_port

WORLD = WorldInfo(master_port=free_port())


def _group(prompt_len: int, lengths: list[int]) -> ScoredGroup:
    ids = torch.zeros(1, prompt_len, dtype=torch.long)
    return ScoredGroup(model_inputs={"input_ids": ids}, completion_ids=[[1] * n for n in lengths],
                       behaviour_logprobs=[[-1.0] * n for n in lengths], rewards=[0.0] * len(lengths))


def test_token_budget_split_keeps_groups_whole_and_within_budget():
    groups = [_group(10, [5, 3]), _group(20, [2, 2]), _group(4, [1, 1]), _group(50, [10, 10])]
    assert padded_tokens(groups[:2]) == 4 * 22  # 4 rows padded to the longest, 20 + 2
    parts = token_budget_split(groups, budget=90)
    assert [len(p) for p in parts] == [2, 1, 1]
    assert [g for p in parts for g in p] == groups
    assert all(padded_tokens(p) <= 90 for p in parts[:-1]) and padded_tokens(parts[-1]) == 120  # alone
    assert token_budget_split(groups, budget=0) == [groups]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_micro_batched_update_equals_the_unsplit_update(vl_model_dir, vl_prompt, make_groups, zero_stage):
    """A minibatch run as several micro-batches (gradients accumulated by DeepSpeed, one optimizer
    step) has the gradient and loss of the minibatch in one forward. Compared on the first
    minibatch, where both runs start from the same weights: Adam's first step is ~lr * sign(grad), so
    weights after it amplify round-off of near-zero gradients and are no fair comparison."""
    from deepspeed.utils import safe_get_full_grad

    prompts = [vl_prompt(seed=s, n_frames=1 + s % 2) for s in range(4)]
    results = {}
    for budget in (0, 150):
        cfg = LearnerConfig(lr=1e-2, warmup_steps=0, num_minibatches=2, zero_stage=zero_stage,
                            micro_batch_tokens=budget)
        engine = LearnerEngine(vl_model_dir, cfg, WORLD)
        vocab = engine.module.config.text_config.vocab_size
        grads: list[dict[str, torch.Tensor]] = []
        real_step = engine.optimizer_step

        def step_capturing_grads(engine=engine, grads=grads, real_step=real_step):
            grads.append({n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()})
            return real_step()

        engine.optimizer_step = step_capturing_grads
        metrics = rl_update(engine, make_groups(prompts, vocab, seed=3))
        results[budget] = (metrics, grads)
    (m0, g0), (m1, g1) = results[0], results[150]
    assert m0["num_micro_batches"] == 2 and m1["num_micro_batches"] >= 4
    assert len(g0) == len(g1) == 2  # one optimizer step per minibatch either way
    first0, first1 = g0[0], g1[0]
    assert max(g.abs().max().item() for g in first0.values()) > 1e-3
    for name in first0:
        assert torch.allclose(first1[name], first0[name], atol=1e-7, rtol=1e-4), name
    assert m1["ratio_abs_dev_first"] == pytest.approx(m0["ratio_abs_dev_first"], abs=1e-6)


def test_gradient_checkpointing_keeps_less_for_backward_and_gives_the_same_gradients(vl_model_dir, vl_prompt, make_groups):
    from transformers import AutoModelForImageTextToText

    groups = make_groups([vl_prompt(seed=1, n_frames=2), vl_prompt(seed=2)], 700, seed=4)
    pairs = [(g.model_inputs, g.completion_ids) for g in groups]

    def grads(checkpointing: bool):
        model = AutoModelForImageTextToText.from_pretrained(vl_model_dir, dtype=torch.float32)
        if checkpointing:
            enable_gradient_checkpointing(model)
            train_without_dropout(model)
        else:
            model.eval()
        saved = [0]

        def pack(t):  # what autograd keeps for backward outside checkpointed regions
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, mask = batched_completion_logprobs(model, pairs, pad_id=0)
        (logp * mask).sum().backward()
        return saved[0], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_bytes, plain = grads(False)
    ckpt_bytes, ckpt = grads(True)
    assert ckpt_bytes < 0.6 * plain_bytes, f"checkpointing kept {ckpt_bytes} of {plain_bytes} bytes for backward"
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.allclose(ckpt[name], plain[name], atol=1e-6, rtol=1e-5), name


def test_checkpointing_refuses_a_model_with_attention_dropout(text_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(text_model_dir)
    model.model.layers[0].self_attn.attention_dropout = 0.1
    with pytest.raises(ValueError, match=r"attention dropout \(0.1\).*gradient_checkpointing=false"):
        train_without_dropout(model)


def test_pixels_go_to_the_device_once_per_prompt(vl_model_dir, vl_prompt, monkeypatch):
    """The re-forward of G completions carries each prompt's pixels once, not G copies."""
    from transformers import AutoModelForImageTextToText

    import stgrl.learner.logprobs as logprobs

    model = AutoModelForImageTextToText.from_pretrained(vl_model_dir, dtype=torch.float32).eval()
    prompts = [vl_prompt(seed=5, n_frames=2), vl_prompt(seed=6, n_frames=3)]
    groups = [(p, [[30, 31], [32], [33, 34, 35], [36]]) for p in prompts]
    built = []
    real = logprobs.build_group_batch

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        built.append(out[0])
        return out

    monkeypatch.setattr(logprobs, "build_group_batch", recording)
    with torch.no_grad():
        once, _ = logprobs.batched_completion_logprobs(model, groups, pad_id=0)
        repeated, _ = logprobs.batched_completion_logprobs(model, groups, pad_id=0, encode_images_once=False)
    assert "pixel_values" not in built[0]
    patches = sum(int(p["pixel_values"].shape[0]) for p in prompts)
    assert built[1]["pixel_values"].shape[0] == 4 * patches  # the expanded twin: G copies
    assert torch.allclose(once, repeated, atol=1e-5)
    assert build_group_batch(groups, 0)[0]["pixel_values"].shape[0] == 4 * patches


def test_bf16_precision_loads_the_checkpoint_in_bf16(text_model_dir, monkeypatch):
    """Every rank holds the full model before DeepSpeed partitions it: bf16 from disk halves that host
    memory (DeepSpeed would cast the module to bf16 anyway, so the engine's dtype alone proves nothing)."""
    import stgrl.learner.engine as engine_module

    loaded = []
    real = engine_module.load_model

    def recording(path, dtype=torch.float32):
        model = real(path, dtype)
        loaded.append({p.dtype for p in model.parameters()})
        return model

    monkeypatch.setattr(engine_module, "load_model", recording)
    engine = LearnerEngine(text_model_dir, LearnerConfig(precision="bf16", zero_stage=2), WORLD)
    assert loaded == [{torch.bfloat16}]
    assert {p.dtype for p in engine.module.parameters()} == {torch.bfloat16}
