"""The SFT loop on the tiny Qwen2.5-VL (one in-process rank): held-out loss falls, an interrupted and
resumed run ends bit-identical to an uninterrupted one, the HF export loads like a hub checkpoint,
and the weight-publisher hook receives the gathered state."""

from __future__ import annotations

import random

import pytest
import torch

from stgrl.learner.config import LearnerConfig, SFTConfig
from stgrl.learner.sft import learner_config_for_sft, make_sft_example, target_text
from stgrl.learner.sft_trainer import checkpoint_due, run_sft
from stgrl.learner.testing import free_port
from stgrl.learner.worker import LocalLearner

PORT = free_port()
SFT = SFTConfig(steps=24, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=12, checkpoint_every=6)


def _examples(vl_prompt, seeds):
    tok = vl_prompt.processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "star", "ring"]
    out = []
    for s in seeds:
        rng = random.Random(s)
        name = f"{rng.choice(colours)} {rng.choice(shapes)}"
        t = rng.randint(0, 9) / 2
        box = f"[{rng.randint(0, 20)},{rng.randint(0, 20)},40,50]"
        reasoning = f"The {name} is at <obj>{name}</obj><box>{box}</box>at<t>{t}</t>s"
        ids = tok.encode(target_text(reasoning, f"<t>{t}</t>s to <t>{t + 1}</t>s"), add_special_tokens=False)
        out.append(make_sft_example(vl_prompt(seed=s), ids + [end]))
    return out


@pytest.fixture(scope="module")
def sft_data(vl_prompt):
    train = _examples(vl_prompt, range(100, 132))
    held = _examples(vl_prompt, range(900, 906))
    return (lambda step: train[(step * 4) % 32:(step * 4) % 32 + 4]), held


def _learner(vl_model_dir):
    return LocalLearner(vl_model_dir, learner_config_for_sft(SFT, LearnerConfig()), seed=3, port=PORT)


def test_sft_lowers_held_out_loss_and_resumes_exactly(vl_model_dir, sft_data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    train_batch, held = sft_data
    full = _learner(vl_model_dir)
    res = run_sft(full, train_batch, held, SFT, tmp_path / "full")
    (s0, l0), *_, (s_end, l_end) = res.eval_losses
    assert (s0, s_end) == (0, SFT.steps)
    assert l_end < 0.6 * l0, res.eval_losses
    assert all(m["target_tokens"] > 0 for m in res.history)

    part = run_sft(_learner(vl_model_dir), train_batch, held, SFT, tmp_path / "cut", stop_after=9)
    assert len(part.history) == 9 and not (tmp_path / "cut" / "hf").exists()
    resumed_learner = _learner(vl_model_dir)
    seen = []
    rest = run_sft(resumed_learner, train_batch, held, SFT, tmp_path / "cut",
                   on_step=lambda done, metrics, held_out: seen.append((done, metrics, held_out)))
    assert rest.resumed_from == 9 and len(rest.history) == SFT.steps - 9
    # the caller's hook: every step once, from the checkpoint on, with timings and the held-out loss
    # exactly where the loop evaluated (no step-0 call: a resumed run does not re-evaluate the start)
    assert [d for d, _, _ in seen] == list(range(10, SFT.steps + 1))
    assert [(d, h) for d, _, h in seen if h is not None] == rest.eval_losses == [(12, rest.eval_losses[0][1]),
                                                                                 (24, l_end)]
    assert all(m["step_time_s"] >= m["data_time_s"] >= 0 and m["sft_loss"] > 0 for _, m, _ in seen)
    assert [m["sft_loss"] for m in part.history + rest.history] == [m["sft_loss"] for m in res.history]
    want, got = full.full_state_dict(), resumed_learner.full_state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)

    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "cut" / "hf").state_dict()
    assert all(torch.equal(exported[k], got[k]) for k in exported)
    assert AutoProcessor.from_pretrained(tmp_path / "cut" / "hf").tokenizer.convert_tokens_to_ids("<think>") > 0

    # the publisher hook is handed the gathered state of the current weights
    calls = []

    class Recorder:
        def publish(self, version, state_dict):
            calls.append((version, state_dict))

    resumed_learner.attach_publisher(Recorder)
    timings = resumed_learner.publish_weights(7)
    assert timings["time_gather_s"] >= 0 and calls[0][0] == 7
    assert all(torch.equal(calls[0][1][k], got[k]) for k in got)


def test_checkpoint_due():
    assert [s for s in range(1, 11) if checkpoint_due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if checkpoint_due(s, 0, 10)] == [10]
