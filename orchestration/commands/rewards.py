"""``stgrl rewards``: reward subcommands (offline scoring of completions)."""

from __future__ import annotations

import argparse
import logging
import sys

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "rewards"
HELP = "score completions with the reward functions (offline)"
DESCRIPTION = """\
Score completions offline with the same pure reward functions the reward service runs.

  stgrl rewards score completions.jsonl --step 10 --total-steps 100 -o scores.jsonl
  stgrl rewards score completions.jsonl --config configs/demo.yaml reward.object_match=any

Input: one JSON object per line: {"id", "task", "completion", "answer", "options"?,
"key_frames": [{"idx", "time"}], "key_items", "span"?, "frame_size": [W, H]}.
Output: one line per input line: {"id", "total", "components": {name: value}}, with only the
components that apply to the line's task. A bad line is reported on stderr with its line number,
gives {"id", "line", "error"} in the output, and the run continues (exit status stays 0).
"""

log = logging.getLogger(__name__)


def _configure_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT.jsonl", help="completions to score ('-' for stdin)")
    p.add_argument("--step", type=int, default=0, help="training step (proximity curriculum), default 0")
    p.add_argument("--total-steps", type=int, default=None,
                   help="total training steps (default: run.total_steps of the config)")
    p.add_argument("-o", "--out", default=None, metavar="OUT.jsonl", help="output file (default: stdout)")
    add_config_arguments(p)


def _logs_to_stderr() -> None:
    """Point rich log handlers at stderr: the scores may be going to stdout, and a log line in there
    would corrupt the JSONL (the shared CLI logging setup writes to stdout)."""
    from rich.console import Console
    from rich.logging import RichHandler

    for h in logging.getLogger().handlers:
        if isinstance(h, RichHandler) and not h.console.stderr:
            h.console = Console(stderr=True)


def _run_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    import msgspec

    _logs_to_stderr()
    from stgrl.orchestration.config import load_config
    from stgrl.reward_service.offline import OfflineStats, score_lines

    cfg = load_config(args.config, args.overrides)
    total_steps = args.total_steps if args.total_steps is not None else cfg.run.total_steps
    if total_steps < 1:
        log.error("--total-steps must be >= 1, got %d", total_steps)
        return 2
    if args.input != "-" and not Path(args.input).is_file():
        log.error("input file not found: %s", args.input)
        return 2
    # Bytes in: a line that is not UTF-8 becomes that line's error instead of ending the run.
    src = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    dst = sys.stdout if args.out is None else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    stats = OfflineStats()
    encoder = msgspec.json.Encoder()
    try:
        for obj in score_lines(src, args.step, total_steps, cfg.reward, stats):
            dst.write(encoder.encode(obj).decode())
            dst.write("\n")
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout:
            dst.close()
    log.info("scored %d of %d lines (%d errors)%s", stats.scored, stats.lines, stats.errors,
             f", wrote {args.out}" if args.out else "")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Parses options and positionals in any order (`parse_known_intermixed_args`): with plain parsing,
    `score IN --step 3 KEY=VALUE` binds `IN` and an empty `KEY=VALUE` list before `--step`, and the
    override after it is an "unrecognized argument". The subparser action calls `parse_known_args`;
    the intermixed parse calls it again internally, which the flag passes through."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND", required=True,
                                parser_class=_IntermixedParser)
    p = sub.add_parser("score", help="score a JSONL file of completions",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure_score(p)
    p.set_defaults(_rewards_run=_run_score)


def run(args: argparse.Namespace) -> int:
    return int(args._rewards_run(args))
