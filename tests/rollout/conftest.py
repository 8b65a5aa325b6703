"""Rollout fixtures: the embedded tiny Qwen2.5-VL and real prompts (synthetic shapes videos through
the data pipeline's decode + processor), built once per session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory):
    from stgrl.rollout.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("rollout-vl") / "m", seed=0)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory):
    """``(dataset_dir, records, data_cfg)``: three synthetic samples (video tasks) with media on disk."""
    from stgrl.rollout.config import DataConfig
    from stgrl.rollout.data.synth import make_sample, write_media

    cfg = DataConfig(max_frames=4, min_frames=2)
    out = tmp_path_factory.mktemp("shapes")
    records = []
    index = 0
    while len(records) < 3:
        sample = make_sample(index, 0, "train", "easy", cfg)
        index += 1
        if sample.record.video_path is None:
            continue
        write_media(sample, out)
        records.append(sample.record)
    return out, records, cfg


@pytest.fixture(scope="session")
def prepared_prompts(tiny_vl_dir, shapes_dataset):
    """PreparedPrompt of each record (per-frame images through the real processor)."""
    from transformers import AutoProcessor

    from stgrl.rollout.video import prepare_prompt

    proc = AutoProcessor.from_pretrained(tiny_vl_dir)
    root, records, cfg = shapes_dataset
    return [prepare_prompt(r, proc, cfg, root) for r in records]


@pytest.fixture()
def hf_engine(tiny_vl_dir):
    """A fresh engine per test: tests load other weights into it."""
    from stgrl.rollout.hf_engine import HFEngine

    return HFEngine.from_pretrained(tiny_vl_dir)
