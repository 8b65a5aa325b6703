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

import functools
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

_TAG = re.compile(r"<(/?)(think|answer|obj|box|t)>")
_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?)"
_NUMBER = re.compile(rf"\s*{_NUM}\s*")
_BOX = re.compile(rf"\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]\s*")
_CLAIM_AT = re.compile(r"\s*at\s*")
_OPTION = re.compile(r"\s*(?i:correct\s+option\s*:?|answer\s*:)?\s*[\(\[]?([A-Z])(?:[\)\]]|\.|:|\s|$)")
_BRACKET_SPAN = re.compile(r"\[([^\[\]]{1,128})\]")

MAX_NUMBER_CHARS = 64
"""A number longer than this is malformed (keeps float() and the pattern on bounded input)."""
MAX_BOX_CHARS = 256
MAX_NAME_CHARS = 256


class Tags(NamedTuple):
    """The grammar tags of a text, as parallel lists: tag `i` is `kind[i]` (the literal tag, e.g.
    `"<obj>"` or `"</obj>"`) spanning `text[start[i]:end[i]]`. Lists rather than one object per tag:
    a 1 MB adversarial completion holds ~200k tags."""

    start: list[int]
    end: list[int]
    kind: list[str]


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
    the IoU step scores them 0. One bounded regex match (boxes hold most of the numbers)."""
    if len(text) > MAX_BOX_CHARS:
        return None
    m = _BOX.fullmatch(text)
    if m is None:
        return None
    box = [float(g) for g in m.groups()]
    return box if all(map(math.isfinite, box)) else None


def tokenize_tags(text: str) -> Tags:
    """All grammar tags of `text` in order (one linear regex pass)."""
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[str] = []
    for m in _TAG.finditer(text):
        a, b = m.span()
        starts.append(a)
        ends.append(b)
        kinds.append(m[0])
    return Tags(starts, ends, kinds)


def _first_block(kinds: list[str], name: str) -> tuple[int, int] | None:
    """Tag indices (open, close) of the first `<name>` and the first `</name>` after it."""
    opening, closing = f"<{name}>", f"</{name}>"
    try:
        i = kinds.index(opening)
        return i, kinds.index(closing, i + 1)
    except ValueError:
        return None


def _is_blank(text: str, start: int, end: int) -> bool:
    return start >= end or text[start:end].isspace()


def _followed_by_s(text: str, pos: int, limit: int) -> bool:
    """`s` after optional whitespace, looking no further than the next tag (keeps it linear)."""
    while pos < limit and text[pos].isspace():
        pos += 1
    return pos < limit and text[pos] == "s"


def _parse_claims(text: str, tags: Tags, lo: int, hi: int) -> list[Claim]:
    """Claims among tags lo..hi-1 (the inside of the think). Each tag is visited O(1) times: a failed
    attempt resumes at the first tag it could not consume, which is never an `<obj>` it skipped."""
    start, end, kind = tags
    claims: list[Claim] = []
    i = lo
    while i < hi:
        if kind[i] != "<obj>":
            i += 1
            continue
        j = i + 1
        if j >= hi or kind[j] != "</obj>":
            i = j
            continue
        name = text[end[i] : start[j]] if start[j] - end[i] <= MAX_NAME_CHARS else None
        k = j + 1
        pos = end[j]
        boxes: list[list[float] | None] = []
        while k + 1 < hi and kind[k] == "<box>" and kind[k + 1] == "</box>" and _is_blank(text, pos, start[k]):
            boxes.append(parse_box(text[end[k] : start[k + 1]]))
            pos = end[k + 1]
            k += 2
        if (
            name is not None
            and boxes
            and k + 1 < hi
            and kind[k] == "<t>"
            and kind[k + 1] == "</t>"
            and _CLAIM_AT.fullmatch(text, pos, start[k]) is not None
            and _followed_by_s(text, end[k + 1], start[k + 2] if k + 2 < len(kind) else len(text))
        ):
            claims.append(Claim(name=name.strip(), boxes=boxes, time=parse_number(text[end[k] : start[k + 1]])))
            i = k + 2
        else:
            i = max(k, i + 1)
    return claims


def _pairs(text: str, tags: Tags, lo: int, hi: int, opening: str, closing: str) -> list[str]:
    """Contents of every `opening…closing` pair of adjacent tags among tags lo..hi-1."""
    start, end, kind = tags
    return [text[end[i] : start[i + 1]] for i in range(lo, hi - 1) if kind[i] == opening and kind[i + 1] == closing]


class ParsedCompletion:
    """Everything the reward components need from one completion. The text is tokenized once here;
    each part (claims, times, boxes) is read from the tags on first use, so a task that needs no
    claims never builds them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tags = tokenize_tags(text)
        kinds = self.tags.kind
        self._think = _first_block(kinds, "think")
        self._answer = _first_block(kinds, "answer")

    def _slice(self, block: tuple[int, int] | None) -> str | None:
        return None if block is None else self.text[self.tags.end[block[0]] : self.tags.start[block[1]]]

    @functools.cached_property
    def think(self) -> str | None:
        """Text of the first `<think>…</think>` block, None if absent or unclosed."""
        return self._slice(self._think)

    @functools.cached_property
    def answer(self) -> str | None:
        """Text of the first `<answer>…</answer>` block, None if absent or unclosed."""
        return self._slice(self._answer)

    @functools.cached_property
    def well_formed(self) -> bool:
        """`<think>…</think>` then `<answer>…</answer>`, each exactly once, and `<obj>`, `<box>`, `<t>`
        balanced inside the think."""
        think, answer, kinds = self._think, self._answer, self.tags.kind
        if think is None or answer is None or not think[1] < answer[0]:
            return False
        if any(kinds.count(k) != 1 for k in ("<think>", "</think>", "<answer>", "</answer>")):
            return False
        inner = kinds[think[0] + 1 : think[1]]
        return all(inner.count(f"<{n}>") == inner.count(f"</{n}>") for n in ("obj", "box", "t"))

    @functools.cached_property
    def claims(self) -> list[Claim]:
        if self._think is None:
            return []
        return _parse_claims(self.text, self.tags, self._think[0] + 1, self._think[1])

    @functools.cached_property
    def think_times(self) -> list[float | None]:
        """Every `<t>X</t>` in the think, in order (None where X is not a finite number)."""
        if self._think is None:
            return []
        return [parse_number(x) for x in _pairs(self.text, self.tags, self._think[0] + 1, self._think[1], "<t>", "</t>")]

    @functools.cached_property
    def answer_times(self) -> list[float | None]:
        if self._answer is None:
            return []
        return [parse_number(x) for x in _pairs(self.text, self.tags, self._answer[0] + 1, self._answer[1], "<t>", "</t>")]

    @functools.cached_property
    def answer_boxes(self) -> list[list[float] | None]:
        if self._answer is None:
            return []
        return [parse_box(x) for x in _pairs(self.text, self.tags, self._answer[0] + 1, self._answer[1], "<box>", "</box>")]


def parse_completion(text: str) -> ParsedCompletion:
    """Parse a completion once; every reward component reads the result. Never raises on str input."""
    return ParsedCompletion(text)


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
