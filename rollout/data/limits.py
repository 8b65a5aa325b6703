"""Size and place bounds of a dataset record, checked before anything is decoded or opened.

Why: a record is untrusted input. Without bounds a 100 KB ``question`` passed `stgrl data check` and
drove SFT past 9 GB in 20 s, a 50 MB line became a 52M-token example, and a ``video_path`` of
``/proc/self/environ`` or ``../../etc/passwd`` was opened and read before the record was skipped.

- a line longer than `MAX_RECORD_BYTES` is skipped before JSON decoding;
- text fields and lists have per-field maxima (`records.Record` uses these constants);
- a media path must stay inside the dataset root once ``..`` and symlinks are resolved, unless
  ``data.allow_media_outside_root`` is set; checked on the path string and the file system's own
  resolution, never by opening the file;
- a video or image must be at least `MIN_MEDIA_SIDE` pixels on each side with an aspect ratio of at
  most `MAX_ASPECT_RATIO` (what the Qwen2-VL processor can resize), so data check catches what SFT
  would fail on.

Pure functions, no decoding libraries.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_ID_CHARS",
    "MAX_KEY_FRAMES",
    "MAX_OPTIONS",
    "MAX_PATH_CHARS",
    "MAX_RECORD_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_REASONING_CHARS",
    "MIN_MEDIA_SIDE",
    "frame_size_problem",
    "media_path_problem",
]

MAX_RECORD_BYTES = 1 << 20
"""One JSONL line (a record) of at most 1 MiB; our largest records are ~3 KB."""
MAX_ID_CHARS = 256
MAX_PATH_CHARS = 4096
MAX_TEXT_CHARS = 4096
"""``question``, ``answer`` and each option: a question is ~200 characters."""
MAX_REASONING_CHARS = 16384
"""The SFT target's reasoning text."""
MAX_OPTIONS = 26
MAX_KEY_FRAMES = 1024
MIN_MEDIA_SIDE = 28
"""One 28-pixel patch (the processor's resize factor) on each side."""
MAX_ASPECT_RATIO = 200.0
"""The Qwen2-VL processor refuses a frame whose long side is more than 200x its short side."""


def media_path_problem(relative: str, dataset_dir: Path, allow_outside: bool = False) -> str | None:
    """Why ``relative`` (a record's media path) may not be used, or None when it may.

    The path is joined to ``dataset_dir`` and resolved (``..`` and symlinks followed, no file opened);
    it must then lie inside the resolved ``dataset_dir``. An absolute path counts as outside.
    ``allow_outside`` (``data.allow_media_outside_root``) lifts the rule for datasets that keep their
    videos elsewhere on purpose.
    """
    if "\x00" in relative:
        return "media path contains a NUL byte"
    if allow_outside:
        return None
    if Path(relative).is_absolute():
        return f"media path {relative!r} is absolute; it must be relative to the dataset folder " \
               f"(set data.allow_media_outside_root to allow it)"
    root = dataset_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        return f"media path {relative!r} leads outside the dataset folder {root} (to {target}); " \
               f"set data.allow_media_outside_root to allow it"
    return None


def frame_size_problem(width: int, height: int) -> str | None:
    """Why a frame of ``width`` x ``height`` pixels cannot be fed to the model, or None."""
    if min(width, height) < MIN_MEDIA_SIDE:
        return f"frames are {width}x{height} pixels; each side must be at least {MIN_MEDIA_SIDE}"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return f"frames are {width}x{height} pixels; the aspect ratio must be at most {MAX_ASPECT_RATIO:.0f}"
    return None
