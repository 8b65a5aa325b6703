"""The synthetic generator: determinism, held-out split, and ground truth that holds in the
DECODED video (render → H.264 → decord → sampled times → boxes)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.scene import COLOURS
from stgrl.rollout.data.synth import generate_split, iter_samples
from stgrl.rollout.video import decode_video, frame_time, load_image, sample_frame_indices

CFG = DataConfig()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("level", ["easy", "medium"])
def test_same_seed_same_records_and_video_bytes(tmp_path, level):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_split(a, "train", 6, seed=3, difficulty=level, progress=False)
    generate_split(b, "train", 6, seed=3, difficulty=level, progress=False)
    generate_split(c, "train", 6, seed=4, difficulty=level, progress=False)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert len(da) == 7  # 6 media files + train.jsonl
    assert da == db
    assert da["train.jsonl"] != dc["train.jsonl"]


def test_eval_is_held_out_and_tasks_balanced(datasets):
    d = datasets["easy"]
    train, _ = read_records(d / "train.jsonl")
    ev, _ = read_records(d / "eval.jsonl")
    assert [r.task for r in train[:4]] == ["spatio_temporal", "temporal", "spatial", "general"]
    media = {p: hashlib.sha256((d / p).read_bytes()).hexdigest() for p in [r.media_path for r in train + ev]}
    train_h = {media[r.media_path] for r in train}
    assert not train_h & {media[r.media_path] for r in ev}
    vstar = json.loads((d / "eval_vstar.json").read_text())
    assert vstar and all(item["vid"].startswith("eval-") for item in vstar)
    item = vstar[0]
    for key in ("vid", "domain", "fps", "width", "height", "frame_count", "question", "answer", "timestamps",
                "bboxes", "temporal_question", "spatial_question", "spatial_question_2", "chain1", "chain2"):
        assert key in item, key
    s, e = item["timestamps"]
    assert 0 <= s <= e <= item["frame_count"] / item["fps"]
    for b in item["bboxes"]:
        assert s <= b["timestamp"] <= e
        assert b["timestamp"] == frame_time(b["frame_index"], item["fps"])
        assert 0 <= b["xmin"] < b["xmax"] <= item["width"] and 0 <= b["ymin"] < b["ymax"] <= item["height"]


def _colour_of(name: str) -> np.ndarray:
    return np.array(COLOURS[name.split()[0]], dtype=float)


def _check_box(frame: np.ndarray, name: str, box_px: list[float], tol: int = 2) -> None:
    """The object's colour fills its box: its colour is at the centre, and the pixels of that colour
    near the box span the box edge to edge (± `tol` px of codec blur)."""
    h, w, _ = frame.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box_px)
    want = _colour_of(name)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    centre = frame[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).astype(float).mean(0)
    assert np.abs(centre - want).max() < 45, f"{name}: centre colour {centre} != {want}"
    X1, Y1, X2, Y2 = max(0, x1 - 4), max(0, y1 - 4), min(w, x2 + 4), min(h, y2 + 4)
    region = frame[Y1:Y2, X1:X2].astype(float)
    match = np.abs(region - want).max(-1) < 60
    ys, xs = np.nonzero(match)
    got = (X1 + xs.min(), Y1 + ys.min(), X1 + xs.max() + 1, Y1 + ys.max() + 1)
    assert all(abs(g - t) <= tol for g, t in zip(got, (x1, y1, x2, y2))), f"{name}: colour spans {got}, box {box_px}"


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_boxes_hold_in_decoded_frames_at_key_frame_times(datasets, level):
    d = datasets[level]
    records, report = read_records(d / "train.jsonl")
    assert report.num_skipped == 0 and records
    checked = 0
    for r in records:
        if r.task == "spatial":
            frames, times = load_image(d / r.media_path), [0.0]
        else:
            v = decode_video(d / r.media_path, CFG)
            frames, times = v.frames, v.times
        H, W = frames.shape[1:3]
        for kf in r.key_frames:
            assert kf.time in times, f"{r.id}: key frame at {kf.time}s is not a shown frame {times}"
            frame = frames[times.index(kf.time)]
            for name, boxes in r.key_items[str(kf.idx)].items():
                for b in boxes:
                    # Other objects of the same colour right next to this one would blur the span test.
                    _check_box(frame, name, [b[0] * W, b[1] * H, b[2] * W, b[3] * H],
                               tol=2 if level != "hard" else 3)
                    checked += 1
    assert checked >= len(records)


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_text_times_are_shown_frame_times_and_text_boxes_match_key_items(datasets, level):
    d = datasets[level]
    for r in read_records(d / "train.jsonl", check_media_files=False)[0]:
        if r.task == "spatial":
            times, size = [0.0], load_image(d / r.media_path).shape[1:3][::-1]
        else:
            v = decode_video(d / r.media_path, CFG)
            times, size = v.times, v.frames.shape[1:3][::-1]
        claimed = [float(t) for t in re.findall(r"<t>([0-9.]+)</t>", r.reasoning)]
        assert claimed and set(claimed) <= set(times), (r.id, claimed, times)
        if r.span is not None:
            assert r.span[0] in times and r.span[1] in times
        # every claim box equals a key_items box (pixels of the shown frame) at the claim's time
        for name, box, t in re.findall(r"<obj>(.*?)</obj><box>\[(.*?)\]</box>at<t>(.*?)</t>s", r.reasoning):
            px = [int(v) for v in box.split(",")]
            idx = next(str(k.idx) for k in r.key_frames if k.time == float(t))
            gt = [[round(b[0] * size[0]), round(b[1] * size[1]), round(b[2] * size[0]), round(b[3] * size[1])]
                  for b in r.key_items[idx][name]]
            assert any(all(abs(p - g) <= 1 for p, g in zip(px, gb)) for gb in gt), (r.id, px, gt)


def test_sampler_grid_and_clamping():
    assert sample_frame_indices(6, 2.0, 2.0, 4, 16) == [0, 1, 2, 3, 4, 5]
    assert sample_frame_indices(40, 8.0, 2.0, 4, 16) == list(range(0, 40, 4))
    capped = sample_frame_indices(100, 10.0, 2.0, 4, 16)
    assert len(capped) == 16 and capped[0] == 0 and capped[-1] == 99
    assert sample_frame_indices(3, 2.0, 2.0, 4, 16) == [0, 1, 2]  # never more frames than exist


def test_stream_is_endless_fresh_and_resumable(tmp_path):
    first = list(itertools.islice(iter_samples(seed=1, difficulty="easy", out_dir=tmp_path), 6))
    assert len({r.id for r in first}) == 6
    assert all((tmp_path / r.media_path).is_file() for r in first)
    resumed = next(iter_samples(seed=1, difficulty="easy", out_dir=tmp_path / "again", start=4))
    assert resumed == first[4]


def test_box_check_catches_a_shifted_box_and_an_off_by_one_frame(datasets):
    """The checks above can fail: a box moved by 6 px, or the frame one sampling step later than
    the key frame (the reference code's labelling bug), is caught on a moving object."""
    d = datasets["easy"]
    for r in read_records(d / "train.jsonl", check_media_files=False)[0]:
        if r.question.startswith("Which way"):
            break
    else:
        pytest.skip("no direction question in the sample")
    v = decode_video(d / r.media_path, CFG)
    kf = r.key_frames[0]
    (name, boxes), = r.key_items[str(kf.idx)].items()
    box = [c * 112 for c in boxes[0]]
    k = v.times.index(kf.time)
    _check_box(v.frames[k], name, box)
    with pytest.raises(AssertionError):
        _check_box(v.frames[k], name, [box[0] + 6, box[1], box[2] + 6, box[3]])
    with pytest.raises(AssertionError):
        _check_box(v.frames[k + 1], name, box)


def test_parallel_generation_gives_the_same_files(tmp_path):
    generate_split(tmp_path / "one", "eval", 6, seed=2, difficulty="easy", progress=False)
    generate_split(tmp_path / "two", "eval", 6, seed=2, difficulty="easy", progress=False, workers=2)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_every_option_is_possible_at_its_level(level):
    """A blind model must not be able to rule options out: option names, colours and counts are
    all ones the level can produce, and the answer letter is spread over the options."""
    from stgrl.rollout.data.scene import DIFFICULTIES
    from stgrl.rollout.data.synth import make_sample

    lv = DIFFICULTIES[level]
    names = {f"{c} {s}" for c in lv.colours for s in lv.shapes}
    letters = []
    for i in range(0, 160):
        r = make_sample(i, 5, "train", level, CFG).record
        if not r.options or r.task == "temporal":
            continue
        letters.append(r.answer)
        texts = [o[3:] for o in r.options]
        if r.question.startswith("How many"):
            assert all(lv.min_objects <= int(t) <= lv.max_objects for t in texts), texts
        elif r.question.startswith("What colour"):
            assert set(texts) <= set(lv.colours)
        elif r.question.startswith("Which way"):
            assert sorted(texts) == ["down", "left", "right", "up"]
        else:
            assert set(texts) <= names, texts
    counts = [letters.count(x) for x in "ABCD"]
    assert min(counts[:2]) > len(letters) / 8, counts


def test_cli_synth_check_and_import(tmp_path):
    from stgrl.orchestration.cli import main

    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "4", "--eval", "4", "--difficulty", "easy"]) == 0
    assert len((out / "train.jsonl").read_text().splitlines()) == 4
    assert main(["data", "check", str(out / "eval.jsonl")]) == 0
    stgr = tmp_path / "stgr.json"
    stgr.write_text(json.dumps([{"task": "temporal QA", "video_path": "v.mp4", "question": "When?",
                                 "answer": "[1.0, 2.0]", "reasoning_process": "at <t>1.5</t>s"}]))
    assert main(["data", "import-stgr", str(stgr), "--out", str(tmp_path / "i.jsonl")]) == 0
    assert json.loads((tmp_path / "i.jsonl").read_text())["span"] == [1.0, 2.0]


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_which_object_questions_have_exactly_one_right_option(level):
    """Checked against the scene state: no other option is also a true answer."""
    from stgrl.rollout.data.synth import make_sample

    asked = 0
    for i in range(0, 400, 4):  # spatio_temporal samples
        s = make_sample(i, 7, "train", level, CFG)
        r, ev = s.record, s.scene.events
        answer = next((o[3:] for o in r.options if o[0] == r.answer), r.answer)
        names = {o[3:] for o in r.options} or {answer}
        if r.question.startswith("Which object appears"):
            true = {e.objects[0] for e in ev if e.kind == "appear"}
        elif r.question.startswith("Which object leaves"):
            true = {e.objects[0] for e in ev if e.kind == "disappear"}
        elif r.question.startswith("Which object does the"):
            a = r.question.removeprefix("Which object does the ").removesuffix(" bump into?")
            true = {n for e in ev if e.kind == "collide" and a in e.objects for n in e.objects} - {a}
        else:
            continue
        asked += 1
        assert true & names == {answer}, (r.id, r.question, r.options, true)
    assert asked >= 5
