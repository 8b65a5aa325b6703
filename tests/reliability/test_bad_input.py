"""Bad input (issue 12, part 2): each gets a clear, specific error or a counted skip, and the run goes on.

Gaps only; the rest is proven elsewhere (see docs/reliability.md): reader skips of broken JSON, missing
and corrupt/truncated media (tests/data), malformed and oversize frames and CURVE refusal
(tests/transport), 100k adversarial and 1 MB completions (tests/rewards), config errors
(tests/foundation/test_config.py).

Here: zero-length and huge-resolution videos through the reader and the prompt builder, NaN/inf and
non-UTF-8 bytes in dataset records, NaN/inf in a reward request's ground truth, unicode garbage and
1 MB completions through `stgrl rewards score`, and non-finite config values.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from stgrl.orchestration.cli import main
from stgrl.orchestration.config import ConfigError, load_config
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.rewards import score_sample
from stgrl.reward_service.types import COMPONENTS, TASKS, KeyFrame, ScoringSample
from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.records import Record, encode_record

pytestmark = pytest.mark.timeout(300)

CFG = DataConfig()
BIG_W, BIG_H = 3840, 2160  # 4K frames: 8.3 Mpx each, 66x the default max_pixels_per_frame


@pytest.fixture(scope="module")
def processor():
    """The embedded model's real Qwen2.5-VL processor (tokenizer trained locally; no model weights)."""
    import torch

    from stgrl.rollout.tiny_model import TinyModelSpec, build_processor, build_tokenizer

    torch.set_num_threads(1)
    spec = TinyModelSpec()
    return build_processor(build_tokenizer(spec, 0), spec)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A dataset folder with a 4K video, a zero-length video and a records file that uses them."""
    import imageio.v2 as iio

    root = tmp_path_factory.mktemp("bad-media")
    (root / "videos").mkdir()
    writer = iio.get_writer(root / "videos" / "big.mp4", fps=2, codec="libx264", macro_block_size=16)
    for i in range(4):
        frame = np.zeros((BIG_H, BIG_W, 3), np.uint8)
        frame[:, i * 400: i * 400 + 800] = (255, 40, 40)
        writer.append_data(frame)
    writer.close()
    (root / "videos" / "empty.mp4").write_bytes(b"")
    return root


def _general(rid: str, path: str) -> Record:
    return Record(id=rid, task="general", question="What colour is the bar?", answer="A",
                  options=["A. red", "B. blue"], video_path=path)


def test_zero_length_video_is_a_counted_skip_and_a_media_error(media, processor, caplog):
    from stgrl.rollout.video import MediaError, prepare_prompt

    path = media / "records.jsonl"
    path.write_bytes(b"\n".join(encode_record(r) for r in [
        _general("empty", "videos/empty.mp4"), _general("big", "videos/big.mp4"),
        _general("gone", "videos/gone.mp4")]) + b"\n")
    with caplog.at_level(logging.WARNING):
        records, report = read_records(path)
    assert [r.id for r in records] == ["big"]
    assert [(s.line, s.reason) for s in report.skipped] == [(1, "corrupt_media"), (3, "missing_media")]
    assert "empty.mp4" in report.skipped[0].message and "gone.mp4" in report.skipped[1].message
    assert f"{path}:1 skipped (corrupt_media)" in caplog.text
    # a worker that meets it anyway (file emptied after the read) gets a MediaError it counts and skips
    with pytest.raises(MediaError, match=r"cannot decode video .*empty\.mp4"):
        prepare_prompt(_general("empty", "videos/empty.mp4"), processor, CFG, media)


def test_huge_resolution_video_is_resized_to_max_pixels(media, processor):
    from stgrl.rollout.video import VideoCache, prepare_prompt, resized_size

    cache = VideoCache(capacity=1)
    pp = prepare_prompt(_general("big", "videos/big.mp4"), processor, CFG, media, cache)
    w, h = pp.frame_size
    assert w * h <= CFG.max_pixels_per_frame, (w, h)
    assert (w, h) == resized_size(BIG_W, BIG_H, CFG)  # aspect kept, multiples of 28
    assert abs(w / h - BIG_W / BIG_H) < 0.15
    n = len(pp.frame_times)
    assert n == 4
    grid = pp.model_inputs["image_grid_thw"]
    assert grid.shape == (n, 3)
    patches = int(grid.prod(-1).sum())
    assert pp.model_inputs["pixel_values"].shape[0] == patches <= n * CFG.max_pixels_per_frame // 14**2
    # the model input is bounded by max_pixels whatever the source size; the decode cache, though,
    # holds the native frames (docs/reliability.md: size VideoCache capacity for the largest videos)
    decoded = next(iter(cache._items.values()))
    assert decoded.frames.shape == (4, BIG_H, BIG_W, 3)
    pv = pp.model_inputs["pixel_values"]
    assert pv.numel() * pv.element_size() < decoded.frames.nbytes / 5


NUMBER_LINES = [  # (json text with a bad number, reason, words the message must hold)
    ('"key_frames": [{"idx": 0, "time": 1e999}]', "invalid_record", "$.key_frames[0].time: 1e999 is out of range"),
    ('"key_frames": [{"idx": 0, "time": NaN}]', "invalid_json", "NaN is not a JSON number"),
    ('"key_frames": [{"idx": 0, "time": Infinity}]', "invalid_json", "Infinity is not a JSON number"),
    ('"key_frames": [{"idx": 0, "time": -2.5}]', "invalid_record", "$.key_frames[0].time: must be a number >= 0"),
    ('"key_frames": [{"idx": 0, "time": 1.0}], "key_items": {"0": {"car": [[0.1, 0.1, 1e999, 0.5]]}}',
     "invalid_record", "$.key_items"),
    ('"key_frames": [{"idx": 0, "time": 1.0}], "key_items": {"0": {"car": [[0.1, NaN, 0.2, 0.5]]}}',
     "invalid_json", "NaN is not a JSON number"),
    ('"key_frames": [{"idx": 0, "time": 1.0}], "key_items": {"0": {"car": [[0.1, 0.1, 0.2, -1e-3]]}}',
     "invalid_record", "$.key_items"),
    ('"span": [1.0, 1e999]', "invalid_record", "$.span[1]"),
    ('"span": [-Infinity, 2.0]', "invalid_json", "-Infinity is not a JSON number"),
    ('"span": [5.0, 2.0]', "invalid_record", "0 <= start <= end"),
    ('"span": [1.0]', "invalid_record", "$.span: must be a list of exactly 2 items"),
]


def test_nan_inf_and_out_of_range_numbers_in_records_are_located_skips(tmp_path):
    base = '{"id": "r%d", "task": "temporal", "question": "q", "answer": "[1, 2]", "video_path": "v.mp4", %s}'
    good = base % (0, '"span": [1.0, 2.0], "key_frames": [{"idx": 0, "time": 1.5}]')
    lines = [good] + [base % (i + 1, text if "span" in text else text + ', "span": [1.0, 2.0]')
                      for i, (text, _, _) in enumerate(NUMBER_LINES)]
    # python's json module writes these non-standard tokens for nan/inf: the same skip, not a crash
    assert json.dumps(float("nan")) == "NaN"
    path = tmp_path / "numbers.jsonl"
    path.write_text("\n".join(lines + [good.replace('"r0"', '"r99"')]) + "\n")
    records, report = read_records(path, check_media_files=False)
    assert [r.id for r in records] == ["r0", "r99"]
    assert report.read == len(NUMBER_LINES) + 2
    for skipped, (text, reason, words) in zip(report.skipped, NUMBER_LINES, strict=True):
        assert skipped.reason == reason, (text, skipped)
        assert words in skipped.message, (text, skipped.message)
    assert [s.line for s in report.skipped] == list(range(2, len(NUMBER_LINES) + 2))


def test_non_utf8_and_unicode_garbage_lines_in_records(tmp_path):
    ok = {"id": "ok", "task": "general", "question": "q", "answer": "A", "video_path": "v.mp4"}
    lines = [
        json.dumps(ok).encode(),
        b'{"id": "latin\xff\xfe", "task": "general", "question": "q", "answer": "A", "video_path": "v.mp4"}',
        b"\xff\xfe\x00\x01 binary junk \x80\x81",
        b'{"id": "\\ud800", "task": "general", "question": "q", "answer": "A", "video_path": "v.mp4"}',
        json.dumps({**ok, "id": "weird \u202e\u200b\U0001f600\u0000", "question": "\u0301" * 1000},
                   ensure_ascii=False).encode(),
        b"\x00" * 64,
        json.dumps({**ok, "id": "last"}).encode(),
    ]
    path = tmp_path / "unicode.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, report = read_records(path, check_media_files=False)
    assert [r.id for r in records] == ["ok", "weird \u202e\u200b\U0001f600\u0000", "last"]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "invalid_json"), (3, "invalid_json"), (4, "invalid_json"), (6, "invalid_json")]
    assert [s.message for s in report.skipped] == [
        "line 2 is not valid UTF-8 (byte 0xff at offset 13)",
        "line 3 is not valid UTF-8 (byte 0xff at offset 0)",
        "line 4 holds a lone surrogate escape '\\ud800' at offset 8: half of a UTF-16 pair is not a character",
        "line 6 is not valid JSON (malformed at character 0)"]


BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -1.0, 5e-324]
COMPLETIONS = [
    "<think><obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s <t>3</t>s</think>"
    "<answer><t>3</t>s to <t>7</t>s <box>[0,0,50,50]</box> a red car</answer>",
    "<think><obj>red car</obj><box>[nan,inf,-inf,1e999]</box>at<t>nan</t>s</think>"
    "<answer><t>-inf</t>s to <t>inf</t>s <box>[1e308,1e308,-1e308,1e400]</box> A</answer>",
    "<think><obj>red car</obj><box>[" + "9" * 400 + ",0,1,1]</box>at<t>" + "9" * 400 + "</t>s</think>"
    "<answer><t>1e-400</t>s to <t>" + "9" * 400 + "</t>s</answer>",
]


def _check_unit(score) -> None:
    assert score.error is None, score.error
    assert set(score.components) <= set(COMPONENTS) and score.components
    for name, v in score.components.items():
        assert 0.0 <= v <= 1.0, (name, v)
    assert math.isfinite(score.total)


@pytest.mark.parametrize("where", ["time", "span", "frame_size", "box"])
def test_nan_inf_in_ground_truth_and_completion_keep_rewards_in_unit_interval(where):
    """The wire (msgpack) can carry NaN/inf in a request's numbers; a shard must still answer in [0, 1]."""
    checked = 0
    for v in BAD_NUMBERS:
        for task in TASKS:
            for completion in COMPLETIONS:
                sample = ScoringSample(
                    id="x", task=task, completion=completion, answer="a red car",
                    options=["A. red car", "B. dog"] if task == "general" else None,
                    key_frames=[KeyFrame(0, v if where == "time" else 2.0), KeyFrame(1, 6.0)],
                    key_items={"0": {"red car": [[0.0, 0.0, v, 0.5] if where == "box" else [0.0, 0.0, 0.5, 0.5]]}},
                    span=[v, 7.0] if where == "span" else [2.0, 6.0],
                    frame_size=[v, v] if where == "frame_size" else [100.0, 100.0])
                for cfg in (RewardConfig(), RewardConfig(spatial_mode="plain", object_match="any")):
                    _check_unit(score_sample(sample, 3, 10, cfg))
                    checked += 1
    assert checked == len(BAD_NUMBERS) * len(TASKS) * len(COMPLETIONS) * 2


