"""`stgrl init-model`: build the embedded tiny Qwen2.5-VL (no download, deterministic from a seed)."""

from __future__ import annotations

import argparse

NAME = "init-model"
HELP = "build the embedded tiny Qwen2.5-VL model + tokenizer + processor locally (no download)"
DESCRIPTION = """\
Build the embedded default model: a tiny Qwen2.5-VL-architecture model (~1M parameters, head_dim 32)
with a byte-level BPE tokenizer trained locally on the output grammar, Qwen's chat template and the
Qwen2.5-VL image/video processor configs. Saved with save_pretrained, so AutoProcessor and
AutoModelForImageTextToText load it like a hub checkpoint. The same --seed gives identical weights.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="models/tiny", help="output directory (default: models/tiny)")
    parser.add_argument("--seed", type=int, default=0, help="weight-init and tokenizer seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out already holds a model")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from stgrl.rollout.tiny_model import build_tiny_model

    out = Path(args.out)
    if (out / "config.json").exists() and not args.force:
        logging.getLogger(__name__).info("%s already holds a model (use --force to rebuild)", out)
        return 0
    build_tiny_model(out, seed=args.seed)
    return 0
