"""Fixtures of the vLLM CPU lane (run by ``scripts/vllm_lane.sh`` inside ``.venv-vllm``).

Two models built here: a tiny text Qwen2 (the text-only engine paths) and the project's embedded
Qwen2.5-VL (frames as images, through a real RolloutWorkerImpl). One in-process engine per model per
session: engine start-up is the expensive part (~15 s on 2 cores), generation on tiny models takes
milliseconds.
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

from lane import VL_DATA, VL_KV_CACHE_BYTES  # noqa: E402
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

    return VLLMEngine(tiny_text_model, dtype="float32", gpu_memory_utilization=0.05, max_model_len=512, seed=0,
                      kv_cache_bytes=VL_KV_CACHE_BYTES)


@pytest.fixture(scope="session")
def hf_reference(tiny_text_model):
    """The same checkpoint in HF transformers, fp32, for teacher-forced log-probs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_text_model, dtype=torch.float32)
    return model.eval()


# ---- the embedded Qwen2.5-VL with frames as images (the model the project trains) -------------------

@pytest.fixture(scope="session")
def tiny_vl_model(tmp_path_factory) -> Path:
    """The embedded tiny Qwen2.5-VL, built here by the project's own builder (random weights, tied
    embeddings), under this venv's transformers."""
    from stgrl.rollout.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-vl") / "model", seed=0)


@pytest.fixture(scope="session")
def shapes_records(tmp_path_factory):
    """``(dataset_dir, records, data_cfg)``: three synthetic video samples with their mp4 on disk."""
    from stgrl.rollout.config import DataConfig
    from stgrl.rollout.data.synth import make_sample, write_media

    cfg = DataConfig(**VL_DATA)
    out = tmp_path_factory.mktemp("shapes")
    records, index = [], 0
    while len(records) < 3:
        sample = make_sample(index, 0, "train", "easy", cfg)
        index += 1
        if sample.record.video_path is None:
            continue
        write_media(sample, out)
        records.append(sample.record)
    return out, records, cfg


@pytest.fixture(scope="session")
def vl_worker(tiny_vl_model, shapes_records):
    """A real RolloutWorkerImpl (no sockets) on the vLLM engine: the worker decodes the videos and
    hands vLLM its decoded frames. Its engine is the session's one VL engine."""
    import torch

    torch.set_num_threads(1)
    from stgrl.actors.rollout_worker import RolloutWorkerImpl, RolloutWorkerSpec
    from stgrl.rollout.config import RolloutConfig, VLLMConfig

    root, _, data = shapes_records
    rollout = RolloutConfig(engine="vllm", group_size=4, temperature=1.0, max_new_tokens=12,
                            gpu_memory_utilization=0.05,
                            vllm=VLLMConfig(max_model_len=1024, kv_cache_bytes=VL_KV_CACHE_BYTES))
    worker = RolloutWorkerImpl(RolloutWorkerSpec(worker_id="lane-0", model_path=str(tiny_vl_model),
                                                 dataset_dir=str(root), rollout=rollout, data=data))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def hf_vl(tiny_vl_model):
    """The same checkpoint in transformers, fp32: the learner's model."""
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_vl_model, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def session_engines():
    """Extra in-process engines a test builds, closed only when the session ends: in-process vLLM
    engines share one distributed state, and closing any of them tears it down under the others."""
    engines: list = []
    yield engines
    for engine in engines:
        engine.close()
