"""Video → model input (docs/design.md §2.2): sample frames at a target fps with their TRUE timestamps,
run the processor once per prompt on the frames as per-frame images, cache decodes.

`sample_frame_indices` is the one sampling rule: the synthetic generator calls it too, so the
key-frame times it writes are times of frames the model is actually shown.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import xxhash

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.records import Record
from stgrl.rollout.prompts import build_messages, target_text

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class MediaError(RuntimeError):
    """A record's video or image is missing or cannot be decoded (callers count and skip it)."""


class PromptTooLong(MediaError):
    """The record's prompt has more tokens than ``data.max_prompt_tokens``; skipped like bad media."""


def sample_frame_indices(
    num_frames: int, native_fps: float, fps: float, min_frames: int, max_frames: int
) -> list[int]:
    """Native frame indices shown to the model.

    On the target-fps grid (`round(k * native_fps / fps)`, k = 0, 1, …) when that gives between
    `min_frames` and `max_frames` frames; otherwise `min`/`max` frames spread evenly over the
    video (never more frames than it has). Sorted, unique.
    """
    if num_frames <= 0 or native_fps <= 0:
        return []
    step = native_fps / fps
    n_grid = int((num_frames - 1) / step + 1e-9) + 1
    if min_frames <= n_grid <= max_frames:
        idx = [min(num_frames - 1, round(k * step)) for k in range(n_grid)]
    else:
        n = min(max(n_grid, min_frames), max_frames, num_frames)
        idx = [int(round(x)) for x in np.linspace(0, num_frames - 1, n)]
    return sorted(set(idx))


def with_frames_at(indices: list[int], times: Any, native_fps: float, num_frames: int) -> list[int]:
    """`indices` plus the native frame nearest to each of `times` (seconds), sorted and unique: the
    record's `extra_frame_times` spliced into the sampled frames at their true positions."""
    if not times or num_frames <= 0 or native_fps <= 0:
        return indices
    extra = {min(num_frames - 1, max(0, round(float(t) * native_fps))) for t in times}
    return sorted(set(indices) | extra)


def frame_time(index: int, native_fps: float) -> float:
    """True timestamp of a native frame, rounded to 0.1 s (the label the model sees)."""
    return round(index / native_fps, 1)


class DecodedVideo(msgspec.Struct, frozen=True):
    """Sampled frames of one video: `frames` uint8 [N, H, W, 3] at native size."""

    frames: Any
    indices: list[int]
    times: list[float]
    native_fps: float
    num_frames: int
    file_hash: str


def file_hash(path: Path) -> str:
    """Content hash of a media file (cache key and provenance)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_video(path: Path, data_cfg: DataConfig, digest: str | None = None,
                 extra_times: tuple[float, ...] = ()) -> DecodedVideo:
    """Decode the sampled frames of `path` with decord, plus the frames at `extra_times`
    (`with_frames_at`); raises `MediaError` on any failure."""
    import decord

    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        fps = float(vr.get_avg_fps())
        idx = sample_frame_indices(n, fps, data_cfg.fps, data_cfg.min_frames, data_cfg.max_frames)
        idx = with_frames_at(idx, extra_times, fps, n)
        if not idx:
            raise MediaError(f"video has no frames: {path}")
        frames = vr.get_batch(idx).asnumpy()
    except MediaError:
        raise
    except Exception as e:  # decord raises its own DECORDError and RuntimeErrors
        raise MediaError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    return DecodedVideo(frames=frames, indices=idx, times=[frame_time(i, fps) for i in idx],
                        native_fps=fps, num_frames=n, file_hash=digest or file_hash(path))


def load_image(path: Path) -> np.ndarray:
    """An RGB still as uint8 [1, H, W, 3]; raises `MediaError`."""
    from PIL import Image

    if not path.is_file():
        raise MediaError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))[None]
    except Exception as e:
        raise MediaError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


class VideoCache:
    """LRU cache of decoded media keyed by (file content hash, sampling params): one decode per
    video per process. Thread-safe; a decode happens outside the lock (two threads may both decode
    the same new file once; the result is identical)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, DecodedVideo] = OrderedDict()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _digest(self, path: Path) -> str:
        """Content hash, re-read only when the file's size or mtime changed."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            digest = self._hashes.get(key)
        if digest is None:
            digest = file_hash(path)
            with self._lock:
                self._hashes[key] = digest
        return digest

    def get(self, path: Path, data_cfg: DataConfig, still: bool = False,
            extra_times: tuple[float, ...] = ()) -> DecodedVideo:
        """Sampled frames of `path` (decoded on first use), with the frames at `extra_times` spliced
        in (videos only); raises `MediaError`."""
        if not path.is_file():
            raise MediaError(f"{'image' if still else 'video'} not found: {path}")
        digest = self._digest(path)
        extra_times = () if still else tuple(extra_times)
        key = (digest, still, data_cfg.fps, data_cfg.min_frames, data_cfg.max_frames, extra_times)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        self.misses += 1
        if still:
            item = DecodedVideo(frames=load_image(path), indices=[0], times=[0.0], native_fps=1.0,
                                num_frames=1, file_hash=digest)
        else:
            item = decode_video(path, data_cfg, digest, extra_times)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item


class PreparedPrompt(msgspec.Struct, kw_only=True):
    """One prompt ready for the model (docs/conventions.md): the processor's tensors (batch of 1),
    the true time of each shown frame, the resized frame size (W, H) that pixel boxes refer to,
    and a content hash of pixels + text (content-addressed caching)."""

    record: Record
    model_inputs: dict[str, Any]
    frame_times: list[float]
    frame_size: tuple[int, int]
    content_hash: str
    prompt_text: str


def _size_kwargs(data_cfg: DataConfig) -> dict[str, Any]:
    return {"size": {"shortest_edge": data_cfg.min_pixels_per_frame,
                     "longest_edge": data_cfg.max_pixels_per_frame}}


def record_media(record: Record, dataset_dir: str | Path, data_cfg: DataConfig, cache: VideoCache) -> DecodedVideo:
    """The frames a record's prompt shows: its still image (a spatial record with `image_path`) or
    its sampled video frames with `record.extra_frame_times` spliced in. Every caller that needs a
    record's pixels goes through here, so the processor and the engines see the same frames."""
    still = record.task == "spatial" and record.image_path is not None
    return cache.get(Path(dataset_dir) / record.media_path, data_cfg, still=still,
                     extra_times=tuple(record.extra_frame_times))


