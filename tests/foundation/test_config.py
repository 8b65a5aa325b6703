"""Config errors name the key and the allowed values; YAML + CLI overrides; shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgrl.orchestration.config import Config, ConfigError, config_to_yaml, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides():
    cfg = load_config(None, ["learner.lr=1e-4", "rollout.num_workers=3", "run.mode=sync", "run.max_staleness=0"])
    assert isinstance(cfg, Config)
    assert cfg.learner.lr == 1e-4 and cfg.rollout.num_workers == 3 and cfg.run.mode == "sync"


def test_unknown_key_named_with_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'learner\.lrr'.*allowed keys here: .*\blr\b"):
        load_config(None, ["learner.lrr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"'rollout\.num_workers': must be an integer"):
        load_config(None, ["rollout.num_workers=many"])


def test_out_of_range_names_key_and_bounds():
    with pytest.raises(ConfigError, match=r"'rollout\.top_p'.*<= 1\.0"):
        load_config(None, ["rollout.top_p=1.5"])


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"'reward\.proximity_scope'.*one of 'claims', 'all'"):
        load_config(None, ["reward.proximity_scope=some"])


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="min_frames"):
        load_config(None, ["data.min_frames=20", "data.max_frames=8"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  zero_stage: 4\n")
    with pytest.raises(ConfigError, match=r"'learner\.zero_stage'.*one of 2, 3"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "qwen2_5_vl_7b.yaml"])
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(REPO / "configs" / name)
    out = tmp_path / "c.yaml"
    out.write_text(config_to_yaml(cfg))
    assert load_config(out) == cfg


def test_reference_config_values():
    cfg = load_config(REPO / "configs" / "qwen2_5_vl_7b.yaml")
    assert cfg.rollout.group_size == 4 and cfg.learner.lr == 1e-6 and cfg.learner.zero_stage == 3
    assert cfg.rollout.max_new_tokens == 768 and cfg.rollout.top_p == 0.95 and cfg.rollout.temperature == 1.0
    assert cfg.data.fps == 2.0 and (cfg.data.min_frames, cfg.data.max_frames) == (4, 16)
    assert cfg.data.max_pixels_per_frame == 128 * 28 * 28


def test_cli_help_lists_every_subcommand_with_description():
    from stgrl.orchestration.cli import COMMANDS, build_parser

    text = build_parser().format_help()
    for name in COMMANDS:
        assert name.replace("_", "-") in text
    assert "init-model" in text and "config" in text


def test_cli_config_error_fails_before_work(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lr: -1\n")
    r = subprocess.run([sys.executable, "-m", "stgrl", "config", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "learner.lr" in (r.stdout + r.stderr)
    ok = subprocess.run([sys.executable, "-m", "stgrl", "config", "--config", str(REPO / "configs" / "demo.yaml"),
                         "learner.lr=0.01"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "lr: 0.01" in ok.stdout
