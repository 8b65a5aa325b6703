"""Parser of the completion grammar (DESIGN 2.3), linear-time on any input.

```
<think> ... <obj>red car</obj><box>[x1,y1,x2,y2]</box>at<t>5.0</t>s ... </think>
<answer> ... </answer>
```

Why not the reference regex (`<obj>(.*?)</obj>((?:<box>\\[.*?\\]</box>)+)at<t>(.*?)</t>s`): on a
completion with many `<obj>` and no closing tag every start position scans to the end, which is
quadratic, and a policy under RL finds such outputs. Here one regex with only literal alternatives
(`<(/?)(think|answer|obj|box|t)>`, constant work per character) turns the text into a list of tag
tokens, and every structure is read by walking that list once; the text between two consecutive
tags is looked at a bounded number of times. Numbers are read with a strict pattern on slices of
bounded length, so NaN, inf, `1_000` or a 1 MB digit string are rejected, never raised.

Whitespace is tolerated between the pieces of a claim (`</box> at <t>5</t> s`); nothing else is.
The functions are pure; `parse_completion` is called once per sample and its result feeds every
reward component (the reference re-parses per component).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_TAG = re.compile(r"<(/?)(think|answer|obj|box|t)>")
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?)\s*")
_CLAIM_AT = re.compile(r"\s*at\s*")
_OPTION = re.compile(r"\s*(?i:correct\s+option\s*:?|answer\s*:)?\s*[\(\[]?([A-Z])(?:[\)\]]|\.|:|\s|$)")
_BRACKET_SPAN = re.compile(r"\[([^\[\]]{1,128})\]")

MAX_NUMBER_CHARS = 64
"""A number longer than this is malformed (keeps float() and the pattern on bounded input)."""
MAX_BOX_CHARS = 256
MAX_NAME_CHARS = 256


@dataclass(frozen=True, slots=True)
class Tag:
    """One tag token: `<name>` or `</name>` spanning text[start:end]."""

    start: int
    end: int
    closing: bool
    name: str


@dataclass(slots=True)
class Claim:
    """`<obj>NAME</obj><box>[..]</box>+ at<t>T</t>s`.

    A box whose content is not four finite numbers is kept as `None` (it still counts as a
    predicted box, so it costs like an extra box); a time that is not a finite number is `None`
    (the claim then fails the temporal gate and gets no proximity).
    """

    name: str
    boxes: list[list[float] | None]
    time: float | None

    @property
    def well_formed(self) -> bool:
        return self.time is not None and all(b is not None for b in self.boxes)


@dataclass(slots=True)
class ParsedCompletion:
    """Everything the reward components need from one completion, parsed once."""

    think: str | None
    """Text of the first `<think>…</think>` block, None if absent or unclosed."""
    answer: str | None
    """Text of the first `<answer>…</answer>` block, None if absent or unclosed."""
    well_formed: bool
    """`<think>…</think>` then `<answer>…</answer>`, each exactly once, and `<obj>`, `<box>`, `<t>`
    balanced inside the think."""
    claims: list[Claim] = field(default_factory=list)
    think_times: list[float | None] = field(default_factory=list)
    """Every `<t>X</t>` in the think, in order (None where X is not a finite number)."""
    answer_times: list[float | None] = field(default_factory=list)
    answer_boxes: list[list[float] | None] = field(default_factory=list)


def parse_number(text: str) -> float | None:
    """A finite decimal number (optionally signed, with exponent) or None. Never raises."""
    if len(text) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    v = float(m.group(1))
    return v if math.isfinite(v) else None


def parse_box(text: str) -> list[float] | None:
    """`[x1, y1, x2, y2]` (four finite numbers) or None. Inverted boxes are returned as written:
    the IoU step scores them 0."""
    if len(text) > MAX_BOX_CHARS:
        return None
    s = text.strip()
    if len(s) < 2 or s[0] != "[" or s[-1] != "]":
        return None
    parts = s[1:-1].split(",")
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        v = parse_number(p)
        if v is None:
            return None
        out.append(v)
    return out


def tokenize_tags(text: str) -> list[Tag]:
    """All grammar tags of `text` in order (one linear regex pass)."""
    return [Tag(m.start(), m.end(), m.group(1) == "/", m.group(2)) for m in _TAG.finditer(text)]


def _first_block(tags: list[Tag], name: str) -> tuple[int, int] | None:
    """Token indices (open, close) of the first `<name>` and the first `</name>` after it."""
    open_i = None
    for i, t in enumerate(tags):
        if t.name != name:
            continue
        if open_i is None:
            if not t.closing:
                open_i = i
        elif t.closing:
            return open_i, i
    return None


def _is_blank(text: str, start: int, end: int) -> bool:
    return start >= end or text[start:end].isspace()


def _parse_claims(text: str, tags: list[Tag], lo: int, hi: int) -> list[Claim]:
    """Claims among tokens lo..hi-1 (the inside of the think). Each token is visited O(1) times."""
    claims: list[Claim] = []
    i = lo
    while i < hi:
        t = tags[i]
        if t.closing or t.name != "obj":
            i += 1
            continue
        j = i + 1
        if j >= hi or tags[j].name != "obj" or not tags[j].closing:
            i = j
            continue
        name_end = tags[j].start
        name = text[t.end : name_end] if name_end - t.end <= MAX_NAME_CHARS else None
        k = j + 1
        pos = tags[j].end
        boxes: list[list[float] | None] = []
        while (
            k + 1 < hi
            and tags[k].name == "box"
            and not tags[k].closing
            and tags[k + 1].name == "box"
            and tags[k + 1].closing
            and _is_blank(text, pos, tags[k].start)
        ):
            boxes.append(parse_box(text[tags[k].end : tags[k + 1].start]))
            pos = tags[k + 1].end
            k += 2
        if (
            name is not None
            and boxes
            and k + 1 < hi
            and tags[k].name == "t"
            and not tags[k].closing
            and tags[k + 1].name == "t"
            and tags[k + 1].closing
            and _CLAIM_AT.fullmatch(text, pos, tags[k].start) is not None
            and _followed_by_s(text, tags[k + 1].end, tags[k + 2].start if k + 2 < len(tags) else len(text))
        ):
            time = parse_number(text[tags[k].end : tags[k + 1].start])
            claims.append(Claim(name=name.strip(), boxes=boxes, time=time))
            i = k + 2
        else:
            i = max(k, i + 1)
    return claims


def _followed_by_s(text: str, pos: int, limit: int) -> bool:
    """`s` after optional whitespace, looking no further than the next tag (keeps it linear)."""
    while pos < limit and text[pos].isspace():
        pos += 1
    return pos < limit and text[pos] == "s"


def _times(text: str, tags: list[Tag], lo: int, hi: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(lo, hi - 1):
        a, b = tags[i], tags[i + 1]
        if a.name == "t" and not a.closing and b.name == "t" and b.closing:
            out.append(parse_number(text[a.end : b.start]))
    return out


def _boxes(text: str, tags: list[Tag], lo: int, hi: int) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for i in range(lo, hi - 1):
        a, b = tags[i], tags[i + 1]
        if a.name == "box" and not a.closing and b.name == "box" and b.closing:
            out.append(parse_box(text[a.end : b.start]))
    return out


def _well_formed(tags: list[Tag], think: tuple[int, int] | None, answer: tuple[int, int] | None) -> bool:
    if think is None or answer is None:
        return False
    counts: dict[tuple[str, bool], int] = {}
    for t in tags:
        counts[(t.name, t.closing)] = counts.get((t.name, t.closing), 0) + 1
    for name in ("think", "answer"):
        if counts.get((name, False), 0) != 1 or counts.get((name, True), 0) != 1:
            return False
    if not think[1] < answer[0]:
        return False
    inner: dict[tuple[str, bool], int] = {}
    for t in tags[think[0] + 1 : think[1]]:
        inner[(t.name, t.closing)] = inner.get((t.name, t.closing), 0) + 1
    return all(inner.get((n, False), 0) == inner.get((n, True), 0) for n in ("obj", "box", "t"))


def parse_completion(text: str) -> ParsedCompletion:
    """Parse a completion once; every reward component reads the result. Never raises on str input."""
    tags = tokenize_tags(text)
    think = _first_block(tags, "think")
    answer = _first_block(tags, "answer")
    out = ParsedCompletion(
        think=text[tags[think[0]].end : tags[think[1]].start] if think else None,
        answer=text[tags[answer[0]].end : tags[answer[1]].start] if answer else None,
        well_formed=_well_formed(tags, think, answer),
    )
    if think is not None:
        out.claims = _parse_claims(text, tags, think[0] + 1, think[1])
        out.think_times = _times(text, tags, think[0] + 1, think[1])
    if answer is not None:
        out.answer_times = _times(text, tags, answer[0] + 1, answer[1])
        out.answer_boxes = _boxes(text, tags, answer[0] + 1, answer[1])
    return out


def parse_option_letter(text: str) -> str | None:
    """The option letter of a multiple-choice answer: `X`, `X.`, `(X)`, `[X]`, `X. text`, also after
    `Correct Option:` (temporal MCQ) or `Answer:`. Letters are capitals only, so a free-form
    "a dog" is not option A. None if there is none."""
    m = _OPTION.match(text[:MAX_BOX_CHARS])
    return m.group(1) if m else None


def parse_span_text(text: str) -> tuple[float, float] | None:
    """A `[s, e]` span written as text (the ground-truth answer of temporal tasks, last one wins)."""
    found = None
    for m in _BRACKET_SPAN.finditer(text):
        parts = m.group(1).split(",")
        if len(parts) == 2:
            s, e = parse_number(parts[0]), parse_number(parts[1])
            if s is not None and e is not None:
                found = (s, e)
    return found


def predicted_span(parsed: ParsedCompletion) -> tuple[float, float] | None:
    """`<t>S</t>s to <t>E</t>s` in the answer (first two times); falls back to `[S, E]` text."""
    times = parsed.answer_times[:2]
    if len(times) == 2:
        if times[0] is None or times[1] is None:
            return None
        return times[0], times[1]
    if parsed.answer is not None and not parsed.answer_times:
        return parse_span_text(parsed.answer[:4096])
    return None
