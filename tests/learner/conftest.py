"""Learner test fixtures: a tiny text-only Qwen2 and the embedded tiny Qwen2.5-VL, plus factories for
real prompt inputs (per-frame images through the real processor) and scored groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory):
    """A 20k-parameter Qwen2ForCausalLM saved with save_pretrained (no tokenizer)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      attention_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg)
    out = tmp_path_factory.mktemp("text") / "m"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vl_model_dir(tmp_path_factory):
    """The embedded tiny Qwen2.5-VL (model + processor), built once per session."""
    from stgrl.rollout.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("vl") / "m", seed=0)


@pytest.fixture(scope="session")
def vl_prompt(vl_model_dir):
    """Factory: ``make(seed, n_frames=2, question=...) -> model_inputs`` for ONE prompt of random frames."""
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(vl_model_dir)

    def make(seed: int, n_frames: int = 2, question: str = "What moves?") -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        frames = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(n_frames)]
        content = []
        for k in range(n_frames):
            content += [{"type": "text", "text": f"Frame {k} at {k * 0.5:.1f}s: "}, {"type": "image"}]
        content.append({"type": "text", "text": question})
        text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return dict(proc(text=[text], images=frames, return_tensors="pt"))

    make.processor = proc
    return make


@pytest.fixture(scope="session")
def make_groups():
    """Factory: ``make(prompts, vocab, seed, G=4, rewards=None) -> list[ScoredGroup]`` with random
    completions of varied length and behaviour log-probs of -vocab-uniform."""
    from stgrl.learner.batch import ScoredGroup

    def make(prompts, vocab: int, seed: int, group_size: int = 4, low: int = 3, high: int = 9, rewards=None):
        g = torch.Generator().manual_seed(seed)
        out = []
        for i, inputs in enumerate(prompts):
            comps = [torch.randint(10, vocab, (int(torch.randint(low, high, (1,), generator=g)),),
                                   generator=g).tolist() for _ in range(group_size)]
            r = rewards[i] if rewards is not None else torch.rand(group_size, generator=g).tolist()
            out.append(ScoredGroup(model_inputs=inputs, completion_ids=comps,
                                   behaviour_logprobs=[[-float(np.log(vocab))] * len(c) for c in comps],
                                   rewards=[float(x) for x in r], group_id=f"g{seed}-{i}"))
        return out

    return make


@pytest.fixture(scope="session")
def text_prompts():
    """Factory: ``make(n, seed) -> list of model_inputs`` (input_ids/attention_mask [1, P]) for the text model."""

    def make(n: int, seed: int, vocab: int = 64):
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            ids = torch.randint(0, vocab, (1, 4 + i % 3), generator=g)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        return out

    return make
