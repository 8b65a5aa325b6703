"""One DeepSpeed rank in-process (gloo, world size 1): real GSPO updates, SFT, weights, exact resume."""

from __future__ import annotations

import pytest
import torch

from stgrl.learner.config import LearnerConfig
from stgrl.learner.engine import LearnerEngine, WorldInfo
from stgrl.learner.rl import rl_update
from stgrl.learner.sft import sft_step
from stgrl.learner.testing import free_port

WORLD = WorldInfo(master_port=free_port())  # world of 1: the port only serves the first init in this process


def _vocab(engine):
    cfg = engine.module.config
    return getattr(cfg, "text_config", cfg).vocab_size


def test_multi_minibatch_update_moves_ratios_and_clips(vl_model_dir, vl_prompt, make_groups):
    """Constructed case: every minibatch holds the same group, so after step 1 raised the
    positive-advantage sequences, minibatches 2..4 see ratios outside [1-3e-4, 1+4e-4] and clip."""
    eng = LearnerEngine(vl_model_dir, LearnerConfig(lr=1e-2, warmup_steps=0, num_minibatches=4), WORLD)
    before = eng.full_state_dict()
    group = make_groups([vl_prompt(seed=10)], _vocab(eng), seed=1, rewards=[[1.0, 0.0, 0.0, 1.0]])[0]
    m = rl_update(eng, [group] * 4)
    assert m["num_minibatches"] == 4
    assert m["ratio_abs_dev_first"] < 1e-6, "first minibatch: old log-probs were taken on these weights"
    assert m["ratio_abs_dev_last"] > 1e-3
    assert m["clip_fraction_last"] > 0.0
    assert m["zero_std_groups"] == 0 and m["tokens"] > 0
    after = eng.full_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_first_minibatch_old_logprobs_equal_a_separate_no_grad_pass(vl_model_dir, vl_prompt, make_groups):
    """rl_update reuses minibatch 0's own forward (detached) as its old log-probs instead of a
    no-grad pass: that is only sound if the two are bit-identical, so check exactly that."""
    from stgrl.learner.logprobs import batched_completion_logprobs

    eng = LearnerEngine(vl_model_dir, LearnerConfig(lr=1e-2, num_minibatches=2), WORLD)
    eng.module.eval()
    groups = make_groups([vl_prompt(seed=s) for s in (13, 14)], _vocab(eng), seed=3)
    pairs = [(g.model_inputs, g.completion_ids) for g in groups]
    with torch.no_grad():
        separate, mask0 = batched_completion_logprobs(eng.module, pairs, eng.pad_id, 1.0)
    with_grad, mask1 = batched_completion_logprobs(eng.module, pairs, eng.pad_id, 1.0)
    assert with_grad.requires_grad
    assert torch.equal(mask0, mask1)
    assert torch.equal(separate, with_grad.detach())


