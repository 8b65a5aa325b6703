"""`stgrl rewards score`: output format, per-task components, bad lines, config + step."""

from __future__ import annotations

import json
import math

from stgrl.orchestration.cli import main

ST = {"id": "st1", "task": "spatio_temporal", "answer": "a red car",
      "completion": "<think><obj>red car</obj><box>[0,0,50,50]</box>at<t>5.0</t>s</think><answer>a red car</answer>",
      "key_frames": [{"idx": 0, "time": 2.0}], "key_items": {"0": {"red car": [[0, 0, 0.5, 0.5]]}},
      "frame_size": [100, 100], "question": "ignored extra field"}
TEMPORAL = {"id": "t1", "task": "temporal", "answer": "[5, 9]", "span": [5, 9], "key_frames": [], "key_items": {},
            "completion": "<think><t>6</t>s</think><answer><t>3</t>s to <t>7</t>s</answer>", "frame_size": [1, 1]}


def write_lines(path, lines) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_score_file_with_bad_lines(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [ST, "{not json", {"id": "x", "task": "spatial"}, TEMPORAL, {**TEMPORAL, "id": "u",
                                                                                   "task": "audio"}])
    rc = main(["rewards", "score", str(src), "--step", "0", "--total-steps", "4", "-o", str(out)])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5
    st = rows[0]
    assert set(st) == {"id", "total", "components"}
    assert set(st["components"]) == {"format", "answer_accuracy", "temporal_proximity", "spatial_gated"}
    # d = 3 s, step 0 of 4 -> sigma 3 -> exp(-0.5); gate closed (3 s > 1 s) -> spatial 0
    assert math.isclose(st["components"]["temporal_proximity"], math.exp(-0.5))
    assert st["components"]["spatial_gated"] == 0.0
    assert rows[1]["line"] == 2 and "error" in rows[1] and rows[1]["id"] is None
    assert rows[1]["error"] == "line 2 is not valid JSON (malformed at character 1)"
    assert rows[2]["line"] == 3 and rows[2]["id"] == "x"  # missing fields, named in our words
    assert rows[2]["error"] == "line 3 is not a scoring sample: $.completion: required key is missing"
    assert rows[3]["id"] == "t1" and math.isclose(rows[3]["components"]["answer_tiou"], 2 / 6)
    assert rows[4]["id"] == "u" and "unknown task" in rows[4]["error"]
    err = capsys.readouterr()
    assert "line 2 is not valid JSON" in err.err and "line 3 is not a scoring sample" in err.err
    assert "line 5 (id u)" in err.err
    assert err.out == ""


def test_step_and_config_reach_the_reward(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_lines(src, [ST])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reward:\n  gate_delta_s: 5.0\nrun:\n  total_steps: 4\n")
    assert main(["rewards", "score", str(src), "--step", "3", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1  # only the score on stdout, logs go to stderr
    row = json.loads(out[0])
    # last step: sigma = sigma_min = 1 -> exp(-4.5); gate of 5 s lets the exact box through
    assert math.isclose(row["components"]["temporal_proximity"], math.exp(-4.5))
    assert row["components"]["spatial_gated"] == 1.0
    assert main(["rewards", "score", str(src), "reward.spatial_mode=plain"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(row["components"]) == {"format", "answer_accuracy", "spatial_gated"}


def test_missing_input_is_an_error(tmp_path):
    assert main(["rewards", "score", str(tmp_path / "nope.jsonl")]) == 2


def test_a_line_that_is_not_utf8_is_that_lines_error(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"id": "bad", "task": "general\xff\xfe"}\n' + json.dumps(TEMPORAL).encode() + b"\n")
    assert main(["rewards", "score", str(src), "-o", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["line"] == 1 and "error" in rows[0]
    assert rows[1]["id"] == "t1" and "components" in rows[1]


def test_options_may_come_before_the_overrides(tmp_path, capsys):
    """The help text's own order, `score IN --config FILE KEY=VALUE`, and an option between overrides:
    argparse bound IN and an empty override list first and called the override unrecognized."""
    src = tmp_path / "in.jsonl"
    write_lines(src, [ST])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  total_steps: 4\n")
    assert main(["rewards", "score", str(src), "--step", "3", "--config", str(cfg),
                 "reward.gate_delta_s=5.0", "reward.object_match=any"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert math.isclose(row["components"]["temporal_proximity"], math.exp(-4.5))  # --step 3 of 4 reached
    assert row["components"]["spatial_gated"] == 1.0  # the 5 s gate (an override after the options) too
    assert main(["rewards", "score", str(src), "reward.spatial_mode=plain", "--total-steps", "4",
                 "reward.gate_delta_s=5.0"]) == 0  # overrides on both sides of an option
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(row["components"]) == {"format", "answer_accuracy", "spatial_gated"}
    assert row["components"]["spatial_gated"] == 1.0
