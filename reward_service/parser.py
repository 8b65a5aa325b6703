"""Parser of the completion grammar (DESIGN 2.3), linear-time on any input.

```
<think> ... <obj>red car</obj><box>[x1,y1,x2,y2]</box>at<t>5.0</t>s ... </think>
<answer> ... </answer>
```

Why not the reference regex (`<obj>(.*?)</obj>((?:<box>\\[.*?\\]</box>)+)at<t>(.*?)</t>s`): `.*?` may
run across tags, so on a completion with many `<obj>` and no `</obj>` every start scans to the end -
quadratic, and a policy under RL finds such outputs. Here every variable part is `[^<]*`: it cannot
cross a `<`, and every match attempt starts at a `<`, so attempts cover disjoint stretches of text
and backtracking stays inside one stretch (O(n) in total; `test_properties` checks 0.5 MB vs 1 MB).
Blocks are found with `str.find`/`str.count`, so all the scanning happens in C: the parser is called
once per sample and its parts are built on first use (the reference re-parses per component).

Numbers are read with a strict pattern on bounded slices: NaN, inf, `1_000` or a 1 MB digit string
are rejected, never raised. Whitespace is tolerated between the pieces of a claim
(`</box> at <t>5</t> s`); nothing else is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?)"
_NUMBER = re.compile(rf"\s*{_NUM}\s*")
_BOX = re.compile(rf"\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]\s*")
_CLAIM = re.compile(r"<obj>([^<]*)</obj>((?:\s*<box>[^<]*</box>)+)\s*at\s*<t>([^<]*)</t>\s*s")
_BOX_TAG = re.compile(r"<box>([^<]*)</box>")
_T_TAG = re.compile(r"<t>([^<]*)</t>")
_OPTION = re.compile(r"\s*(?i:correct\s+option\s*:?|answer\s*:)?\s*[\(\[]?([A-Z])(?:[\)\]]|\.|:|\s|$)")
_BRACKET_SPAN = re.compile(r"\[([^\[\]]{1,128})\]")

MAX_NUMBER_CHARS = 64
"""A number longer than this is malformed (keeps float() and the pattern on bounded input)."""
MAX_BOX_CHARS = 256
MAX_NAME_CHARS = 256


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
    box = list(map(float, m.groups()))
    # one check for all four: a sum that overflows means coordinates near 1e308, garbage either way
    return box if math.isfinite(box[0] + box[1] + box[2] + box[3]) else None


def _block(text: str, name: str) -> tuple[int, int] | None:
    """(start, end) of the inside of the first `<name>` and the first `</name>` after it."""
    opening = f"<{name}>"
    i = text.find(opening)
    if i < 0:
        return None
    i += len(opening)
    j = text.find(f"</{name}>", i)
    return None if j < 0 else (i, j)


class ParsedCompletion:
    """Everything the reward components need from one completion. The think and answer blocks are
    located here; each part (claims, times, boxes) is read on first use and kept, so a task that needs
    no claims never builds them. (Hand-rolled caching: `functools.cached_property` takes a lock per
    access on Python 3.11, which cost more than the parsing.)"""

    __slots__ = ("text", "_think", "_answer", "_well_formed", "_claims", "_think_times", "_answer_times",
                 "_answer_boxes")

    def __init__(self, text: str) -> None:
        self.text = text
        self._think = _block(text, "think")
        self._answer = _block(text, "answer")
        self._well_formed: bool | None = None
        self._claims: list[Claim] | None = None
        self._think_times: list[float | None] | None = None
        self._answer_times: list[float | None] | None = None
        self._answer_boxes: list[list[float] | None] | None = None

    @property
    def think(self) -> str | None:
        """Text of the first `<think>…</think>` block, None if absent or unclosed."""
        return None if self._think is None else self.text[self._think[0] : self._think[1]]

    @property
    def answer(self) -> str | None:
        """Text of the first `<answer>…</answer>` block, None if absent or unclosed."""
        return None if self._answer is None else self.text[self._answer[0] : self._answer[1]]

    @property
    def well_formed(self) -> bool:
        """`<think>…</think>` then `<answer>…</answer>`, each exactly once, and `<obj>`, `<box>`, `<t>`
        balanced inside the think."""
        if self._well_formed is None:
            self._well_formed = self._check_form()
        return self._well_formed

    def _check_form(self) -> bool:
        text, think, answer = self.text, self._think, self._answer
        if think is None or answer is None or think[1] > answer[0]:
            return False
        if any(text.count(k) != 1 for k in ("<think>", "</think>", "<answer>", "</answer>")):
            return False
        a, b = think
        return all(text.count(f"<{n}>", a, b) == text.count(f"</{n}>", a, b) for n in ("obj", "box", "t"))

    @property
    def claims(self) -> list[Claim]:
        if self._claims is None:
            self._claims = [] if self._think is None else self._parse_claims(*self._think)
        return self._claims

    def _parse_claims(self, a: int, b: int) -> list[Claim]:
        out = []
        for m in _CLAIM.finditer(self.text, a, b):
            name = m.group(1)
            if len(name) <= MAX_NAME_CHARS:
                boxes = [parse_box(x) for x in _BOX_TAG.findall(m.group(2))]
                out.append(Claim(name=name.strip(), boxes=boxes, time=parse_number(m.group(3))))
        return out

    @property
    def think_times(self) -> list[float | None]:
        """Every `<t>X</t>` in the think, in order (None where X is not a finite number)."""
        if self._think_times is None:
            self._think_times = self._numbers(_T_TAG, self._think, parse_number)
        return self._think_times

    @property
    def answer_times(self) -> list[float | None]:
        if self._answer_times is None:
            self._answer_times = self._numbers(_T_TAG, self._answer, parse_number)
        return self._answer_times

    @property
    def answer_boxes(self) -> list[list[float] | None]:
        if self._answer_boxes is None:
            self._answer_boxes = self._numbers(_BOX_TAG, self._answer, parse_box)
        return self._answer_boxes

    def _numbers(self, tag: re.Pattern, block: tuple[int, int] | None, parse):
        return [] if block is None else [parse(x) for x in tag.findall(self.text, *block)]


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
