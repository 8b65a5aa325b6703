"""The dataset reader: bad lines and bad media are reported with file and line, counted by
reason and skipped; good lines survive next to them."""

from __future__ import annotations

import logging
import shutil

from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.records import Record, encode_record


def test_bad_lines_and_media_are_skipped_counted_and_located(datasets, tmp_path, caplog):
    src = datasets["easy"]
    good = [line for line in (src / "train.jsonl").read_bytes().splitlines() if line][:3]
    shutil.copytree(src / "videos", tmp_path / "videos")
    shutil.copytree(src / "images", tmp_path / "images")
    (tmp_path / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    video = next((tmp_path / "videos").glob("train-*.mp4"))
    (tmp_path / "videos" / "truncated.mp4").write_bytes(video.read_bytes()[:600])

    def rec(rid: str, path: str) -> bytes:
        return encode_record(Record(id=rid, task="general", question="q?", answer="A",
                                    options=["A. x", "B. y"], video_path=path))

    lines = [
        good[0],
        b'{"id": "broken", "task": "general", ',  # line 2: not JSON
        b'{"id": "x", "task": "dance", "question": "q", "answer": "a", "video_path": "v.mp4"}',  # 3
        b'{"id": "y", "task": "temporal", "question": "q", "answer": "a", "video_path": "v.mp4"}',  # 4: no span
        good[1],
        rec("missing", "videos/nope.mp4"),  # line 6
        rec("corrupt", "videos/corrupt.mp4"),  # line 7
        rec("truncated", "videos/truncated.mp4"),  # line 8
        b"",
        good[2],
        good[0],  # line 11: duplicate id
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        records, report = read_records(path)
    assert [r.id for r in records] == ["train-000000", "train-000001", "train-000002"]
    assert report.read == 10 and report.kept == 3
    assert report.counts == {"invalid_json": 1, "invalid_record": 2, "missing_media": 1,
                             "corrupt_media": 2, "duplicate_id": 1}
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "invalid_json"), (3, "invalid_record"), (4, "invalid_record"), (6, "missing_media"),
        (7, "corrupt_media"), (8, "corrupt_media"), (11, "duplicate_id")]
    by_line = {s.line: s.message for s in report.skipped}
    assert "task" in by_line[3] and "span" in by_line[4]
    assert "nope.mp4" in by_line[6] and "corrupt.mp4" in by_line[7]
    assert f"{path}:7 skipped (corrupt_media)" in caplog.text


def test_out_of_range_box_and_unknown_key_frame_are_invalid(tmp_path):
    base = {"id": "a", "task": "general", "question": "q", "answer": "A", "video_path": "v.mp4",
            "key_frames": [{"idx": 0, "time": 0.0}]}
    import json

    lines = [
        json.dumps({**base, "key_items": {"0": {"red circle": [[0.1, 0.1, 1.5, 0.2]]}}}),
        json.dumps({**base, "key_items": {"3": {"red circle": [[0.1, 0.1, 0.5, 0.2]]}}}),
        json.dumps({**base, "key_items": {"0": {"red circle": [[0.5, 0.1, 0.2, 0.2]]}}}),
        json.dumps({**base, "key_items": {"0": {"red circle": [[0.1, 0.1, 0.5, 0.2]]}}}),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    records, report = read_records(tmp_path / "d.jsonl", check_media_files=False)
    assert len(records) == 1 and report.counts == {"invalid_record": 3}
    msgs = [s.message for s in report.skipped]
    assert "<= 1.0" in msgs[0] and "names no key frame" in msgs[1] and "inverted" in msgs[2]
