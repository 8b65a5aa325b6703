"""The embedded default model: a tiny Qwen2.5-VL built locally, deterministically, with no download.

`build_tiny_model` writes a directory that `AutoProcessor.from_pretrained` and
`AutoModelForImageTextToText.from_pretrained` load exactly like a hub checkpoint:

- a byte-level BPE tokenizer trained here with `tokenizers` on text that covers the output grammar
  (tags, numbers, object names, question words) plus the Qwen special tokens;
- Qwen's chat template (system / user / assistant turns, `<|vision_start|><|image_pad|><|vision_end|>`
  placeholders for images and videos);
- Qwen2.5-VL image and video processor configs (14 px patches, 2x2 merge -> 28 px cells);
- a randomly initialised Qwen2.5-VL with a few million parameters (head_dim 32 so vLLM can run the
  text part), weights drawn from a seeded generator so two builds with one seed are bit-identical.

Any local HF Qwen2.5-VL checkpoint can replace this directory in the config (`model.path`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from msgspec import Struct

log = logging.getLogger(__name__)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Grammar tags are single tokens: a tiny model should spend its capacity on *where* and *when*, not on
# spelling `</think>` byte by byte. They are ordinary (non-special) tokens, so decoding keeps them.
GRAMMAR_TOKENS = (
    "<think>", "</think>", "<answer>", "</answer>", "<obj>", "</obj>", "<box>", "</box>", "<t>", "</t>",
)

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta",
           "pink", "brown", "gray")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "ring", "cross", "rectangle", "ball", "box")
WORDS = (
    "what when where which who how many much long does did is are was were the a an of in on at to from "
    "and or not first last before after during moves move moving appears appear disappears disappear "
    "enters leaves collides collide with hits touches stops starts left right up down top bottom middle "
    "center corner video frame frames second seconds time object objects colour color shape count "
    "number option options answer question correct think reasoning evidence box boxes located visible "
    "between there it its then while until event happens first second third fourth fifth direction "
    "towards away closer farther larger smaller bigger same different other both each all none only "
    "yes no true false you are a helpful assistant that reasons about videos show your evidence write "
    "when and where you saw each thing pixel coordinates of shown frames format output span start end "
    "Frame Question Options Answer Correct Option A B C D E The with"
).split()


class TinyModelSpec(Struct, frozen=True, kw_only=True):
    """Sizes of the embedded model. Defaults: ~2M parameters, fast enough for the CPU demo."""

    vocab_target: int = 1024
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    max_position_embeddings: int = 4096
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    match_vision_scale: bool = False
    """Scale the vision merger's output layer at init so image-token embeddings have the norm of text
    embeddings (from scratch they are ~25x longer). Measured (docs/grounding.md): same SFT loss and
    still no pixel dependence after the demo's 300 SFT steps, so it is off by default."""


CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def grammar_corpus(seed: int) -> Iterator[str]:
    """Text covering what the model reads and writes: claims, answers, numbers, names, questions.

    Deterministic for a seed, so the trained tokenizer is too.
    """
    import random

    rng = random.Random(seed)
    names = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
    yield " ".join(WORDS)
    for n in range(0, 1001):
        yield f"{n} {n / 10:.1f} [{n},{(n * 7) % 1000},{(n * 13) % 1000},{(n * 29) % 1000}]"
    for _ in range(3000):
        name = rng.choice(names)
        box = sorted(rng.sample(range(0, 448), 2)) + sorted(rng.sample(range(0, 448), 2))
        t = rng.randint(0, 200) / 10
        s, e = sorted((rng.randint(0, 200) / 10, rng.randint(0, 200) / 10))
        letter = rng.choice("ABCD")
        yield (
            f"<think>The {name} appears in Frame {rng.randint(0, 15)} at {t}s: "
            f"<obj>{name}</obj><box>[{box[0]},{box[2]},{box[1]},{box[3]}]</box>at<t>{t}</t>s "
            f"then it moves {rng.choice(['left', 'right', 'up', 'down'])}.</think>\n"
            f"<answer>{letter}. {name}</answer> <answer><t>{s}</t>s to <t>{e}</t>s</answer> "
            f"Question: {rng.choice(['What', 'When', 'Where', 'Which', 'How many'])} "
            f"{rng.choice(WORDS)} {name}? Options: A. {rng.choice(names)} B. {rng.choice(names)} "
            f"C. {rng.choice(names)} D. {rng.choice(names)} Correct Option: {letter}"
        )


