"""Cold-start SFT on the learner's DeepSpeed engine (docs/design.md §5): loss on target tokens only.

An example is a dict of tensors for ONE sequence (batch of 1): ``input_ids``, ``attention_mask``,
``labels`` (``-100`` on prompt and padding, the token id on target tokens
``<think>…</think>\\n<answer>…</answer><|im_end|>``), plus the prompt's pixel tensors. The data
pipeline prepares them (or :func:`make_sft_example` does, from a prompt's model inputs and the target
token ids); this module batches and trains.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stgrl.learner.config import LearnerConfig, SFTConfig
from stgrl.learner.engine import LearnerEngine

IGNORE = -100
_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def target_text(reasoning: str, answer: str) -> str:
    """The SFT target of docs/design.md §5 (the caller appends the end-of-turn token)."""
    return f"<think>{reasoning}</think>\n<answer>{answer}</answer>"


def make_sft_example(model_inputs: dict[str, Tensor], target_ids: Sequence[int]) -> dict[str, Tensor]:
    """Append ``target_ids`` to a prompt's model inputs and label only those tokens."""
    ids = model_inputs["input_ids"]
    tgt = torch.as_tensor(list(target_ids), dtype=ids.dtype).unsqueeze(0)
    ex = {k: v for k, v in model_inputs.items() if k in _IMAGE_KEYS}
    ex["input_ids"] = torch.cat([ids, tgt], dim=1)
    attn = model_inputs.get("attention_mask", torch.ones_like(ids))
    ex["attention_mask"] = torch.cat([attn, torch.ones_like(tgt, dtype=attn.dtype)], dim=1)
    if "mm_token_type_ids" in model_inputs:
        mm = model_inputs["mm_token_type_ids"]
        ex["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(tgt, dtype=mm.dtype)], dim=1)
    ex["labels"] = torch.cat([torch.full_like(ids, IGNORE), tgt.to(torch.long)], dim=1)
    return ex


def collate(examples: Sequence[dict[str, Tensor]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad single-sequence examples into one batch; pixel tensors are concatenated in row order."""
    n = len(examples)
    if n == 0:
        raise ValueError("empty SFT batch")
    length = max(int(e["input_ids"].shape[1]) for e in examples)
    has_mm = any("mm_token_type_ids" in e for e in examples)
    batch = {
        "input_ids": torch.full((n, length), pad_id, dtype=examples[0]["input_ids"].dtype),
        "attention_mask": torch.zeros((n, length), dtype=torch.long),
        "labels": torch.full((n, length), IGNORE, dtype=torch.long),
    }
    if has_mm:
        batch["mm_token_type_ids"] = torch.zeros((n, length), dtype=torch.long)
    for i, e in enumerate(examples):
        k = int(e["input_ids"].shape[1])
        batch["input_ids"][i, :k] = e["input_ids"][0]
        batch["attention_mask"][i, :k] = e.get("attention_mask", torch.ones_like(e["input_ids"]))[0]
        batch["labels"][i, :k] = e["labels"][0]
        if has_mm and "mm_token_type_ids" in e:
            batch["mm_token_type_ids"][i, :k] = e["mm_token_type_ids"][0]
    for key in _IMAGE_KEYS:
        blocks = [e[key] for e in examples if key in e]
        if blocks:
            batch[key] = torch.cat(blocks, dim=0)
    return batch


def sft_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Next-token cross-entropy averaged over target tokens only.

    ``logits`` ``[B, L, V]``, ``labels`` ``[B, L]`` (``-100`` = ignore). Position ``p`` predicts
    ``labels[p + 1]``. Returns ``(loss, {"sft_loss", "target_tokens", "token_accuracy"})``.
    """
    pred = logits[:, :-1].float()
    tgt = labels[:, 1:]
    keep = tgt != IGNORE
    n = int(keep.sum())
    if n == 0:
        raise ValueError("SFT batch has no target tokens (labels are all -100)")
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE,
                           reduction="sum") / n
    with torch.no_grad():
        acc = float((pred.argmax(-1)[keep] == tgt[keep]).float().mean())
    return loss, {"sft_loss": float(loss.detach()), "target_tokens": float(n), "token_accuracy": acc}


def _forward_loss(engine: LearnerEngine, examples: Sequence[dict[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
    batch = collate(examples, engine.pad_id)
    device = next(engine.module.parameters()).device
    labels = batch.pop("labels").to(device)
    out = engine.module(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    loss, metrics = sft_loss(out.logits, labels)
    metrics["tokens"] = float(batch["attention_mask"].sum())
    return loss, metrics


def sft_step(engine: LearnerEngine, examples: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """One optimizer step on a rank's shard of an SFT batch (train mode: dropout on)."""
    engine.module.train()
    t0 = time.perf_counter()
    loss, metrics = _forward_loss(engine, examples)
    metrics["time_forward_s"] = time.perf_counter() - t0
    metrics |= engine.backward_step(loss)
    return metrics


def sft_eval_loss(engine: LearnerEngine, examples: Sequence[dict[str, Tensor]]) -> tuple[float, float]:
    """Held-out target-token loss (eval mode, no grad): ``(summed NLL, target tokens)`` so that ranks
    and chunks combine into an exact token mean."""
    engine.module.eval()
    with torch.no_grad():
        loss, metrics = _forward_loss(engine, examples)
    return float(loss) * metrics["target_tokens"], metrics["target_tokens"]


def learner_config_for_sft(sft: SFTConfig, base: LearnerConfig | None = None) -> LearnerConfig:
    """The engine config for the SFT stage: the learner's ZeRO/precision/clip, SFT's lr and schedule."""
    import msgspec

    base = base or LearnerConfig()
    return msgspec.structs.replace(base, lr=sft.lr, warmup_steps=sft.warmup_steps, total_steps=sft.steps,
                                   num_ranks=sft.num_ranks)


def examples_from(obj: Any) -> list[dict[str, Tensor]]:
    """Accept an :class:`SFTBatch` or a plain list of example dicts."""
    return list(getattr(obj, "examples", obj))
