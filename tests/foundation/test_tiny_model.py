"""The embedded tiny model: deterministic build, HF round-trip, generation from a real decoded mp4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stgrl.rollout.tiny_model import GRAMMAR_TOKENS, SPECIAL_TOKENS, build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


def _state(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


def test_same_seed_identical_weights_and_tokenizer(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    a, b = _state(tiny_dir), _state(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    other = _state(build_tiny_model(tmp_path / "other", seed=1))
    assert any(not torch.equal(a[k], other[k]) for k in a), "a different seed must give different weights"


def test_loads_like_a_hub_checkpoint(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    tok = proc.tokenizer
    assert model.config.text_config.vocab_size == len(tok)
    for t in SPECIAL_TOKENS + GRAMMAR_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, f"{t} must be a single token, got {ids}"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    assert head_dim >= 32
    n = sum(p.numel() for p in model.parameters())
    assert 5e5 < n < 2e7
    claim = "<obj>red circle</obj><box>[28,56,84,112]</box>at<t>1.5</t>s"
    assert tok.decode(tok.encode(claim, add_special_tokens=False)) == claim


def _write_mp4(path, n=8, size=112, fps=4):
    import imageio.v2 as imageio

    frames = []
    for i in range(n):
        f = np.zeros((size, size, 3), dtype=np.uint8)
        x = 8 + i * 8
        f[30:58, x : x + 28] = (230, 30, 30)
        frames.append(f)
    imageio.mimwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1, quality=9)


def test_generates_from_real_decoded_mp4(tiny_dir, tmp_path):
    import decord
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    mp4 = tmp_path / "clip.mp4"
    _write_mp4(mp4)
    vr = decord.VideoReader(str(mp4))
    idx = [0, 2, 4, 6]
    frames = vr.get_batch(idx).asnumpy()
    assert frames.shape == (4, 112, 112, 3)
    assert frames[0, 44, 20, 0] > 150 and frames[0, 44, 20, 2] < 100  # the red square survived encoding
    proc = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    content = []
    for k, i in enumerate(idx):
        content += [{"type": "text", "text": f"Frame {k} at {i / vr.get_avg_fps():.1f}s: "}, {"type": "image"}]
    content.append({"type": "text", "text": "Where is the red square?"})
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=list(frames), return_tensors="pt")
    n_img_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_img_tokens == int(inputs["image_grid_thw"].prod(-1).sum()) // 4
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=True)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 12
    # video input works too (the processor's video path)
    vtext = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    vin = proc(text=[vtext], videos=[frames], videos_kwargs={"do_sample_frames": False}, return_tensors="pt")
    out = model.generate(**vin, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > vin["input_ids"].shape[1]
