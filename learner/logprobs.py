"""Teacher-forced per-token log-probs of completions: the one computation both the learner and the
rollout parity tests use (docs/conventions.md).

Convention for behaviour and learner log-probs alike: ``log_softmax(logits / temperature)`` at the
sampled token — the model's raw logits divided by the sampling temperature, *before* any top-p /
top-k truncation. The rollout engine reports the same quantity, so ``old - behaviour`` only measures
staleness and engine numerics.

Model inputs follow the per-frame-image layout: ``input_ids``/``attention_mask`` ``[1, P]``,
``pixel_values`` ``[sum_patches, D]``, ``image_grid_thw`` ``[n_images, 3]`` and optionally
``mm_token_type_ids`` ``[1, P]``. A group of ``G`` completions is re-forwarded as a batch of ``G``
rows: text tensors are repeated, pixel tensors concatenated ``G`` times (the model consumes images in
row order), grids repeated, ``mm_token_type_ids`` extended with zeros over the completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Tensors whose first dim counts images/videos (or their patches) rather than batch rows: repeated
# as whole blocks once per completion so row r's images come r-th in model order.
_PER_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                   "second_per_grid_ts")
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def _prompt_len(model_inputs: dict[str, Tensor]) -> int:
    ids = model_inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"model_inputs must hold ONE prompt (input_ids [1, P]), got {tuple(ids.shape)}")
    return int(ids.shape[1])


def build_group_batch(
    groups: Sequence[tuple[dict[str, Tensor], Sequence[Sequence[int]]]],
    pad_id: int,
    expand_images: bool = True,
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """Right-padded batch for several prompts, each with its completions.

    Returns ``(inputs, targets [R, T], mask [R, T], starts [R])``: ``inputs`` is the model's keyword
    arguments for ``R = sum_g G_g`` rows (plus ``_row_group``: each row's group index, removed before
    the forward); row ``r`` holds prompt ``P_r`` tokens then its completion;
    ``targets`` the completion ids (``pad_id`` past the end), ``mask`` 1 on real completion tokens
    and ``starts[r] = P_r``. ``expand_images=False`` leaves the per-image tensors out (the caller
    encodes each prompt's images once, :func:`_encode_images_once`): a group's pixels are then never
    copied G times, nor sent to the device G times.
    """
    rows_ids: list[Tensor] = []
    row_group: list[int] = []
    rows_attn: list[Tensor] = []
    rows_mm: list[Tensor] = []
    per_image: dict[str, list[Tensor]] = {}
    starts: list[int] = []
    comps: list[Sequence[int]] = []
    has_mm = any("mm_token_type_ids" in mi for mi, _ in groups)
    for gi, (model_inputs, completion_ids) in enumerate(groups):
        p = _prompt_len(model_inputs)
        ids = model_inputs["input_ids"][0]
        attn = model_inputs.get("attention_mask", torch.ones_like(model_inputs["input_ids"]))[0]
        mm = model_inputs.get("mm_token_type_ids", torch.zeros_like(model_inputs["input_ids"]))[0]
        for comp in completion_ids:
            c = torch.as_tensor(list(comp), dtype=ids.dtype)
            rows_ids.append(torch.cat([ids, c]))
            rows_attn.append(torch.cat([attn, torch.ones(len(c), dtype=attn.dtype)]))
            rows_mm.append(torch.cat([mm, torch.zeros(len(c), dtype=mm.dtype)]))
            starts.append(p)
            comps.append(comp)
            row_group.append(gi)
            for key in _PER_IMAGE_KEYS:
                if key in model_inputs and (expand_images or key != "pixel_values"):
                    per_image.setdefault(key, []).append(model_inputs[key])
        unknown = set(model_inputs) - set(_PER_IMAGE_KEYS) - set(_PER_TOKEN_KEYS)
        if unknown:
            raise ValueError(f"model_inputs has keys this re-forward does not know how to expand: {sorted(unknown)}")
    if not rows_ids:
        raise ValueError("no completions to score")
    length = max(len(r) for r in rows_ids)
    t_max = max(1, max(len(c) for c in comps))
    n = len(rows_ids)
    input_ids = torch.full((n, length), pad_id, dtype=rows_ids[0].dtype)
    attention = torch.zeros((n, length), dtype=rows_attn[0].dtype)
    mm_ids = torch.zeros((n, length), dtype=rows_mm[0].dtype)
    targets = torch.full((n, t_max), pad_id, dtype=torch.long)
    mask = torch.zeros((n, t_max), dtype=torch.bool)
    for r in range(n):
        k = len(rows_ids[r])
        input_ids[r, :k] = rows_ids[r]
        attention[r, :k] = rows_attn[r]
        mm_ids[r, :k] = rows_mm[r]
        c = len(comps[r])
        targets[r, :c] = torch.as_tensor(list(comps[r]), dtype=torch.long)
        mask[r, :c] = True
    inputs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": attention}
    if has_mm:
        inputs["mm_token_type_ids"] = mm_ids
    for key, blocks in per_image.items():
        inputs[key] = torch.cat(blocks, dim=0)
    inputs["_row_group"] = torch.as_tensor(row_group, dtype=torch.long)
    return inputs, targets, mask, torch.as_tensor(starts, dtype=torch.long)


def can_encode_images_once(model, groups) -> bool:
    """Images (no videos) and a model that encodes them on their own (``get_image_features``)."""
    return (any("pixel_values" in mi for mi, _ in groups) and not any("pixel_values_videos" in mi for mi, _ in groups)
            and hasattr(model, "get_image_features"))


def _encode_images_once(model, inputs: dict[str, Tensor], groups) -> dict[str, Any]:
    """Run the vision tower once per prompt instead of once per completion row.

    Every completion of a group shares its prompt's frames, so the ``G`` repeated pixel blocks are
    replaced by ``G`` references to one set of image features (``mm_encoder_outputs``); autograd sums
    the ``G`` gradients into the vision tower, exactly as the repeated forward would. Text-only
    models, videos and models without ``get_image_features`` keep the plain expanded path.
    """
    if groups is None or not can_encode_images_once(model, groups):
        return inputs
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    device = inputs["input_ids"].device
    with_images = [mi for mi, _ in groups if "pixel_values" in mi]
    pixels = torch.cat([mi["pixel_values"] for mi in with_images]).to(device)
    grids = torch.cat([mi["image_grid_thw"] for mi in with_images]).to(device)
    feats = model.get_image_features(pixels, grids, return_dict=True).pooler_output  # one tensor per image
    per_group: list[tuple[Tensor, ...]] = []
    offset = 0
    for mi, _ in groups:
        n = int(mi["image_grid_thw"].shape[0]) if "pixel_values" in mi else 0
        per_group.append(tuple(feats[offset:offset + n]))
        offset += n
    rows = [f for g in inputs["_row_group"].tolist() for f in per_group[g]]
    out = {k: v for k, v in inputs.items() if k != "pixel_values"}
    out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(rows))}
    return out


def _forward_logprobs(model, inputs: dict[str, Tensor], targets: Tensor, mask: Tensor, starts: Tensor,
                      temperature: float, groups=None) -> Tensor:
    """Forward once and gather ``log_softmax(logits / T)`` at each completion token -> ``[R, T]``."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for log-probs (greedy decoding has no density)")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs = _encode_images_once(model, inputs, groups)
    inputs.pop("_row_group")
    length = inputs["input_ids"].shape[1]
    t_max = targets.shape[1]
    first = int(starts.min()) - 1  # logits at position p predict token p + 1
    if first < 0:
        raise ValueError("a prompt must have at least one token")
    keep = length - first
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits  # [R, keep, V] for positions first .. length - 1
    # row r, token t is predicted at position starts[r] - 1 + t -> kept index starts[r] - 1 - first + t
    idx = (starts.to(device) - 1 - first).unsqueeze(1) + torch.arange(t_max, device=device).unsqueeze(0)
    idx = idx.clamp(max=keep - 1)
    picked = torch.gather(logits, 1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    logp_all = torch.log_softmax(picked.float() / temperature, dim=-1)
    logp = torch.gather(logp_all, 2, targets.to(device).unsqueeze(-1)).squeeze(-1)
    return logp * mask.to(device)


def completion_logprobs(
    model,
    model_inputs: dict[str, Tensor],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of each completion given ONE prompt's model inputs.

    Returns ``(logprobs [B, T] float32, mask [B, T] bool)`` with ``B = len(completion_ids)``, ``T``
    the longest completion; padded positions are 0 in ``logprobs`` and False in ``mask``. Gradients
    flow when called outside ``torch.no_grad``. Log-prob convention: see the module docstring.
    """
    return batched_completion_logprobs(model, [(model_inputs, completion_ids)], pad_id, temperature)


def batched_completion_logprobs(
    model,
    groups: Sequence[tuple[dict[str, Tensor], Sequence[Sequence[int]]]],
    pad_id: int,
    temperature: float = 1.0,
    encode_images_once: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`completion_logprobs` over several prompts in one right-padded forward.

    Rows come group by group in order: ``[R = sum_g len(completions_g), T]``. With
    ``encode_images_once`` the vision tower runs once per prompt (not once per completion).
    """
    once = encode_images_once and can_encode_images_once(model, groups)
    inputs, targets, mask, starts = build_group_batch(groups, pad_id, expand_images=not once)
    if not once:
        groups = None
    logp = _forward_logprobs(model, inputs, targets, mask, starts, temperature, groups)
    return logp, mask.to(logp.device)
