"""Video pipeline + prompt builder with the embedded model's real Qwen2.5-VL processor."""

from __future__ import annotations

import re

import decord
import pytest
import torch

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.video import (
    MediaError,
    VideoCache,
    prepare_prompt,
    prepare_sft_example,
    resized_size,
)

CFG = DataConfig()


def _records(datasets, level):
    return read_records(datasets[level] / "train.jsonl")[0]


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_image_tokens_frames_labels_and_pixels_agree(datasets, processor, level):
    tok = processor.tokenizer
    merge = processor.image_processor.merge_size
    for r in _records(datasets, level)[:4]:
        pp = prepare_prompt(r, processor, CFG, datasets[level])
        mi = pp.model_inputs
        ids = mi["input_ids"][0]
        grid = mi["image_grid_thw"]
        n = len(pp.frame_times)
        assert grid.shape == (n, 3)
        # one <|vision_start|> per frame, and the processor's pads match the grid exactly
        assert int((ids == tok.convert_tokens_to_ids("<|vision_start|>")).sum()) == n
        assert int((ids == processor.image_token_id).sum()) == int(grid.prod(-1).sum()) // merge**2
        assert mi["pixel_values"].shape[0] == int(grid.prod(-1).sum())
        assert mi["attention_mask"].shape == mi["input_ids"].shape
        if "mm_token_type_ids" in mi:
            assert int(mi["mm_token_type_ids"].sum()) == int((ids == processor.image_token_id).sum())
        # labels in the text = the frame times, in order, `Frame k at t s:`
        labels = re.findall(r"Frame (\d+) at ([0-9.]+)s: <\|vision_start\|>", pp.prompt_text)
        assert [(int(k), float(t)) for k, t in labels] == [(k + 1, t) for k, t in enumerate(pp.frame_times)]
        w, h = pp.frame_size
        assert (w, h) == tuple(int(x) * 14 for x in grid[0, [2, 1]])
        if level == "easy":
            assert pp.frame_size == (112, 112) and mi["input_ids"].shape[1] <= 400


def test_labelled_times_equal_decoders_frame_times(datasets, processor):
    """The label of frame k is decord's own presentation time of the sampled frame (0.1 s)."""
    for level in ("easy", "hard"):
        for r in [x for x in _records(datasets, level) if x.video_path][:3]:
            pp = prepare_prompt(r, processor, CFG, datasets[level])
            vr = decord.VideoReader(str(datasets[level] / r.video_path), num_threads=1)
            n, fps = len(vr), vr.get_avg_fps()
            from stgrl.rollout.video import sample_frame_indices

            idx = sample_frame_indices(n, fps, CFG.fps, CFG.min_frames, CFG.max_frames)
            pts = vr.get_frame_timestamp(idx)[:, 0]
            assert pp.frame_times == [round(float(t), 1) for t in pts]
            for kf in r.key_frames:
                assert kf.time in pp.frame_times


def test_resized_size_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for w, h in [(112, 112), (168, 112), (224, 168), (640, 480), (1920, 1080), (30, 500), (57, 29)]:
        hh, ww = smart_resize(h, w, 28, CFG.min_pixels_per_frame, CFG.max_pixels_per_frame)
        assert resized_size(w, h, CFG) == (ww, hh)
    from stgrl.rollout.data.scene import DIFFICULTIES

    for d in DIFFICULTIES.values():  # generated frames are kept as they are: resized px = native px
        assert resized_size(d.width, d.height, CFG) == (d.width, d.height)
        assert d.grid == 0 or (d.width % d.grid == 0 and d.height % d.grid == 0)


def test_cache_decodes_once_and_prompt_is_reproducible(datasets, processor):
    r = next(x for x in _records(datasets, "medium") if x.video_path)
    cache = VideoCache(capacity=4)
    a = prepare_prompt(r, processor, CFG, datasets["medium"], cache)
    b = prepare_prompt(r, processor, CFG, datasets["medium"], cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert a.content_hash == b.content_hash
    for k in a.model_inputs:
        assert torch.equal(a.model_inputs[k], b.model_inputs[k])
    fewer = DataConfig(max_frames=5)
    c = prepare_prompt(r, processor, fewer, datasets["medium"], cache)
    assert cache.misses == 2 and len(c.frame_times) == 5 and c.content_hash != a.content_hash


def test_spatial_prompt_is_one_still_at_time_zero(datasets, processor):
    r = next(x for x in _records(datasets, "easy") if x.task == "spatial")
    pp = prepare_prompt(r, processor, CFG, datasets["easy"])
    assert pp.frame_times == [0.0] and pp.model_inputs["image_grid_thw"].shape == (1, 3)
    assert "Frame 1 at 0.0s:" in pp.prompt_text and "Frame 2" not in pp.prompt_text


def test_sft_example_masks_prompt_and_ends_with_end_of_turn(datasets, processor):
    tok = processor.tokenizer
    for r in _records(datasets, "easy")[:4]:
        pp = prepare_prompt(r, processor, CFG, datasets["easy"])
        ex = prepare_sft_example(r, processor, CFG, datasets["easy"])
        p = pp.model_inputs["input_ids"].shape[1]
        assert torch.equal(ex["input_ids"][:, :p], pp.model_inputs["input_ids"])
        assert (ex["labels"][:, :p] == -100).all() and (ex["labels"][:, p:] != -100).all()
        assert torch.equal(ex["labels"][:, p:], ex["input_ids"][:, p:])
        target = tok.decode(ex["input_ids"][0, p:])
        assert target.startswith("<think>") and target.endswith("</answer><|im_end|>")
        assert int(ex["input_ids"][0, -1]) == tok.convert_tokens_to_ids("<|im_end|>")  # one special token
        assert r.reasoning in target
        assert ex["attention_mask"].shape == ex["input_ids"].shape == ex["labels"].shape
        if "mm_token_type_ids" in ex:
            assert ex["mm_token_type_ids"].shape == ex["input_ids"].shape
            assert int(ex["mm_token_type_ids"][0, p:].sum()) == 0


def test_missing_and_corrupt_media_raise_media_error(datasets, processor, tmp_path):
    r = next(x for x in _records(datasets, "easy") if x.video_path)
    with pytest.raises(MediaError, match="not found"):
        prepare_prompt(r, processor, CFG, tmp_path)
    (tmp_path / "videos").mkdir()
    (tmp_path / r.video_path).write_bytes(b"not a video at all" * 50)
    with pytest.raises(MediaError, match="cannot decode"):
        prepare_prompt(r, processor, CFG, tmp_path)
