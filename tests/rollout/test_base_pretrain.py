"""Base pretraining of the embedded model (stgrl.rollout.base_pretrain): the shaded floor, the
pretraining frames and captions are right, the vision phase trains only the vision tower and makes
its tokens carry colour and cell, and the whole thing is deterministic."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from stgrl.reward_service.parser import parse_completion
from stgrl.rollout.base_pretrain import (
    CELL,
    BasePretrainSpec,
    CaptionPretrainSpec,
    VisionPretrainSpec,
    caption_examples,
    draw_frame,
    is_pretrained,
    pretrain_model_dir,
    pretrain_vision,
    swap_pixels,
)
from stgrl.rollout.data.render import FLOOR_BASE, FLOOR_STEP, floor_image
from stgrl.rollout.data.scene import COLOURS, SHAPES


def test_cells_floor_shades_each_cell_by_column_and_row():
    img = np.asarray(floor_image(112, 112, (0, 0, 0), "cells", 28))
    for cx, cy in [(0, 0), (3, 1), (2, 3)]:
        want = (FLOOR_BASE + FLOOR_STEP * cx, FLOOR_BASE + FLOOR_STEP * cy, FLOOR_BASE)
        assert tuple(img[cy * 28 + 13, cx * 28 + 13]) == want
        assert tuple(img[cy * 28, cx * 28]) == want and tuple(img[cy * 28 + 27, cx * 28 + 27]) == want
    plain = np.asarray(floor_image(56, 28, (30, 30, 30), "plain", 28))
    assert plain.shape == (28, 56, 3) and (plain == 30).all()
    with pytest.raises(ValueError, match="unknown floor"):
        floor_image(28, 28, (0, 0, 0), "stripes", 28)


def test_pretraining_frame_labels_match_the_pixels():
    spec = VisionPretrainSpec()
    rng = random.Random(3)
    seen = 0
    for _ in range(20):
        frame, labels = draw_frame(rng, spec)
        assert frame.shape == (4 * CELL, 4 * CELL, 3)
        for cell, (ci, si) in enumerate(zip(labels.colour, labels.shape)):
            cx, cy = cell % 4, cell // 4
            centre = tuple(int(v) for v in frame[cy * CELL + 14, cx * CELL + 14])
            if ci == len(COLOURS):
                assert si == len(SHAPES)
                assert centre == (FLOOR_BASE + FLOOR_STEP * cx, FLOOR_BASE + FLOOR_STEP * cy, FLOOR_BASE)
            else:
                seen += 1
                assert centre == COLOURS[list(COLOURS)[ci]]
                # inset: the cell's corner still shows the floor around the object
                corner = tuple(int(v) for v in frame[cy * CELL + 1, cx * CELL + 1])
                assert corner == (FLOOR_BASE + FLOOR_STEP * cx, FLOOR_BASE + FLOOR_STEP * cy, FLOOR_BASE)
    assert seen > 10


def test_caption_targets_are_claims_of_every_visible_object(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    spec = CaptionPretrainSpec(pool_size=8)
    examples = caption_examples(processor, spec, 6, "test")
    assert len(examples) == 6
    for ex in examples:
        labels = ex["labels"][0]
        target_ids = labels[labels != -100].tolist()
        assert target_ids == ex["input_ids"][0, -len(target_ids):].tolist()  # labels only on the target
        text = processor.tokenizer.decode(target_ids)
        claims = parse_completion(text).claims
        assert claims, text
        for c in claims:
            colour, shape = c.name.split()
            assert colour in COLOURS and shape in SHAPES
            (x1, y1, x2, y2), = c.boxes
            assert x2 - x1 == 20 and y2 - y1 == 20 and (x1 - 4) % CELL == 0 and (y1 - 4) % CELL == 0
        # one frame per example, all claims at that frame's time
        assert len({c.time for c in claims}) == 1
    swapped = swap_pixels(examples)
    assert torch.equal(swapped[0]["pixel_values"], examples[1]["pixel_values"])
    assert torch.equal(swapped[0]["input_ids"], examples[0]["input_ids"])


def test_vision_phase_trains_only_the_tower_and_its_tokens_learn_colour(tiny_vl_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    result = pretrain_vision(model, processor, VisionPretrainSpec(steps=60, batch_size=16, pool_size=256))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".visual." in n for n in changed), sorted(changed)[:5]
    # chance is 1/9 for colour (8 colours + none) and 1/4 for a column; colour is learnt first
    assert result["probe_colour"] > 0.9, result


def test_pretrain_model_dir_is_deterministic_and_marks_the_model(tiny_vl_dir, tmp_path):
    spec = BasePretrainSpec(vision=VisionPretrainSpec(steps=4, batch_size=4, pool_size=16),
                            captions=CaptionPretrainSpec(steps=3, batch_size=2, pool_size=8))
    dirs = []
    for name in ("a", "b"):
        d = tmp_path / name
        shutil.copytree(tiny_vl_dir, d)
        assert not is_pretrained(d)
        out = pretrain_model_dir(d, spec)
        assert is_pretrained(d) and set(out["results"]) == {"vision", "captions"}
        dirs.append(d)
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "model.safetensors")) for d in dirs)
    orig = load_file(str(tiny_vl_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], orig[k]) for k in a)
