"""Parser of the completion grammar: claims, think/answer blocks, numbers, option letters."""

from __future__ import annotations

import pytest

from stgrl.reward_service.parser import (
    parse_box,
    parse_completion,
    parse_number,
    parse_option_letter,
    parse_span_text,
    predicted_span,
)


def test_claims_with_several_boxes_and_whitespace():
    text = ("<think>First <obj>The red cars</obj><box>[1,2,3,4]</box><box>[5, 6, 7, 8]</box>at<t>5.0</t>s, "
            "then <obj>dog</obj> <box>[0,0,10,10]</box> at <t>7</t> s.</think><answer>B</answer>")
    p = parse_completion(text)
    assert p.well_formed
    assert [(c.name, c.boxes, c.time) for c in p.claims] == [
        ("The red cars", [[1, 2, 3, 4], [5, 6, 7, 8]], 5.0),
        ("dog", [[0, 0, 10, 10]], 7.0),
    ]
    assert p.think_times == [5.0, 7.0]
    assert p.answer == "B"


def test_incomplete_claims_are_not_claims():
    text = ("<think><obj>car</obj>at<t>5</t>s <obj>car</obj><box>[1,2,3,4]</box><t>5</t>s "
            "<obj>car</obj><box>[1,2,3,4]</box>at<t>5</t> <obj>x</obj><box>[1,2,3,4]</box>at<t>2</t>s"
            "</think><answer>x</answer>")
    p = parse_completion(text)
    # no boxes / no "at" / no trailing "s": only the last one parses
    assert [(c.name, c.time) for c in p.claims] == [("x", 2.0)]


def test_malformed_box_and_time_are_kept_as_none():
    p = parse_completion("<think><obj>a</obj><box>[1,2,nan,4]</box><box>[1,2,3,4]</box>at<t>inf</t>s"
                         "</think><answer></answer>")
    assert len(p.claims) == 1
    c = p.claims[0]
    assert c.boxes == [None, [1, 2, 3, 4]] and c.time is None and not c.well_formed


@pytest.mark.parametrize("text,ok", [
    ("<think>x</think><answer>y</answer>", True),
    ("  <think>x</think>\n<answer>y</answer>\n", True),
    ("<answer>y</answer><think>x</think>", False),
    ("<think>x</think><think>x</think><answer>y</answer>", False),
    ("<think>x<answer>y</answer>", False),
    ("<think><obj>a</think><answer>y</answer>", False),  # unbalanced obj inside think
    ("<think><t>1</t></think><answer>y</answer></answer>", False),
    ("<think>x</think>", False),
])
def test_well_formed(text, ok):
    assert parse_completion(text).well_formed is ok


@pytest.mark.parametrize("s,v", [("5", 5.0), (" 5.25 ", 5.25), ("-1e2", -100.0), (".5", 0.5), ("nan", None),
                                 ("inf", None), ("1_000", None), ("", None), ("1e999", None), ("5s", None),
                                 ("9" * 100, None)])
def test_parse_number(s, v):
    assert parse_number(s) == v


def test_parse_box():
    assert parse_box("[1, 2.5, 3, 4]") == [1, 2.5, 3, 4]
    assert parse_box("[1,2,3]") is None
    assert parse_box("1,2,3,4") is None
    assert parse_box("[1,2,3,x]") is None


@pytest.mark.parametrize("s,letter", [("B", "B"), ("B.", "B"), ("(B)", "B"), ("[B]", "B"), ("B. a red car", "B"),
                                      ("Correct Option: C\n<t>1</t>s to <t>2</t>s", "C"),
                                      ("Answer: D", "D"), ("a dog", None), ("Because", None), ("", None),
                                      ("From <t>37.4</t>s to <t>39.4</t>s.\nCorrect Option: A", "A"),
                                      ("B\n<t>1</t>s to <t>2</t>s", "B"), ("B, the dog", "B"), ("B: dog", "B"),
                                      ("B ", "B"), ("correct option (C) it is", "C"),
                                      ("A man is walking", None), ("I think it is B", None),
                                      ("Correct Option: A man", None), ("x" * 5000 + "Correct Option: A", None)])
def test_option_letter(s, letter):
    assert parse_option_letter(s) == letter


def test_predicted_span():
    assert predicted_span(parse_completion("<answer><t>3.0</t>s to <t>7.5</t>s</answer>")) == (3.0, 7.5)
    assert predicted_span(parse_completion("<answer>from [3, 7.5]</answer>")) == (3.0, 7.5)
    assert predicted_span(parse_completion("<answer><t>3.0</t>s only</answer>")) is None
    assert parse_span_text("B\n[2.0, 4.5]") == (2.0, 4.5)


def test_option_letter_is_fast_on_whitespace_runs():
    """`Correct Option:` is searched anywhere in the first 4,096 characters; with plain `\\s*:?\\s*` a run
    of spaces after "correct option" backtracked quadratically (1.3 s per answer, measured: a reward
    request has a 2 s deadline). Possessive runs keep it linear (~0.1 ms)."""

    texts = ["correct option" + " " * 4100 + "x", "Correct Option" + "\t " * 2000 + ":" + " " * 90,
             "correct option " * 300, " " * 5000 + "B"]
    for t in texts:
        best = min(_cpu_time(parse_option_letter, t) for _ in range(3))
        assert best < 0.05, (t[:30], best)
        assert parse_option_letter(t) is None
    assert parse_option_letter("Correct Option" + " " * 3000 + ": (C)") == "C"


def _cpu_time(fn, arg) -> float:
    import time

    t0 = time.process_time()
    fn(arg)
    return time.process_time() - t0