ST = {"id": "st1", "task": "spatio_temporal", "answer": "a red car",
      "completion": "<think><obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s</think><answer>a red car</answer>",
      "key_frames": [{"idx": 0, "time": 2.0}], "key_items": {"0": {"red car": [[0, 0, 0.5, 0.5]]}},
      "frame_size": [100, 100]}


def test_unicode_garbage_and_1mb_completions_through_the_cli(tmp_path, capsys):
    garbage = "".join(chr(c) for c in (0x202E, 0x200B, 0xFEFF, 0x0000, 0x1F600, 0x0301, 0xFFFD, 0x10FFFF, 0x7F))
    one_mb = "<think>" + ("字<obj>\u202e" * 110_000) + "</think><answer>" + "\U0001f600" * 1000 + "</answer>"
    assert len(one_mb.encode()) > 1_000_000
    lines = [
        json.dumps(ST).encode(),                                                               # 1 ok
        json.dumps({**ST, "id": "g", "completion": garbage * 50}, ensure_ascii=False).encode(),  # 2 ok
        b'{"id": "b", "task": "general", "completion": "\xff\xfe\xc0 not utf-8", "frame_size": [1, 1]}',  # 3
        b'{"id": "s", "task": "general", "completion": "\\ud800 lone surrogate", "frame_size": [1, 1]}',  # 4
        json.dumps({**ST, "id": "big", "completion": one_mb}, ensure_ascii=False).encode(),    # 5 ok
        b"\xc3\x28\xa0\xa1" * 100,                                                             # 6
        json.dumps({**ST, "id": "inf", "frame_size": [float("inf"), 1]}).encode(),             # 7: Infinity
        json.dumps({**ST, "id": "last", "task": "general", "answer": "B",                      # 8 ok
                    "options": ["A. \u202e", "B. \U0001f600"], "completion": "<answer>B</answer>"}).encode(),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["rewards", "score", str(src), "--step", "1", "--total-steps", "4", "-o", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(lines)
    scored = {r["id"]: r for r in rows if "error" not in r}
    assert sorted(scored) == ["big", "g", "last", "st1"]
    for r in scored.values():
        assert all(0.0 <= v <= 1.0 for v in r["components"].values()) and math.isfinite(r["total"])
    assert scored["last"]["components"]["answer_accuracy"] == 1.0
    errors = {r["line"]: r for r in rows if "error" in r}
    assert sorted(errors) == [3, 4, 6, 7]
    assert errors[3]["error"] == "line 3 is not valid UTF-8 (byte 0xff at offset 46)"
    assert errors[6]["error"] == "line 6 is not valid UTF-8 (byte 0xc3 at offset 0)"
    assert errors[4]["error"].startswith("line 4 holds a lone surrogate escape '\\ud800'")
    assert errors[7]["error"] == "line 7 is not valid JSON: Infinity is not a JSON number"
    assert errors[7]["id"] == "inf"  # the line's id is recovered for the error row
    err = capsys.readouterr().err
    assert "line 3 is not valid UTF-8" in err and "line 6 is not valid UTF-8" in err


@pytest.mark.parametrize("override, key", [
    ("transport.timeout_s=.inf", "transport.timeout_s"),      # would turn every hang guard off
    ("reward.weights.format=.inf", "reward.weights.format"),  # inf * 0 = NaN reward
    ("reward.gate_delta_s=.nan", "reward.gate_delta_s"),
    ("learner.lr=-.inf", "learner.lr"),
    ("rollout.temperature=1e999", "rollout.temperature"),
])
def test_non_finite_config_values_are_refused_naming_the_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        load_config(None, [override])
    section, name = key.split(".", 1)
    value = override.split("=", 1)[1]
    if "." in name:  # nested section, e.g. reward.weights.format
        sub, leaf = name.split(".")
        text = f"{section}:\n  {sub}:\n    {leaf}: {value}\n"
    else:
        text = f"{section}:\n  {name}: {value}\n"
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        load_config(tmp_path / "c.yaml")
