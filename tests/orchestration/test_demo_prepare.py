"""The demo's first step: model (build + base pretraining) and data (synthesis) made side by side,
reused on the next run, and a user's own checkpoint never touched."""

from __future__ import annotations

import json

from stgrl.orchestration.config import config_from_dict
from stgrl.orchestration.demo import prepare_model_and_data
from stgrl.rollout.base_pretrain import is_pretrained


def _cfg(root, model):
    return config_from_dict({
        "model": {"path": str(model), "pretrain_vision_steps": 3, "pretrain_caption_steps": 2},
        "data": {"train": str(root / "d" / "train.jsonl"), "eval": str(root / "d" / "eval.jsonl"),
                 "synth_train": 8, "synth_eval": 4},
    })


def test_model_and_data_are_made_once_then_reused(tmp_path):
    model = tmp_path / "m"
    cfg = _cfg(tmp_path, model)
    prepare_model_and_data(cfg)
    assert is_pretrained(model)
    meta = json.loads((model / "stgrl_tiny_model.json").read_text())
    assert meta["base_pretrain"]["spec"]["vision"]["steps"] == 3
    assert meta["base_pretrain"]["spec"]["captions"]["steps"] == 2
    assert len((tmp_path / "d" / "train.jsonl").read_text().splitlines()) == 8
    stamps = {p: p.stat().st_mtime_ns for p in [model / "model.safetensors", tmp_path / "d" / "train.jsonl"]}
    prepare_model_and_data(cfg)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_users_own_checkpoint_is_never_pretrained(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.json").write_text("{}")
    cfg = _cfg(tmp_path, own)
    prepare_model_and_data(cfg)
    assert sorted(p.name for p in own.iterdir()) == ["config.json"]
