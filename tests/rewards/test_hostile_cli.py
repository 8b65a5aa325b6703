"""`stgrl rewards score` on deeply nested lines (issue 26 #7): an error row and exit 0, not an abort."""

from __future__ import annotations

import json

import pytest

from stgrl.orchestration.cli import main

pytestmark = pytest.mark.timeout(120)
GOOD = {"id": "t1", "task": "temporal", "answer": "[5, 9]", "span": [5, 9], "key_frames": [], "key_items": {},
        "completion": "<think><t>6</t>s</think><answer><t>3</t>s to <t>7</t>s</answer>", "frame_size": [1, 1]}


def test_deeply_nested_lines_are_error_rows_and_the_run_goes_on(tmp_path, capsys):
    depth = 200_000
    nested = "[" * depth + "]" * depth
    lines = [
        json.dumps(GOOD),
        json.dumps({**GOOD, "id": "deep-extra"})[:-1] + f', "x": {nested}}}',  # under a field we ignore
        json.dumps({**GOOD, "id": "deep-key-items"}).replace('"key_items": {}', f'"key_items": {nested}'),
        nested,
        json.dumps({**GOOD, "id": "t2"}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert main(["rewards", "score", str(src), "--total-steps", "4", "-o", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("id") for r in rows] == ["t1", None, None, None, "t2"]  # no id: json cannot read it either
    assert [r.get("line") for r in rows[1:4]] == [2, 3, 4]
    assert rows[1]["error"] == "line 2 is not valid JSON (nested too deeply)"  # skipping the unknown field recursed
    assert rows[2]["error"] == rows[3]["error"].replace("4", "3") == (
        "line 3 is not a scoring sample: nested too deeply to read")
    assert "total" in rows[0] and "total" in rows[4]
    assert "line 2 is not valid JSON" in capsys.readouterr().err