def prepare_prompt(
    record: Record,
    processor: Any,
    data_cfg: DataConfig,
    dataset_dir: str | Path,
    cache: VideoCache | None = None,
) -> PreparedPrompt:
    """Decode (cached), build the chat prompt with `Frame k at {t}s:` labels, run the processor
    once. Raises `MediaError` when the media is missing or corrupt, `PromptTooLong` (a `MediaError`)
    when the prompt exceeds ``data.max_prompt_tokens``."""
    cache = cache or VideoCache(capacity=1)
    media = record_media(record, dataset_dir, data_cfg, cache)
    messages = build_messages(record, media.times)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=list(media.frames), return_tensors="pt",
                       images_kwargs=_size_kwargs(data_cfg))
    model_inputs = {k: v for k, v in inputs.items() if hasattr(v, "dtype")}
    n_tokens = int(model_inputs["input_ids"].shape[-1])
    if n_tokens > data_cfg.max_prompt_tokens:
        raise PromptTooLong(f"record {record.id}: prompt of {n_tokens} tokens exceeds data.max_prompt_tokens "
                            f"({data_cfg.max_prompt_tokens})")
    grid = model_inputs["image_grid_thw"][0]
    patch = int(getattr(processor.image_processor, "patch_size", 14))
    frame_size = (int(grid[2]) * patch, int(grid[1]) * patch)
    h = xxhash.xxh3_128()
    h.update(media.file_hash.encode())
    h.update(repr((data_cfg.fps, data_cfg.min_frames, data_cfg.max_frames,
                   data_cfg.min_pixels_per_frame, data_cfg.max_pixels_per_frame)).encode())
    h.update(text.encode())
    return PreparedPrompt(record=record, model_inputs=model_inputs, frame_times=list(media.times),
                          frame_size=frame_size, content_hash=h.hexdigest(), prompt_text=text)


END_OF_TURN = "<|im_end|>"


def sft_tensors(prepared: PreparedPrompt, processor: Any, target: str) -> dict[str, torch.Tensor]:
    """Append the tokenized `target` + `<|im_end|>` to a prepared prompt; `labels` are -100 on
    prompt tokens. The target is tokenized on its own, after the prompt — exactly the tokens the
    model would have to generate after the generation prompt."""
    import torch

    ids = processor.tokenizer(target + END_OF_TURN, add_special_tokens=False)["input_ids"]
    tgt = torch.tensor([ids], dtype=prepared.model_inputs["input_ids"].dtype)
    mi = prepared.model_inputs
    out = {k: v for k, v in mi.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    out["input_ids"] = torch.cat([mi["input_ids"], tgt], dim=1)
    out["attention_mask"] = torch.cat([mi["attention_mask"], torch.ones_like(tgt)], dim=1)
    if "mm_token_type_ids" in mi:
        out["mm_token_type_ids"] = torch.cat([mi["mm_token_type_ids"], torch.zeros_like(tgt)], dim=1)
    out["labels"] = torch.cat([torch.full_like(mi["input_ids"], -100), tgt], dim=1)
    return out


def prepare_sft_example(
    record: Record,
    processor: Any,
    data_cfg: DataConfig,
    dataset_dir: str | Path,
    cache: VideoCache | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for prompt + target (`<think>{reasoning}</think>\\n<answer>{answer}</answer>`
    then `<|im_end|>`), with `labels` masked to -100 on the prompt (docs/design.md §5). Boxes stored
    normalized in the record text are converted to the resized frame's pixels first."""
    prepared = prepare_prompt(record, processor, data_cfg, dataset_dir, cache)
    return sft_tensors(prepared, processor, target_text(record, prepared.frame_size))


def resized_size(width: int, height: int, data_cfg: DataConfig, factor: int = 28) -> tuple[int, int]:
    """(W, H) after the Qwen2-VL processor's resize (`smart_resize`: multiples of `factor`, pixel
    count within the config's bounds). Pure arithmetic so the generator and the STGR importer
    can convert boxes without loading a processor; a test checks it against transformers."""
    import math

    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > data_cfg.max_pixels_per_frame:
        beta = math.sqrt((height * width) / data_cfg.max_pixels_per_frame)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < data_cfg.min_pixels_per_frame:
        beta = math.sqrt(data_cfg.min_pixels_per_frame / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar
