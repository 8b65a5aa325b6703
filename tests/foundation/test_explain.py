"""Our own words for undecodable lines and invalid values (stgrl.explain): hand-written cases, and a
property that any line msgspec refuses gets a message that names the line and never raises."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import Meta, Struct

from stgrl.explain import describe_bad_json_line, describe_type, find_invalid


def test_bad_lines_are_described_in_our_words():
    assert describe_bad_json_line(3, b'{"a": "\xff"}') == "line 3 is not valid UTF-8 (byte 0xff at offset 7)"
    assert describe_bad_json_line(1, b'{"a": "\\ud800"}') == (
        "line 1 holds a lone surrogate escape '\\ud800' at offset 7: half of a UTF-16 pair is not a character")
    assert describe_bad_json_line(1, '{"a": "\\udc00x"}').startswith("line 1 holds a lone surrogate escape '\\udc00'")
    assert describe_bad_json_line(2, b"{not json") == "line 2 is not valid JSON (malformed at character 1)"
    assert describe_bad_json_line(4, b'{"t": NaN}') == "line 4 is not valid JSON: NaN is not a JSON number"
    assert describe_bad_json_line(4, b'[-Infinity]') == "line 4 is not valid JSON: -Infinity is not a JSON number"
    assert describe_bad_json_line(5, b"[" * 100_000) == "line 5 is not valid JSON (nested too deeply)"


def test_a_valid_surrogate_pair_is_not_called_lone():
    # "\ud83d\ude00" is one emoji: a decoder that refused the line did so for another reason
    assert "surrogate" not in describe_bad_json_line(1, b'{"a": "\\ud83d\\ude00",}')


class Inner(Struct, forbid_unknown_fields=True):
    idx: Annotated[int, Meta(ge=0)]
    time: float


class Outer(Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    mode: Literal["sync", "async"] = "sync"
    frames: list[Inner] = []
    span: Annotated[list[float], Meta(min_length=2, max_length=2)] | None = None
    boxes: dict[str, list[Annotated[float, Meta(ge=0.0, le=1.0)]]] = {}


def test_find_invalid_names_the_path_and_what_it_must_be():
    assert find_invalid({"name": "a"}, Outer) is None
    assert find_invalid({}, Outer) == ("$.name", "required key is missing")
    assert find_invalid({"name": "a", "nmae": 1}, Outer) == (
        "$.nmae", "unknown key; allowed keys here: name, mode, frames, span, boxes")
    assert find_invalid({"name": 1}, Outer) == ("$.name", "must be a string, got 1 (an integer)")
    assert find_invalid({"name": "a", "mode": "x"}, Outer) == (
        "$.mode", "must be one of 'sync', 'async', got 'x' (a string)")
    assert find_invalid({"name": "a", "frames": [{"idx": 0, "time": 1}, {"idx": -1, "time": 1}]}, Outer) == (
        "$.frames[1].idx", "must be an integer >= 0, got -1 (an integer)")
    assert find_invalid({"name": "a", "span": [1.0]}, Outer) == (
        "$.span", "must be a list of exactly 2 items, each a number, got [1.0] (a list)")
    assert find_invalid({"name": "a", "boxes": {"car": [0.5, 1.5]}}, Outer) == (
        "$.boxes.car[1]", "must be a number >= 0.0 and <= 1.0, got 1.5 (a number)")
    assert find_invalid({"name": "a", "frames": {"idx": 1}}, Outer) == (
        "$.frames", "must be a list of a mapping with keys idx, time, got {'idx': 1} (a mapping)")


def test_lax_mode_accepts_what_msgspec_accepts_and_only_explains():
    assert find_invalid({"name": "a", "frames": [{"idx": "3", "time": "1.5"}]}, Outer, strict=False) is None
    assert find_invalid({"name": "a", "frames": [{"idx": "3", "time": "1.5"}]}, Outer)[0] == "$.frames[0].idx"


def test_describe_type_reads_bounds_and_choices():
    assert describe_type(Annotated[int, Meta(ge=1, le=8)]) == "an integer >= 1 and <= 8"
    assert describe_type(Literal[2, 3]) == "one of 2, 3"
    assert describe_type(str | None) == "a string or null"
    assert describe_type(Annotated[str, Meta(max_length=4)]) == "a string of at most 4 characters"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_refused_line_gets_a_message_naming_it(raw):
    decoder = msgspec.json.Decoder(Outer)
    try:
        decoder.decode(raw)
    except msgspec.ValidationError:
        return  # valid JSON, invalid value: find_invalid's job
    except (msgspec.DecodeError, UnicodeDecodeError):
        assert describe_bad_json_line(7, raw).startswith("line 7 ")