def build_tokenizer(spec: TinyModelSpec, seed: int):
    """Train a byte-level BPE tokenizer (Qwen-style: digits split one by one) and wrap it for HF."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(grammar_corpus(seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=spec.max_position_embeddings,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf.add_tokens(list(GRAMMAR_TOKENS))
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_processor(tokenizer, spec: TinyModelSpec):
    """Qwen2.5-VL processor around our tokenizer: 14 px patches merged 2x2 into 28 px cells."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pix = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    image_processor = Qwen2VLImageProcessor(
        patch_size=14, merge_size=2, temporal_patch_size=2, size=pix, min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=14, merge_size=2, temporal_patch_size=2, size=pix, min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, spec: TinyModelSpec):
    """Qwen2.5-VL config sized by `spec`, with token ids taken from our tokenizer."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.text_hidden // spec.text_heads
    if head_dim < 32:
        raise ValueError(f"text head_dim {head_dim} < 32: vLLM kernels need head_dim >= 32")
    half = head_dim // 2
    # Qwen's [16, 24, 24] split of the 64 rotary pairs (t, h, w), scaled to our head_dim.
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.text_hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [spec.vision_depth - 1],
        "tokens_per_second": 2,
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    cfg.bos_token_id = ids["<|endoftext|>"]
    cfg.eos_token_id = ids["<|im_end|>"]
    cfg.pad_token_id = ids["<|endoftext|>"]
    return cfg


def match_vision_scale(model) -> float:
    """Rescale the merger's last linear layer so mean image-token norm == mean text-embedding norm.

    Measured on a fixed (seeded) random frame, so the result is deterministic. Returns the factor."""
    import torch

    visual = model.model.visual
    patch = visual.config.patch_size
    tp = visual.config.temporal_patch_size
    grid = torch.tensor([[1, 4, 4]])
    gen = torch.Generator().manual_seed(1234)
    pixels = torch.randn(16, 3 * tp * patch * patch, generator=gen)
    with torch.no_grad():
        out = visual(pixels, grid_thw=grid)
        feats = getattr(out, "pooler_output", None)
        feats = feats if feats is not None else getattr(out, "last_hidden_state", out)
        vis_norm = float(feats.norm(dim=-1).mean())
        txt_norm = float(model.model.get_input_embeddings().weight.norm(dim=-1).mean())
        factor = txt_norm / vis_norm
        last = visual.merger.mlp[-1]
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor


def build_tiny_model(out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None) -> Path:
    """Build and save the embedded tiny Qwen2.5-VL (model, tokenizer, processor) into `out_dir`.

    Deterministic: the same seed and spec give bit-identical weights and identical tokenizer files.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec, seed)
    processor = build_processor(tokenizer, spec)
    config = build_config(tokenizer, spec)

    devices = []  # fork_rng needs no CUDA devices: keep the global RNG of the caller untouched
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        if spec.match_vision_scale:
            match_vision_scale(model)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "stgrl_tiny_model.json").write_text(
        json.dumps({"seed": seed, "spec": {f: getattr(spec, f) for f in spec.__struct_fields__},
                    "parameters": n_params}, indent=2)
    )
    log.info("built tiny Qwen2.5-VL (%.2fM parameters, vocab %d) in %s", n_params / 1e6, len(tokenizer), out)
    return out
