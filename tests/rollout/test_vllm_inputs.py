"""What the vLLM engine hands vLLM, checked without vLLM: unexpanded prompt ids from the real
processor's output, and the learner's tensor names mapped onto the checkpoint's."""

from __future__ import annotations

import json

import pytest
import torch

from stgrl.rollout.vllm_inputs import (
    checkpoint_name,
    tokens_per_image,
    unexpanded_prompt_ids,
    with_tied_lm_head,
)


def test_unexpanded_ids_hold_one_placeholder_per_image(tiny_vl_dir, prepared_prompts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vl_dir)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    prepared = prepared_prompts[0]
    ids = prepared.model_inputs["input_ids"][0].tolist()
    grid = prepared.model_inputs["image_grid_thw"]
    per_image = tokens_per_image(grid, merge_size=2)
    out = unexpanded_prompt_ids(ids, pad, per_image)
    n_images = int(grid.shape[0])
    assert n_images >= 2 and all(n > 1 for n in per_image)
    assert out.count(pad) == n_images
    assert len(out) == len(ids) - sum(per_image) + n_images
    # Nothing but the placeholders changed: the text around them is the processor's.
    assert [t for t in out if t != pad] == [t for t in ids if t != pad]
    # The same prompt text, tokenized without expansion, is exactly these ids.
    text = tok.decode(out, skip_special_tokens=False)
    assert tok(text, add_special_tokens=False)["input_ids"] == out


def test_placeholder_runs_that_disagree_with_the_images_are_refused():
    pad = 9
    ids = [1, 2, pad, pad, pad, 3, pad, pad, 4]
    assert unexpanded_prompt_ids(ids, pad, [3, 2]) == [1, 2, pad, 3, pad, 4]
    with pytest.raises(ValueError, match=r"placeholder runs \[3, 2\].*need \[3, 3\]"):
        unexpanded_prompt_ids(ids, pad, [3, 3])
    with pytest.raises(ValueError, match="of 2.*of 1"):
        unexpanded_prompt_ids(ids, pad, [3])


def test_learner_names_map_onto_the_checkpoint(tiny_vl_dir):
    """Every tensor of the learner's state_dict (the in-memory naming) names a checkpoint tensor, and
    the tied lm_head is present: the set the vLLM engine validates against."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir, dtype=torch.float32)
    learner = model.state_dict()
    assert any(n.startswith("model.language_model.") for n in learner)
    assert any(n.startswith("model.visual.") for n in learner)
    with safe_open(str(tiny_vl_dir / "model.safetensors"), framework="pt") as f:
        on_disk = set(f.keys())
    tied = json.loads((tiny_vl_dir / "config.json").read_text())["tie_word_embeddings"]
    assert tied and "lm_head.weight" not in on_disk
    mapped = {checkpoint_name(n) for n in learner}
    assert mapped - {"lm_head.weight"} == on_disk
    assert {checkpoint_name(n) for n in on_disk} == on_disk  # checkpoint names map to themselves
    # Without lm_head from the learner, the input embeddings are sent as lm_head.
    pairs = [(n, t) for n, t in learner.items() if n != "lm_head.weight"]
    sent = dict(with_tied_lm_head(pairs, tied=True))
    assert sent["lm_head.weight"] is learner["model.language_model.embed_tokens.weight"]
    assert "lm_head.weight" not in dict(with_tied_lm_head(pairs, tied=False))
    assert with_tied_lm_head(list(learner.items()), tied=True) == list(learner.items())
