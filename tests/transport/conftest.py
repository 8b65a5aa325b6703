"""Builders shared by the transport tests (fixture `tx`): realistic messages and tensors, small limits.

Ray actors defined in test modules are shipped to workers by value (`ship_by_value`): with
``--import-mode=importlib`` the test modules are not importable by name in a worker.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from stgrl.transport.config import TransportConfig
from stgrl.transport.wire import Completion, KeyFrame, ScoringSample, TrajectoryGroup

torch.set_num_threads(1)


def small_cfg(**kw) -> TransportConfig:
    """Fast timeouts and a 1 MiB frame limit so size checks are cheap to exercise."""
    base = dict(timeout_s=5.0, resend_after_s=0.3, max_frame_mib=1, weight_bucket_mib=1, heartbeat_s=0.5)
    base.update(kw)
    return TransportConfig(**base)


def make_group(i: int, *, step: int = 0, num_completions: int = 3) -> TrajectoryGroup:
    sample = ScoringSample(
        id=f"s{i}", task="spatio_temporal", completion="", frame_size=[224.0, 168.0], answer="B",
        options=["A. red", "B. blue"], key_frames=[KeyFrame(0, 1.5), KeyFrame(3, 4.0)],
        key_items={"0": {"red car": [[0.1, 0.2, 0.35, 0.6]]}}, span=[1.0, 4.5],
    )
    completions = [
        Completion(token_ids=list(range(i, i + 7 + c)), behaviour_logprobs=[-0.5 - c * 0.01] * (7 + c),
                   text=f"<think>c{c}</think><answer>B</answer>", finish_reason="stop")
        for c in range(num_completions)
    ]
    return TrajectoryGroup(
        group_id=f"{step}/p{i}", prompt_id=f"p{i}", step=step, policy_version=2, prompt_len=11,
        completions=completions, sample=sample, frame_size=[224, 168], timings={"generate_s": 0.25},
    )


def make_tensors(i: int) -> dict[str, torch.Tensor]:
    """The prompt's model inputs in the dtypes they really have (bf16 pixels included)."""
    g = torch.Generator().manual_seed(i)
    return {
        "input_ids": torch.randint(0, 150_000, (1, 11), generator=g),
        "attention_mask": torch.ones(1, 11, dtype=torch.int64),
        "pixel_values": torch.randn(64, 1176, generator=g).to(torch.bfloat16),
        "image_grid_thw": torch.tensor([[1, 8, 8]], dtype=torch.int64),
    }


def assert_tensors_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Bit-exact: same names, dtypes, shapes and bytes."""
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype, name
        assert got[name].shape == t.shape, name
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name


def ship_by_value(module_name: str) -> None:
    """Let Ray pickle classes/functions of ``module_name`` (a test module) by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[module_name])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="session")
def tx() -> types.SimpleNamespace:
    return types.SimpleNamespace(small_cfg=small_cfg, make_group=make_group, make_tensors=make_tensors,
                                 assert_tensors_equal=assert_tensors_equal, ship_by_value=ship_by_value)
