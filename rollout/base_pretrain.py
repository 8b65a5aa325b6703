"""Base-model pretraining of the embedded tiny model's vision tower: make it *see* before SFT.

Why this exists (docs/grounding.md): the recipe starts from a pretrained VLM whose vision tower
already encodes what and where things are. A randomly initialised tiny Qwen2.5-VL does not: its
merged image tokens are ~80 % one constant vector, and Qwen2.5-VL's vision tower has no absolute
position embedding (2-D RoPE only), so *where* a token sits can only be inferred from the frame's
borders. Measured: 300 SFT steps on the task data taught grammar and priors but no pixel use (the
swapped-video loss equalled the own-video loss).

This stage stands in for the base model's pretraining and knows nothing about the task data or its
questions: random frames of 0-3 shapes (every colour and shape the generator knows) in the cells of
the easy rung's shaded floor (`Difficulty.floor`), and a *dense* objective: every merged token predicts, through
linear probes that are thrown away afterwards, the colour and shape in its cell (or "none") and its
cell's column and row. That gives the vision tower a direct gradient per token instead of the weak one
that reaches it through the language model. Only the vision tower (patch embedding, blocks, merger) is
trained; the language model is untouched.

Pure torch on one thread, seeded: the same seed gives the same weights.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from msgspec import Struct, field

log = logging.getLogger(__name__)

CELL = 28
"""Merged-patch cell size of the embedded model (14 px patches, 2x2 merge)."""


class VisionPretrainSpec(Struct, frozen=True, kw_only=True):
    """How long and how hard to pretrain. The defaults reach 1.00 held-out probe accuracy for colour,
    shape, column and row in ~40 s on one core (docs/grounding.md)."""

    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    grid: int = 4
    """Frames are `grid` x `grid` cells of 28 px (4 -> 112 px, the easy rung's frame)."""
    max_objects: int = 3
    object_size: int = 20
    """Drawn inset in its 28 px cell, as the easy rung draws them."""
    floor: Literal["plain", "cells"] = "cells"
    """Background: "cells" (per-cell shades, the easy rung's floor) or "plain" (black)."""
    pool_size: int = 2048
    """Frames are drawn once into a pool of processed pixels and batches sampled from it (the image
    processor costs more than the tiny tower's forward)."""
    seed: int = 0


class FrameLabels(Struct, frozen=True):
    """Per-cell labels of one frame, row-major (the merged-token order of the Qwen2-VL processor)."""

    colour: list[int]
    shape: list[int]


def draw_frame(rng: random.Random, spec: VisionPretrainSpec) -> tuple[np.ndarray, FrameLabels]:
    """One random pretraining frame and its per-cell labels (index len(COLOURS)/len(SHAPES) = none),
    drawn by the data generator's own floor and shape code."""
    from PIL import ImageDraw

    from stgrl.rollout.data.render import draw_shape, floor_image
    from stgrl.rollout.data.scene import COLOURS, SHAPES

    colours, shapes, grid = list(COLOURS), list(SHAPES), spec.grid
    im = floor_image(grid * CELL, grid * CELL, (0, 0, 0), spec.floor, CELL)
    draw = ImageDraw.Draw(im)
    colour = [len(colours)] * grid * grid
    shape = [len(shapes)] * grid * grid
    inset = (CELL - spec.object_size) // 2
    for cell in rng.sample(range(grid * grid), rng.randint(0, spec.max_objects)):
        ci, si = rng.randrange(len(colours)), rng.randrange(len(shapes))
        x, y = (cell % grid) * CELL + inset, (cell // grid) * CELL + inset
        draw_shape(draw, shapes[si], colours[ci], (x, y, x + spec.object_size, y + spec.object_size))
        colour[cell], shape[cell] = ci, si
    return np.asarray(im), FrameLabels(colour=colour, shape=shape)


def _vision_features(visual, pixel_values, grid_thw):
    out = visual(pixel_values, grid_thw=grid_thw)
    feats = getattr(out, "pooler_output", None)
    return feats if feats is not None else getattr(out, "last_hidden_state", out)


def pretrain_vision(model, processor, spec: VisionPretrainSpec,
                    progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train `model`'s vision tower in place with the dense probe objective; returns held-out probe
    accuracies (`colour`, `shape`, `column`, `row`) and the time taken."""
    import torch
    import torch.nn.functional as F

    from stgrl.rollout.data.scene import COLOURS, SHAPES

    t0 = time.perf_counter()
    visual = model.model.visual
    dim = visual.config.out_hidden_size
    cells = spec.grid * spec.grid
    heads = torch.nn.ModuleDict({
        "colour": torch.nn.Linear(dim, len(COLOURS) + 1), "shape": torch.nn.Linear(dim, len(SHAPES) + 1),
        "column": torch.nn.Linear(dim, spec.grid), "row": torch.nn.Linear(dim, spec.grid),
    })
    column = torch.arange(cells) % spec.grid
    row = torch.arange(cells) // spec.grid

    def pool(n: int, rng: random.Random):
        frames, labels = zip(*(draw_frame(rng, spec) for _ in range(n)))
        px = processor.image_processor(images=list(frames), return_tensors="pt")
        per = px["pixel_values"].shape[0] // n
        targets = {"colour": torch.tensor([lab.colour for lab in labels]),
                   "shape": torch.tensor([lab.shape for lab in labels])}
        return px["pixel_values"].view(n, per, -1), px["image_grid_thw"][0], targets

    rng = random.Random(f"stgrl-vision-pretrain:{spec.seed}")
    train_px, grid_thw, train_t = pool(spec.pool_size, rng)
    eval_px, _, eval_t = pool(128, random.Random(f"stgrl-vision-pretrain-eval:{spec.seed}"))

    def loss_and_acc(px, targets, idx):
        n = len(idx)
        feats = _vision_features(visual, px[idx].reshape(-1, px.shape[-1]), grid_thw.repeat(n, 1))
        want = {"colour": targets["colour"][idx].reshape(-1), "shape": targets["shape"][idx].reshape(-1),
                "column": column.repeat(n), "row": row.repeat(n)}
        losses = {k: F.cross_entropy(heads[k](feats), want[k]) for k in heads}
        acc = {k: float((heads[k](feats).argmax(-1) == want[k]).float().mean()) for k in heads}
        return sum(losses.values()), acc

    params = list(visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    visual.train()
    for step in range(spec.steps):
        idx = torch.tensor(rng.sample(range(spec.pool_size), spec.batch_size))
        loss, acc = loss_and_acc(train_px, train_t, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, {"loss": float(loss.detach()), **acc})
    visual.eval()
    with torch.no_grad():
        _, acc = loss_and_acc(eval_px, eval_t, torch.arange(eval_px.shape[0]))
    result = {f"probe_{k}": v for k, v in acc.items()} | {"seconds": time.perf_counter() - t0}
    log.info("vision pretraining: %d steps in %.0f s, held-out probe accuracy %s", spec.steps,
             result["seconds"], {k: round(v, 3) for k, v in acc.items()})
    return result


class CaptionPretrainSpec(Struct, frozen=True, kw_only=True):
    """Grounded captioning, the second half of the base pretraining: one frame in, every object out
    as a claim `<obj>name</obj><box>[..]</box>at<t>T</t>s` in reading order, inside `<think>`. It trains the language
    model to *read* the image tokens (find the objects, copy their colour, shape and cell into
    names and digits), which SFT on the task data alone did not start within the demo's budget
    (docs/grounding.md). Frames come from the synthetic generator's scene simulator at
    `difficulty`, on an RNG stream of their own (no task record, question or eval frame is used)."""

    steps: int = 800
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    pool_size: int = 3000
    difficulty: Literal["easy", "medium", "hard"] = "easy"
    seed: int = 0


CAPTION_QUESTION = "List every object you see."


def caption_examples(processor, spec: CaptionPretrainSpec, n: int, stream: str) -> list[dict]:
    """`n` single-frame caption examples (prompt + target tensors, labels on the target only)."""
    from stgrl.learner.sft import make_sft_example
    from stgrl.rollout.data.render import render_frame
    from stgrl.rollout.data.scene import DIFFICULTIES, simulate
    from stgrl.rollout.prompts import SYSTEM_PROMPT, claim
    from stgrl.rollout.video import END_OF_TURN

    d = DIFFICULTIES[spec.difficulty]
    rng = random.Random(f"stgrl-caption-pretrain:{spec.seed}:{stream}")
    out = []
    while len(out) < n:
        scene = simulate(rng, d, lambda frames, fps: list(range(frames)))
        k = rng.randrange(scene.num_frames)
        t = k / scene.native_fps
        seen = sorted((o.boxes[k][1], o.boxes[k][0], o.name, o.boxes[k]) for o in scene.visible_at(k))
        # inside <think>, where the task grammar puts evidence (and where the reward parser reads it)
        target = "<think>" + "".join(claim(name, [box], t) for _, _, name, box in seen) + "</think>" + END_OF_TURN
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": f"Frame 1 at {t:.1f}s: "}, {"type": "image"},
                                         {"type": "text", "text": "\n" + CAPTION_QUESTION}]},
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[render_frame(scene, k)], return_tensors="pt")
        model_inputs = {key: v for key, v in inputs.items() if hasattr(v, "dtype")}
        ids = processor.tokenizer(target, add_special_tokens=False)["input_ids"]
        out.append(make_sft_example(model_inputs, ids))
    return out


def swap_pixels(examples: list[dict]) -> list[dict]:
    """Each example with the pixels of the next one (same frame size): the model-ignores-the-video
    control. A model that reads the image must do clearly worse on these."""
    return [dict(e, pixel_values=examples[(i + 1) % len(examples)]["pixel_values"])
            for i, e in enumerate(examples)]


def caption_eval(model, examples: list[dict], pad_id: int) -> dict[str, float]:
    """Target-token loss and the share of examples whose every target token is the argmax."""
    import torch

    from stgrl.learner.sft import IGNORE, collate, sft_loss

    model.eval()
    nll = tokens = exact = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            batch = collate(examples[i:i + 16], pad_id)
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits
            loss, metrics = sft_loss(logits, labels)
            nll += float(loss) * metrics["target_tokens"]
            tokens += metrics["target_tokens"]
            keep = labels[:, 1:] != IGNORE
            exact += float(((logits[:, :-1].argmax(-1) == labels[:, 1:]) | ~keep).all(-1).sum())
    model.train()
    return {"loss": nll / tokens, "exact": exact / len(examples)}


def pretrain_captions(model, processor, spec: CaptionPretrainSpec,
                      progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train the whole model in place on grounded captions; returns held-out caption loss and exact
    rate with each frame's own pixels and with another frame's pixels (`swap_*`)."""
    import math

    import torch

    from stgrl.learner.sft import collate, sft_loss

    t0 = time.perf_counter()
    pad_id = processor.tokenizer.pad_token_id
    train = caption_examples(processor, spec, spec.pool_size, "train")
    held_out = caption_examples(processor, spec, 96, "eval")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(f"stgrl-caption-order:{spec.seed}")
    model.train()
    for step in range(spec.steps):
        warm = min(1.0, (step + 1) / max(1, spec.warmup_steps))
        for group in opt.param_groups:
            group["lr"] = spec.lr * warm * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        batch = collate(rng.sample(train, spec.batch_size), pad_id)
        labels = batch.pop("labels")
        loss, _ = sft_loss(model(**batch, use_cache=False).logits, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress(step, {"loss": float(loss.detach())})
    own = caption_eval(model, held_out, pad_id)
    swapped = caption_eval(model, swap_pixels(held_out), pad_id)
    result = {**own, **{f"swap_{k}": v for k, v in swapped.items()}, "seconds": time.perf_counter() - t0}
    log.info("caption pretraining: %d steps in %.0f s; held-out loss %.3f (another frame's pixels: %.3f), "
             "exact %.2f (%.2f)", spec.steps, result["seconds"], own["loss"], swapped["loss"], own["exact"],
             swapped["exact"])
    return result


class BasePretrainSpec(Struct, frozen=True, kw_only=True):
    """Both halves of the base pretraining; `steps: 0` switches a half off."""

    vision: VisionPretrainSpec = field(default_factory=VisionPretrainSpec)
    captions: CaptionPretrainSpec = field(default_factory=CaptionPretrainSpec)


def pretrain_model_dir(model_dir, spec: BasePretrainSpec | None = None,
                       progress: Callable[[str, int, int, dict[str, float]], None] | None = None) -> dict:
    """Load a saved tiny model, run the base pretraining (vision probes, then grounded captions),
    save it back in place and record spec + results in `stgrl_tiny_model.json` (`base_pretrain`).

    `progress(phase, step, total, metrics)` is called every step."""
    import json
    from pathlib import Path

    import msgspec
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = spec or BasePretrainSpec()
    path = Path(model_dir)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    results: dict[str, dict[str, float]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.vision.seed)
        if spec.vision.steps > 0:
            results["vision"] = pretrain_vision(
                model, processor, spec.vision,
                None if progress is None else lambda i, m: progress("vision", i, spec.vision.steps, m))
        if spec.captions.steps > 0:
            results["captions"] = pretrain_captions(
                model, processor, spec.captions,
                None if progress is None else lambda i, m: progress("captions", i, spec.captions.steps, m))
    model.save_pretrained(path)
    meta_path = path / "stgrl_tiny_model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["base_pretrain"] = {"spec": msgspec.to_builtins(spec),
                             "results": {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()}}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta["base_pretrain"]


def is_pretrained(model_dir) -> bool:
    """Whether `model_dir` records a finished base pretraining."""
    import json
    from pathlib import Path

    meta = Path(model_dir) / "stgrl_tiny_model.json"
    return meta.is_file() and "base_pretrain" in json.loads(meta.read_text())
