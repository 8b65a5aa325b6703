"""Fixtures of the vLLM CPU lane (run by ``scripts/vllm_lane.sh`` inside ``.venv-vllm``).

One tiny text Qwen2 checkpoint and one in-process vLLM engine per session: engine start-up is the
expensive part (~15 s on 2 cores), generation on the tiny model takes milliseconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_text_model import build_tiny_text_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """A fresh tiny fp32 Qwen2 checkpoint (deterministic, built in ~3 s)."""
    return build_tiny_text_model(tmp_path_factory.mktemp("tiny-text"), seed=0)


@pytest.fixture(scope="session")
def vllm_engine(tiny_text_model):
    """The engine under test, in-process, fp32, a small slice of host memory for the KV cache."""
    import torch

    torch.set_num_threads(1)
    from stgrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(tiny_text_model, dtype="float32", gpu_memory_utilization=0.05, max_model_len=512, seed=0)


@pytest.fixture(scope="session")
def hf_reference(tiny_text_model):
    """The same checkpoint in HF transformers, fp32, for teacher-forced log-probs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_text_model, dtype=torch.float32)
    return model.eval()
