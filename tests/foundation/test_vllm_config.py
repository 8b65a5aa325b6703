"""vLLM engine settings in the config, and the combinations it cannot run refused at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgrl.orchestration.config import ConfigError, load_config
from stgrl.rollout.config import DataConfig, max_prompt_tokens

REPO = Path(__file__).resolve().parents[2]


def test_settings_are_config_fields():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.vllm.max_model_len=8192",
                             "rollout.vllm.enforce_eager=false", "rollout.vllm.max_num_seqs=64",
                             "rollout.vllm.max_num_batched_tokens=16384"])
    v = cfg.rollout.vllm
    assert (v.max_model_len, v.enforce_eager, v.max_num_seqs, v.max_num_batched_tokens) == (8192, False, 64, 16384)
    with pytest.raises(ConfigError, match="rollout.vllm.bogus"):
        load_config(None, ["rollout.vllm.bogus=1"])


def test_max_prompt_tokens_counts_every_frame_at_the_pixel_ceiling():
    data = DataConfig(max_frames=16, max_pixels_per_frame=128 * 28 * 28)
    assert max_prompt_tokens(data) >= 16 * 128 + 16 * 2  # visual tokens + vision start/end
    assert max_prompt_tokens(DataConfig(max_frames=8, max_pixels_per_frame=128 * 28 * 28)) < max_prompt_tokens(data)


def test_max_model_len_below_the_longest_prompt_plus_completion_is_refused():
    base = ["rollout.engine=vllm", "data.max_frames=16", "data.max_pixels_per_frame=100352",
            "rollout.max_new_tokens=768"]
    need = max_prompt_tokens(DataConfig(max_frames=16, max_pixels_per_frame=100352)) + 768
    with pytest.raises(ConfigError, match=rf"rollout.vllm.max_model_len \(2048\).*at least {need}"):
        load_config(None, [*base, "rollout.vllm.max_model_len=2048"])
    assert load_config(None, [*base, f"rollout.vllm.max_model_len={need}"]).rollout.vllm.max_model_len == need
    # The HF engine has no max_model_len: the same data settings load.
    load_config(None, [*base[1:], "rollout.vllm.max_model_len=2048"])


def test_batched_tokens_below_max_model_len_is_refused():
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm.max_num_batched_tokens=1024"])


def test_top_p_below_one_with_is_weights_is_refused_where_vllm_renormalises():
    vllm = ["rollout.engine=vllm", "rollout.top_p=0.95"]
    with pytest.raises(ConfigError, match="rollout.top_p 0.95 with rollout.temperature 0.7.*use_is_weights"):
        load_config(None, [*vllm, "rollout.temperature=0.7"])
    # Raw log-probs at T = 1 (and greedy) are the learner's distribution; without IS weights they are unused.
    load_config(None, [*vllm, "rollout.temperature=1.0"])
    load_config(None, [*vllm, "rollout.temperature=0.0"])
    load_config(None, [*vllm, "rollout.temperature=0.7", "learner.use_is_weights=false"])
    # The HF engine reports unprocessed log-probs at any T.
    load_config(None, ["rollout.top_p=0.95", "rollout.temperature=0.7"])


def test_shipped_configs_load():
    for name in ("qwen2_5_vl_7b.yaml", "demo.yaml"):
        load_config(REPO / "configs" / name)
