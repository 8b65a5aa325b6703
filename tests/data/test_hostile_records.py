"""Hostile dataset records (issue 26 #4, #8, #11): size bounds, media paths that leave the dataset,
media too small for the processor. Each is a located, counted skip, decided before it costs memory
or opens a file it should not."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from stgrl.rollout.data.limits import MAX_RECORD_BYTES, MAX_TEXT_CHARS
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.records import Record, encode_record

pytestmark = pytest.mark.timeout(120)


def _rec(rid: str, path: str, **kw) -> bytes:
    fields = dict(id=rid, task="general", question="q?", answer="A", options=["A. x", "B. y"], video_path=path)
    fields.update(kw)
    return encode_record(Record(**fields))


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def dataset(datasets, tmp_path):
    """A copy of the easy split's videos in ``tmp/ds`` and one good video outside it, in ``tmp/outside``."""
    src = datasets["easy"]
    root = tmp_path / "ds"
    shutil.copytree(src / "videos", root / "videos")
    video = sorted((root / "videos").glob("train-*.mp4"))[0]
    (tmp_path / "outside").mkdir()
    shutil.copy(video, tmp_path / "outside" / "x.mp4")
    return root, video.relative_to(root).as_posix()


@pytest.mark.parametrize("check_media", [True, False])
def test_oversize_records_are_skipped_before_they_are_trained_on(dataset, check_media):
    """A 100 KB question passed `data check` and took SFT past 9 GB; a 50 MB line became a 52M-token
    example. Both are skipped, located, with the bound in the message."""
    root, good = dataset
    huge_line = json.dumps({"id": "huge", "task": "general", "question": "x" * (MAX_RECORD_BYTES + 10),
                            "answer": "A", "video_path": good}).encode()
    path = _write(root / "train.jsonl", [
        _rec("ok", good),
        json.dumps({"id": "long-q", "task": "general", "question": "why? " * 20_000, "answer": "A",
                    "video_path": good}).encode(),
        huge_line,
        json.dumps({"id": "many", "task": "general", "question": "q", "answer": "A", "video_path": good,
                    "options": ["A"] * 1000}).encode(),
    ])
    records, report = read_records(path, check_media_files=check_media)
    assert [r.id for r in records] == ["ok"]
    assert [(s.line, s.reason) for s in report.skipped] == [(2, "invalid_record"), (3, "too_large"),
                                                            (4, "invalid_record")]
    msgs = {s.line: s.message for s in report.skipped}
    assert msgs[2].startswith(f"$.question: must be a string of at most {MAX_TEXT_CHARS} characters, got 'why? ")
    assert f"exceeds the limit of {MAX_RECORD_BYTES} bytes per record" in msgs[3]
    assert msgs[4].startswith("$.options: must be a list of at most 26 items")


def test_media_paths_leaving_the_dataset_are_skipped_before_anything_is_opened(dataset):
    """`../../../../etc/passwd` and `/proc/self/environ` were opened and read before being skipped
    (as corrupt media); absolute paths, `../outside/x.mp4` and symlinks out of the dataset were kept
    and trained on. Now each is `unsafe_media_path`, decided on the path alone."""
    root, good = dataset
    os.symlink(root.parent / "outside" / "x.mp4", root / "videos" / "link-out.mp4")
    os.symlink(root / good, root / "videos" / "link-in.mp4")
    path = _write(root / "train.jsonl", [
        _rec("passwd", "../../../../etc/passwd"),
        _rec("environ", "/proc/self/environ"),
        _rec("absolute", str(root.parent / "outside" / "x.mp4")),
        _rec("dotdot", "../outside/x.mp4"),
        _rec("link-out", "videos/link-out.mp4"),
        _rec("link-in", "videos/link-in.mp4"),
        _rec("spatial", "x", task="spatial", image_path="../outside/x.png", video_path=None, options=[]),
        _rec("ok", good),
    ])
    for check_media in (True, False):
        records, report = read_records(path, check_media_files=check_media)
        assert [r.id for r in records] == ["link-in", "ok"]
        assert report.counts == {"unsafe_media_path": 6}
        assert all("outside the dataset folder" in s.message or "is absolute" in s.message
                   for s in report.skipped)
    # a dataset that keeps its videos elsewhere on purpose says so in config
    records, report = read_records(path, allow_media_outside_root=True)
    assert {r.id for r in records} >= {"absolute", "dotdot", "link-out", "link-in", "ok"}
    assert "passwd" not in {r.id for r in records}  # not a video: corrupt_media once opened