def test_state_dict_export_roundtrip(vl_model_dir, vl_prompt, make_groups, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    eng = LearnerEngine(vl_model_dir, LearnerConfig(lr=1e-2, num_minibatches=2), WORLD)
    rl_update(eng, make_groups([vl_prompt(seed=s) for s in (11, 12)], _vocab(eng), seed=2))
    sd = eng.full_state_dict()
    assert all(v.device.type == "cpu" for v in sd.values())
    eng.export_hf(tmp_path / "hf")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").state_dict()
    assert all(torch.equal(reloaded[k], sd[k]) for k in reloaded)
    assert AutoProcessor.from_pretrained(tmp_path / "hf").tokenizer.vocab_size > 0


# ---- exact resume -----------------------------------------------------------------------------

def _resume_cfg(zero_stage=2, precision="fp32"):
    return LearnerConfig(lr=5e-3, warmup_steps=1, total_steps=12, num_minibatches=2, zero_stage=zero_stage,
                         precision=precision)


def _run_steps(eng, first, last, text_prompts, make_groups):
    """Steps first..last-1; step k's data derives from k alone (the data cursor). Each step: one
    GSPO batch (2 minibatches) + one SFT step in train mode (dropout draws from the RNG)."""
    losses = []
    for k in range(first, last):
        groups = make_groups(text_prompts(4, seed=k), 64, seed=1000 + k)
        losses.append(rl_update(eng, groups)["loss"])
        ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(k))
        ex = [{"input_ids": r[None], "attention_mask": torch.ones(1, 12, dtype=torch.long),
               "labels": torch.cat([torch.full((1, 4), -100), r[None, 4:]], dim=1)} for r in ids]
        losses.append(sft_step(eng, ex)["sft_loss"])
    return losses


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    """Text model with attention dropout so an unrestored RNG would change the result."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.2,
                      max_position_embeddings=128)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = Qwen2ForCausalLM(cfg)
    out = tmp_path_factory.mktemp("drop") / "m"
    m.save_pretrained(out)
    return out


@pytest.mark.parametrize(("zero_stage", "precision"), [(2, "fp32"), (3, "bf16")])
def test_exact_resume_bit_identical(dropout_model_dir, text_prompts, make_groups, tmp_path, zero_stage, precision):
    full = LearnerEngine(dropout_model_dir, _resume_cfg(zero_stage, precision), WORLD, seed=7)
    losses_full = _run_steps(full, 0, 4, text_prompts, make_groups)
    want = full.full_state_dict()

    first = LearnerEngine(dropout_model_dir, _resume_cfg(zero_stage, precision), WORLD, seed=7)
    losses_a = _run_steps(first, 0, 2, text_prompts, make_groups)
    first.save_checkpoint(tmp_path / "ckpt", {"step": 2, "policy_version": 2, "curriculum_p": 0.5})
    del first
    torch.manual_seed(12345)  # the restart must not depend on the process's RNG: the checkpoint restores it
    resumed = LearnerEngine(dropout_model_dir, _resume_cfg(zero_stage, precision), WORLD, seed=7)
    state = resumed.load_checkpoint(tmp_path / "ckpt")
    assert state["step"] == 2 and state["policy_version"] == 2 and state["curriculum_p"] == 0.5
    assert resumed.global_steps == 2 * 3  # 2 RL minibatch steps + 1 SFT step per training step
    losses_b = _run_steps(resumed, state["step"], 4, text_prompts, make_groups)
    got = resumed.full_state_dict()

    assert losses_a + losses_b == losses_full
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    opt_full, opt_res = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert torch.equal(_flat_moments(opt_full), _flat_moments(opt_res))


def _flat_moments(opt_state) -> torch.Tensor:
    """Every Adam first/second moment tensor found anywhere in a (ZeRO-2 or -3) optimizer state."""
    found: list[torch.Tensor] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("exp_avg", "exp_avg_sq") and isinstance(v, torch.Tensor):
                    found.append(v.flatten().float())
                else:
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(opt_state)
    assert found, "no Adam moments in the optimizer state"
    return torch.cat(found)


def test_load_without_checkpoint_fails_clearly(text_model_dir, tmp_path):
    eng = LearnerEngine(text_model_dir, LearnerConfig(), WORLD)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        eng.load_checkpoint(tmp_path / "empty")


def test_on_policy_behaviour_gives_unit_is_weights_and_kl_grows_from_zero(text_model_dir, text_prompts, make_groups):
    """Behaviour log-probs equal to the learner's (a perfect engine, version 0): IS weights are 1 and
    the engine/learner gap is 0; with kl_beta > 0 the k3 KL to the frozen reference starts at 0 and
    grows once the policy moves."""
    from stgrl.learner.logprobs import completion_logprobs

    eng = LearnerEngine(text_model_dir, LearnerConfig(lr=1e-2, warmup_steps=0, num_minibatches=2, kl_beta=0.1),
                        WORLD)
    groups = make_groups(text_prompts(2, seed=5), 64, seed=5)
    with torch.no_grad():
        for g in groups:
            lp, mask = completion_logprobs(eng.module.eval(), g.model_inputs, g.completion_ids, eng.pad_id)
            g.behaviour_logprobs = [lp[i, : int(mask[i].sum())].tolist() for i in range(len(g.completion_ids))]
    m1 = rl_update(eng, groups)
    assert m1["behaviour_gap"] < 1e-6
    assert abs(m1["is_weight_min"] - 1.0) < 1e-5 and abs(m1["is_weight_max"] - 1.0) < 1e-5
    m2 = rl_update(eng, groups)
    assert m2["kl"] > m1["kl"] >= 0.0
    assert m2["is_weight_max"] <= 2.0 and m2["behaviour_gap"] > 1e-4  # now the behaviour policy is stale
