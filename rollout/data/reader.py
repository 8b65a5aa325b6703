"""Read a JSONL dataset: every line validated as a `Record`; bad lines and missing or corrupt
media are reported with file and line, counted by reason and skipped — never fatal (docs/design.md §2.1)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import msgspec

from stgrl.explain import describe_bad_json_line
from stgrl.rollout.data.limits import MAX_RECORD_BYTES, frame_size_problem, media_path_problem
from stgrl.rollout.data.records import Record, decode_record, explain_invalid_record

log = logging.getLogger(__name__)

REASONS = ("invalid_json", "invalid_record", "duplicate_id", "missing_media", "corrupt_media", "too_large",
           "unsafe_media_path")


class Skipped(msgspec.Struct, frozen=True):
    """One skipped line: where, why (a `REASONS` key) and the message shown to the user."""

    path: str
    line: int
    reason: str
    message: str


class ReadReport(msgspec.Struct, kw_only=True):
    """What `read_records` kept and skipped. `counts` maps reason → number of skipped lines."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: list[Skipped] = msgspec.field(default_factory=list)
    counts: dict[str, int] = msgspec.field(default_factory=dict)

    def skip(self, line: int, reason: str, message: str) -> None:
        s = Skipped(self.path, line, reason, message)
        self.skipped.append(s)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        log.warning("%s:%d skipped (%s): %s", self.path, line, reason, message)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def check_media(record: Record, dataset_dir: Path, allow_outside: bool = False) -> tuple[str, str] | None:
    """(reason, message) if the record's video/image may not be used, is missing or cannot be
    opened, else None. The path is checked to stay inside ``dataset_dir`` before anything is opened
    (`limits.media_path_problem`). Videos are opened with decord (header + frame count, the same
    library training decodes with) and their last frame decoded, so truncated files are caught too;
    frames too small for the processor are refused here rather than in SFT."""
    unsafe = media_path_problem(record.media_path, dataset_dir, allow_outside)
    if unsafe is not None:
        return "unsafe_media_path", unsafe
    path = dataset_dir / record.media_path
    if not path.is_file():
        return "missing_media", f"file not found: {path}"
    try:
        if record.task == "spatial" and record.image_path:
            from PIL import Image

            with Image.open(path) as im:
                im.convert("RGB").load()
                size = im.size
        else:
            import decord

            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            if len(vr) == 0:
                return "corrupt_media", f"no frames in {path}"
            last = vr[len(vr) - 1].asnumpy()
            size = (last.shape[1], last.shape[0])
    except Exception as e:  # decord/PIL raise many types; any of them means unusable media
        return "corrupt_media", f"cannot decode {path}: {type(e).__name__}: {str(e)[:200]}"
    small = frame_size_problem(*size)
    if small is not None:
        return "corrupt_media", f"{path}: {small}"
    return None


def read_records(
    path: str | Path, check_media_files: bool = True, dataset_dir: str | Path | None = None,
    allow_media_outside_root: bool = False,
) -> tuple[list[Record], ReadReport]:
    """All valid records of a JSONL file, plus the report of what was skipped and why.

    Media paths are relative to `dataset_dir` (default: the file's folder) and must stay inside it
    unless ``allow_media_outside_root`` (checked even with ``check_media_files=False``). A line over
    `limits.MAX_RECORD_BYTES` is skipped (``too_large``) before it is decoded. Blank lines are ignored.
    """
    path = Path(path)
    base = Path(dataset_dir) if dataset_dir is not None else path.parent
    report = ReadReport(path=str(path))
    records: list[Record] = []
    seen: set[str] = set()
    media_ok: dict[str, tuple[str, str] | None] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            report.read += 1
            if len(raw) > MAX_RECORD_BYTES:
                report.skip(lineno, "too_large", f"line of {len(raw)} bytes exceeds the limit of "
                                                 f"{MAX_RECORD_BYTES} bytes per record")
                continue
            try:
                rec = decode_record(raw)
            except msgspec.ValidationError as e:
                report.skip(lineno, "invalid_record", explain_invalid_record(raw, e))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError):  # the latter: bytes that are not UTF-8
                report.skip(lineno, "invalid_json", describe_bad_json_line(lineno, raw))
                continue
            if rec.id in seen:
                report.skip(lineno, "duplicate_id", f"id {rec.id!r} seen before")
                continue
            if not check_media_files:
                unsafe = media_path_problem(rec.media_path, base, allow_media_outside_root)
                if unsafe is not None:
                    report.skip(lineno, "unsafe_media_path", unsafe)
                    continue
            else:
                key = rec.media_path
                if key not in media_ok:
                    media_ok[key] = check_media(rec, base, allow_media_outside_root)
                bad = media_ok[key]
                if bad is not None:
                    report.skip(lineno, bad[0], bad[1])
                    continue
            seen.add(rec.id)
            records.append(rec)
    report.kept = len(records)
    if report.skipped:
        log.warning("%s: kept %d of %d records, skipped %s", path, report.kept, report.read,
                    dict(Counter({k: v for k, v in report.counts.items()})))
    return records, report
