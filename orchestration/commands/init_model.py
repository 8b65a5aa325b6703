"""`stgrl init-model`: build the embedded tiny Qwen2.5-VL (no download, deterministic from a seed)
and give it the base pretraining that a hub VLM would come with."""

from __future__ import annotations

import argparse

NAME = "init-model"
HELP = "build the embedded tiny Qwen2.5-VL model + tokenizer + processor locally (no download)"
DESCRIPTION = """\
Build the embedded default model: a tiny Qwen2.5-VL-architecture model (~1M parameters, head_dim 32)
with a byte-level BPE tokenizer trained locally on the output grammar, Qwen's chat template and the
Qwen2.5-VL image/video processor configs. Saved with save_pretrained, so AutoProcessor and
AutoModelForImageTextToText load it like a hub checkpoint. The same --seed gives identical weights.

Then the base pretraining (a few CPU-minutes), standing in for the pretraining a hub VLM has: the
vision tower learns, through throw-away linear probes, the colour, shape and cell of every 28 px
cell of random synthetic frames; then the whole model learns grounded captions (one frame in, every
object out as <obj>name</obj><box>[..]</box>at<t>T</t>s). Without it the tiny model never reads the
pixels within the demo's budget (docs/grounding.md). --vision-steps 0 --caption-steps 0 skips it.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from stgrl.rollout.config import ModelConfig

    defaults = ModelConfig()
    parser.add_argument("--out", default="models/tiny", help="output directory (default: models/tiny)")
    parser.add_argument("--seed", type=int, default=0, help="weight-init, tokenizer and pretraining seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out already holds a model")
    parser.add_argument("--vision-steps", type=int, default=defaults.pretrain_vision_steps,
                        help="vision-probe pretraining steps (default: %(default)s; 0 = off)")
    parser.add_argument("--caption-steps", type=int, default=defaults.pretrain_caption_steps,
                        help="grounded-caption pretraining steps (default: %(default)s; 0 = off)")


def run(args: argparse.Namespace) -> int:
    import logging
    import shutil
    from pathlib import Path

    from stgrl.orchestration.demo import pretrain_embedded_model
    from stgrl.rollout.tiny_model import build_tiny_model

    log = logging.getLogger(__name__)
    if args.vision_steps < 0 or args.caption_steps < 0:
        log.error("--vision-steps and --caption-steps must be >= 0 (got %d, %d)", args.vision_steps,
                  args.caption_steps)
        return 2
    out = Path(args.out)
    if (out / "config.json").exists() and not args.force:
        log.info("%s already holds a model (use --force to rebuild)", out)
        return 0
    if args.force and out.exists():
        if any(out.iterdir()) and not (out / "stgrl_tiny_model.json").is_file():
            log.error("%s is not an embedded model directory (no stgrl_tiny_model.json): refusing to "
                      "delete it for --force", out)
            return 2
        shutil.rmtree(out)
    from stgrl.orchestration.console_log import capture_stdout

    with capture_stdout():  # library chatter (DeepSpeed's accelerator line, weight bars) off the console
        build_tiny_model(out, seed=args.seed)
        pretrain_embedded_model(out, args.vision_steps, args.caption_steps, args.seed)
    return 0
