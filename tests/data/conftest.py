"""Fixtures of the data tests: small generated datasets per difficulty and the embedded tiny
model's real processor (built locally, no download), each made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SIZES = {"easy": 16, "medium": 12, "hard": 8}


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """`{difficulty: folder}` with train (SIZES) and eval (4) splits written by the generator."""
    from stgrl.rollout.data.synth import generate_dataset

    out = {}
    for level, n in SIZES.items():
        d = tmp_path_factory.mktemp(f"shapes-{level}")
        generate_dataset(d, train=n, eval=4, seed=0, difficulty=level, progress=False)
        out[level] = d
    return out


@pytest.fixture(scope="session")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    from stgrl.rollout.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    return AutoProcessor.from_pretrained(str(path))