def test_load_split_follows_the_config_switch(dataset):
    from stgrl.orchestration.stage_support import load_split

    root, good = dataset
    path = _write(root / "train.jsonl", [_rec("dotdot", "../outside/x.mp4"), _rec("ok", good)])
    assert [r.id for r in load_split(str(path), "train")[0]] == ["ok"]
    assert [r.id for r in load_split(str(path), "train", allow_media_outside_root=True)[0]] == ["dotdot", "ok"]


def test_media_too_small_for_the_processor_is_skipped_by_data_check(dataset):
    """A 1x1 video passed `data check` and then failed in SFT; now it is `corrupt_media` naming the
    size, as is a 1x1 image and a 6000x29 (aspect 207) image."""
    import imageio.v2 as imageio
    import numpy as np
    from PIL import Image

    root, good = dataset
    w = imageio.get_writer(root / "videos" / "tiny.mp4", fps=4, codec="libx264", pixelformat="yuv444p",
                           macro_block_size=1, ffmpeg_log_level="error")
    for _ in range(4):
        w.append_data(np.full((1, 1, 3), 100, np.uint8))
    w.close()
    Image.new("RGB", (1, 1)).save(root / "videos" / "dot.png")
    Image.new("RGB", (6000, 29)).save(root / "videos" / "strip.png")
    path = _write(root / "train.jsonl", [
        _rec("tiny", "videos/tiny.mp4"),
        _rec("dot", "x", task="spatial", image_path="videos/dot.png", video_path=None, options=[]),
        _rec("strip", "x", task="spatial", image_path="videos/strip.png", video_path=None, options=[]),
        _rec("ok", good),
    ])
    records, report = read_records(path)
    assert [r.id for r in records] == ["ok"]
    assert report.counts == {"corrupt_media": 3}
    msgs = [s.message for s in report.skipped]
    assert "frames are 1x1 pixels; each side must be at least 28" in msgs[0]
    assert "frames are 1x1 pixels" in msgs[1] and "aspect ratio must be at most 200" in msgs[2]


def test_a_prompt_over_the_token_bound_is_a_counted_skip(datasets, processor):
    """Prompts are bounded in tokens too (``data.max_prompt_tokens``): an over-long one raises
    `PromptTooLong`, a `MediaError`, which every caller already counts and skips."""
    import msgspec

    from stgrl.orchestration.config import load_config
    from stgrl.rollout.video import MediaError, PromptTooLong, prepare_prompt

    src = datasets["easy"]
    records, _ = read_records(src / "train.jsonl")
    rec = msgspec.structs.replace(records[0], question="why " * 1000)
    data_cfg = load_config(None).data
    assert prepare_prompt(rec, processor, data_cfg, src).model_inputs["input_ids"].shape[-1] > 1000
    tight = msgspec.structs.replace(data_cfg, max_prompt_tokens=1000)
    with pytest.raises(PromptTooLong, match=r"prompt of \d+ tokens exceeds data.max_prompt_tokens \(1000\)"):
        prepare_prompt(rec, processor, tight, src)
    assert issubclass(PromptTooLong, MediaError)


def test_data_check_refuses_media_outside_unless_allowed(dataset):
    from stgrl.orchestration.cli import main

    root, _ = dataset
    path = _write(root / "train.jsonl", [_rec("dotdot", "../outside/x.mp4")])
    assert main(["data", "check", str(path)]) == 1  # nothing kept
    assert main(["data", "check", str(path), "--allow-media-outside-root"]) == 0
