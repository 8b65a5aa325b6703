"""Offline scoring of JSON lines (what `stgrl rewards score` runs): one sample in, one score out.

Input line: `{"id", "task", "completion", "answer", "options"?, "key_frames": [{"idx", "time"}],
"key_items", "span"?, "frame_size": [W, H]}` (other fields, e.g. a full training record's `question`,
are ignored). Output line: `{"id", "total", "components": {name: value}}`; a line that cannot be
scored gives `{"id", "line", "error"}` instead and the run goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

from stgrl.explain import describe_bad_json_line, find_invalid
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.rewards import score_sample
from stgrl.reward_service.types import ScoringSample

log = logging.getLogger(__name__)


class _DepthSafeDecoder:
    """msgspec's typed decoder, with nesting deeper than the interpreter's stack turned into a
    `msgspec.DecodeError`: one deeply nested line is that line's error row, not the end of the run."""

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(ScoringSample)

    def decode(self, raw: str | bytes) -> ScoringSample:
        try:
            return self._decoder.decode(raw)
        except RecursionError:
            raise msgspec.DecodeError("JSON nested too deeply") from None


_decoder = _DepthSafeDecoder()


@dataclass
class OfflineStats:
    """Counts of one offline run."""

    lines: int = 0
    scored: int = 0
    errors: int = 0


def _id_of(raw: str) -> object:
    """Best-effort id of a line that failed validation (so the error line can be joined back)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def _explain(lineno: int, raw: str | bytes, err: Exception) -> str:
    """Our words for a line that is not a scoring sample: a bad JSON document, or the field at fault."""
    if not isinstance(err, msgspec.ValidationError):
        return describe_bad_json_line(lineno, raw)
    try:
        found = find_invalid(json.loads(raw), ScoringSample)
    except RecursionError:
        return f"line {lineno} is not a scoring sample: nested too deeply to read"
    except ValueError:
        found = None
    detail = f"{found[0]}: {found[1]}" if found else str(err).split(" - at `$`")[0]
    return f"line {lineno} is not a scoring sample: {detail}"


def score_lines(lines: Iterable[str | bytes], step: int, total_steps: int, cfg: RewardConfig,
                stats: OfflineStats | None = None) -> Iterator[dict]:
    """Score JSON lines lazily, yielding one output object per non-blank input line.

    Bad lines (including bytes that are not UTF-8: pass raw `bytes` lines to get a per-line error
    rather than a failing text decoder) are logged at ERROR with their 1-based line number and yield
    an `error` object.
    """
    stats = stats if stats is not None else OfflineStats()
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        stats.lines += 1
        try:
            sample = _decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:  # ValidationError is a DecodeError
            message = _explain(lineno, raw, e)
            stats.errors += 1
            log.error("%s", message)
            yield {"id": _id_of(raw), "line": lineno, "error": message}
            continue
        score = score_sample(sample, step, total_steps, cfg)
        if score.error is not None:
            stats.errors += 1
            log.error("line %d (id %s): %s", lineno, sample.id, score.error)
            yield {"id": sample.id, "line": lineno, "error": score.error}
            continue
        stats.scored += 1
        yield {"id": score.id, "total": score.total, "components": score.components}
