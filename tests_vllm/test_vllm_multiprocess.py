"""The vLLM engine with its engine core in a separate process (vLLM's default outside our actors):
tensors cannot cross ``collective_rpc`` there, so a weight version travels as a safetensors file."""

from __future__ import annotations

import pytest
import torch
from lane import VL_KV_CACHE_BYTES

from stgrl.rollout.engine import EnginePrompt, SamplingSpec

pytestmark = pytest.mark.timeout(300)


def test_weight_update_through_a_file_in_multiprocess_mode(tiny_text_model, hf_reference):
    from stgrl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_text_model, dtype="float32", gpu_memory_utilization=0.05, max_model_len=512,
                        in_process=False, kv_cache_bytes=VL_KV_CACHE_BYTES)
    try:
        prompt = EnginePrompt(model_inputs={"input_ids": torch.tensor([[(5 * i + 3) % 400 + 20 for i in range(40)]])})
        greedy = SamplingSpec(temperature=0.0, max_new_tokens=12)
        before = engine.generate_group(prompt, 1, greedy)[0]
        original = {k: v.detach().clone() for k, v in hf_reference.state_dict().items()}
        gen = torch.Generator().manual_seed(7)
        perturbed = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.dim() == 2 else v
                     for k, v in original.items()}
        engine.load_weights(perturbed, version=5)
        after = engine.generate_group(prompt, 1, greedy)[0]
        engine.load_weights(original, version=6)
        restored = engine.generate_group(prompt, 1, greedy)[0]
    finally:
        engine.close()
    assert after.token_ids != before.token_ids
    assert restored.token_ids == before.token_ids and engine.version == 6
