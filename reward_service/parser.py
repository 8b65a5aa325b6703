"""Parser of the completion grammar (docs/design.md §2.3), linear-time on any input.

```
<think> ... <obj>red car</obj><box>[x1,y1,x2,y2]</box>at<t>5.0</t>s ... </think>
<answer> ... </answer>
```

Why not the reference regex (`<obj>(.*?)</obj>((?:<box>\\[.*?\\]</box>)+)at<t>(.*?)</t>s`): `.*?` may
run across tags, so on a completion with many `<obj>` and no `</obj>` every start scans to the end -
quadratic, and a policy under RL finds such outputs. Here every variable part is `[^<]*`: it cannot
cross a `<`, and every match attempt starts at a `<`, so attempts cover disjoint stretches of text
and backtracking stays inside one stretch (O(n) in total; `test_properties` checks 0.5 MB vs 1 MB).
Blocks are found by one `FORM` match (the common well-formed completion: blocks and `well_formed`
at once), else with `str.find`/`str.count`, so all the scanning happens in C: the parser is called
once per sample and its parts are built on first use (the reference re-parses per component). The
module functions (`blocks`, `parse_claims`, `times_in`, `claim_boxes`, `parse_box`) are what the
reward's fast path calls on plain spans; `ParsedCompletion` is the same reading as an object.

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
# Possessive quantifiers (`*+`, `++`) never change what these match - each is followed by a `<` or a
# piece its run cannot hold, so giving characters back never helps - but save the engine its
# backtracking bookkeeping (~20 % on the claims). `test_fast_path` checks them against the plain forms.
_CLAIM = re.compile(r"<obj>([^<]*+)</obj>((?:\s*+<box>[^<]*+</box>)++)\s*+at\s*+<t>([^<]*+)</t>\s*+s")
_BOX_TAG = re.compile(r"<box>([^<]*+)</box>")
_T_TAG = re.compile(r"<t>([^<]*+)</t>")
_T_SECONDS = re.compile(r"<t>([^<]*+)</t>\s*+s")
"""A time mention with its unit, `<t>X</t>s` (whitespace before the `s` tolerated, as in claims): what
the reference's proximity reward averages over (`<t>([\\d.]+)</t>s`); a bare `<t>X</t>` is not one."""
_INT = r"([0-9]{1,60})"
_INT_BOX = re.compile(rf"\[{_INT},{_INT},{_INT},{_INT}\]")
"""`[int,int,int,int]` in ASCII digits, at most 60 per number: always a strict `_BOX` match, finite,
within `MAX_BOX_CHARS`, and each number read by `float` as the strict path reads it."""
_INT_BOX_TAG = re.compile(rf"\s*+<box>\[{_INT},{_INT},{_INT},{_INT}\]")
_INT_BOX_TAGS = re.compile(rf"\s*+<box>\[{_INT},{_INT},{_INT},{_INT}\]</box>")
_LETTER_END = r"(?:[\)\]]|[.:,]|[ \t]*+(?:\r?\n|$))"
"""What must follow an option letter: a closing bracket, `.`, `:`, `,`, or the end of the line or text
("A man is walking" is not option A, "I think it is B" is not option I)."""
# Possessive whitespace runs: what follows each (`:`, a bracket, a letter, a line end) is never
# whitespace, so giving some back never helps - and a plain `\s*:?\s*` backtracks quadratically on a
# long run of spaces after "correct option" (1.3 s for 4 KB, measured; this form: linear).
_OPTION = re.compile(rf"\s*+(?i:answer\s*+:)?\s*+[\(\[]?([A-Z]){_LETTER_END}")
_CORRECT_OPTION = re.compile(rf"(?i:correct\s++option)\s*+:?\s*+[\(\[]?([A-Z]){_LETTER_END}")
"""`Correct Option: X` anywhere in the answer: the reference's temporal-MCQ prompt asks for the span
first and the option after it (`From <t>37.4</t>s to <t>39.4</t>s.\nCorrect Option: A`)."""
_BRACKET_SPAN = re.compile(r"\[([^\[\]]{1,128})\]")

FORM = re.compile(
    r"[^<]*+<think>([^<]*+(?:<(?:obj>[^<]*+</obj|box>[^<]*+</box|t>[^<]*+</t)>[^<]*+)*+)</think>"
    r"[^<]*+<answer>([^<]*+(?:</?(?:obj|box|t)>[^<]*+)*+)</answer>[^<]*+"
)
"""The common well-formed completion in one C-level pass: no `<` outside the two blocks but their four
tags, the think made of text and closed `<obj>`/`<box>`/`<t>` units (so balanced), the answer of text
and inner tags. A full match proves `well_formed` and gives both blocks; anything else (a stray `<`,
a nested unit, a malformed completion) falls back to `str.find` and the tag counts. Written as
unrolled loops (a text run, then units each followed by a text run) with possessive quantifiers:
every iteration starts at a `<` and nothing is given back, so it is linear on any input (and ~30 %
faster than an alternation of text runs and units)."""
_INNER_PAIRS = (("<obj>", "</obj>"), ("<box>", "</box>"), ("<t>", "</t>"))
_INNER_TAGS = ("<box>", "</box>", "<t>", "</t>", "<obj>", "</obj>")

MAX_NUMBER_CHARS = 64
"""A number longer than this is malformed (keeps float() and the pattern on bounded input)."""
MAX_BOX_CHARS = 256
MAX_NAME_CHARS = 256
MAX_ANSWER_SCAN_CHARS = 4096
"""The answer's free-text readings (`[S, E]` span fallback, `Correct Option: X`) look at this many
characters at most: a huge answer costs a bounded scan."""


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


RawClaim = list
"""`[name, box tags (the claim's `(\\s*<box>CONTENT</box>)+` as written), time, boxes (None until
`claim_boxes` reads them)]`."""


def parse_number(text: str) -> float | None:
    """A finite decimal number (optionally signed, with exponent) or None. Never raises.

    Memoised per string (times such as `5.2` recur across completions). A miss takes the fast path for
    the common `123` / `1.5` (ASCII digits and at most one dot, no sign, exponent or space): such a
    string always matches the strict pattern and `float` reads it the same way, so only the other
    spellings pay for the regex."""
    v = _NUMBERS.get(text, _MISSING)
    if v is not _MISSING:
        return v  # type: ignore[return-value]
    if len(text) <= MAX_NUMBER_CHARS and text.replace(".", "", 1).isdigit() and text.isascii():
        v = float(text)
    else:
        v = _parse_number_strict(text)
    if len(text) <= MAX_NUMBER_CHARS:
        if len(_NUMBERS) >= MAX_MEMO_NUMBERS:
            _NUMBERS.clear()
        _NUMBERS[text] = v
    return v  # type: ignore[return-value]


_MISSING = object()
_NUMBERS: dict[str, float | None] = {}
MAX_MEMO_NUMBERS = 16384


def reset_caches() -> None:
    """Forget memoised numbers (benchmarks measure cold passes with it)."""
    _NUMBERS.clear()


def _parse_number_strict(text: str) -> float | None:
    if len(text) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    v = float(m.group(1))
    return v if math.isfinite(v) else None


def parse_box(text: str) -> list[float] | None:
    """`[x1, y1, x2, y2]` (four finite numbers) or None. Inverted boxes are returned as written:
    the IoU step scores them 0. Fast path for the common `[int,int,int,int]` (`_INT_BOX`), its numbers
    read through the number memo; everything else is one bounded regex match."""
    m = _INT_BOX.fullmatch(text)
    if m is not None:
        return _int_box(*m.groups())
    return _parse_box_strict(text)


def _int_box(a: str, b: str, c: str, d: str) -> list[float]:
    """The box of four ASCII digit strings, each read through the number memo (pixel coordinates
    repeat: a dict hit is several times cheaper than `float(str)`)."""
    get = _NUMBERS.get  # (a digit string's memoised value is never None)
    x1, y1, x2, y2 = get(a), get(b), get(c), get(d)
    if x1 is None or y1 is None or x2 is None or y2 is None:  # a miss: only those are read
        return [_digits_number(a) if x1 is None else x1, _digits_number(b) if y1 is None else y1,
                _digits_number(c) if x2 is None else x2, _digits_number(d) if y2 is None else y2]
    return [x1, y1, x2, y2]


def _digits_number(text: str) -> float:
    """`parse_number` of an ASCII digit string (at most 60 digits), memoised."""
    if len(_NUMBERS) >= MAX_MEMO_NUMBERS:
        _NUMBERS.clear()
    v = _NUMBERS[text] = float(text)
    return v


def _parse_box_strict(text: str) -> list[float] | None:
    if len(text) > MAX_BOX_CHARS:
        return None
    m = _BOX.fullmatch(text)
    if m is None:
        return None
    box = list(map(float, m.groups()))
    # one check for all four: a sum that overflows means coordinates near 1e308, garbage either way
    return box if math.isfinite(box[0] + box[1] + box[2] + box[3]) else None


def blocks(text: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None, bool | None]:
    """(think, answer, well_formed) of `text`: the (start, end) of the inside of the first `<think>`
    and the first `</think>` after it (same for the answer; None if absent or unclosed), and True when
    `FORM` proves the completion well formed, else None (not decided: `form_by_counts` decides)."""
    m = FORM.fullmatch(text)
    if m is not None:
        _, think, answer = m.regs
        return think, answer, True
    i = text.find("<think>")
    j = -1 if i < 0 else text.find("</think>", i + 7)
    think = None if j < 0 else (i + 7, j)
    i = text.find("<answer>")
    j = -1 if i < 0 else text.find("</answer>", i + 8)
    return think, (None if j < 0 else (i + 8, j)), None


def form_by_counts(text: str, think: tuple[int, int] | None, answer: tuple[int, int] | None) -> bool:
    """The definition of `well_formed`, one count per tag, given the blocks `blocks` found."""
    if think is None or answer is None or think[1] > answer[0]:
        return False
    if any(text.count(k) != 1 for k in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    a, b = think
    return all(text.count(f"<{n}>", a, b) == text.count(f"</{n}>", a, b) for n in ("obj", "box", "t"))


def parse_claims(text: str, a: int, b: int) -> list[RawClaim]:
    """The claims in `text[a:b]` as raw claims (see `RawClaim`)."""
    return _raw_claims(_CLAIM.findall(text, a, b))


def _raw_claims(found: list[tuple[str, str, str]]) -> list[RawClaim]:
    out: list[RawClaim] = []
    memo = _NUMBERS.get
    for name, boxes, t in found:
        if len(name) <= MAX_NAME_CHARS:
            v = memo(t, _MISSING)  # parse_number(t), its memo looked up inline (hot)
            out.append([name.strip(), boxes, parse_number(t) if v is _MISSING else v, None])
    return out


def times_in(text: str, span: tuple[int, int] | None) -> list[float | None]:
    """Every `<t>X</t>` in `text[span]`, read by `parse_number` (`think_times`/`answer_times`)."""
    if span is None:
        return []
    found = _T_TAG.findall(text, *span)
    got = list(map(_NUMBERS.get, found))  # parse_number's memo, read by one C-level map (hot)
    return got if None not in got else list(map(parse_number, found))  # a miss, or a malformed time


def second_times_in(text: str, span: tuple[int, int] | None) -> list[float | None]:
    """Every `<t>X</t>s` in `text[span]`, read by `parse_number` (`think_second_times`)."""
    return [] if span is None else list(map(parse_number, _T_SECONDS.findall(text, *span)))


def boxes_in(text: str, span: tuple[int, int] | None) -> list[list[float] | None]:
    """Every `<box>X</box>` in `text[span]`, read by `parse_box` (`answer_boxes`)."""
    return [] if span is None else list(map(parse_box, _BOX_TAG.findall(text, *span)))


class ParsedCompletion:
    """Everything the reward components need from one completion. The think and answer blocks are
    located here; each part (claims, times, boxes) is read on first use and kept, so a task that needs
    no claims never builds them. (Hand-rolled caching: `functools.cached_property` takes a lock per
    access on Python 3.11, which cost more than the parsing.)"""

    __slots__ = ("text", "_think", "_answer", "_well_formed", "_claims", "_raw_claims", "_think_times",
                 "_answer_times", "_answer_boxes", "_think_tags", "_answer_tags", "_think_second_times")

    def __init__(self, text: str) -> None:
        self.text = text
        # (start, end) of the inside of the first `<think>` and the first `</think>` after it; same
        # for the answer; `well_formed` already when `FORM` proves it (the common case)
        self._think, self._answer, self._well_formed = blocks(text)
        self._claims: list[Claim] | None = None
        self._raw_claims: list[RawClaim] | None = None
        self._think_times: list[float | None] | None = None
        self._answer_times: list[float | None] | None = None
        self._answer_boxes: list[list[float] | None] | None = None
        self._think_second_times: list[float | None] | None = None
        # how many `<` of the think / the answer the parts read so far consist of (tags of complete
        # claims, `<t>X</t>` or `<box>X</box>`, each balanced); lets `well_formed` skip its counts
        self._think_tags = -1
        self._answer_tags = -1

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
        """`_check_form_by_counts` with fewer scans in the common case, by accounting for every `<` of
        the text: if the only `<` outside the two blocks are their four tags (found at known, distinct
        places) and the only `<` inside them belong to `<obj>`/`<box>`/`<t>` tags, each block tag
        occurs exactly once, and only the balance inside the think is left to check. Parts already
        parsed account for their tags (a complete claim or `<t>X</t>` is balanced), and only what they
        leave over is counted tag by tag. Whenever a `<` is not accounted for, the full count decides."""
        text, think, answer = self.text, self._think, self._answer
        if think is None or answer is None or think[1] > answer[0]:
            return False
        a, b = think
        c, d = answer
        if c - 8 < b:  # `<answer>` overlaps the think: let the full count decide
            return self._check_form_by_counts()
        in_think = text.count("<", a, b)
        outside = text.count("<") - in_think - 4  # the `<` left for the answer's inside, if all is well
        if outside:
            in_answer = text.count("<", c, d)
            if outside != in_answer:
                return self._check_form_by_counts()
        else:  # the four tags lie outside both insides, so every other `<` is inside the think
            in_answer = 0
        if in_answer and in_answer != self._answer_tags:
            seen = 0
            for tag in _INNER_TAGS:
                seen += text.count(tag, c, d)
                if seen == in_answer:
                    break
            else:
                return self._check_form_by_counts()
        if in_think == 0 or in_think == self._think_tags:
            return True
        seen = 0
        for opening, closing in _INNER_PAIRS:
            n_open = text.count(opening, a, b)
            if n_open != text.count(closing, a, b):
                return False  # an unbalanced pair: not well formed whatever else the think holds
            seen += 2 * n_open
            if seen == in_think:
                return True
        return self._check_form_by_counts()

    def _check_form_by_counts(self) -> bool:
        """The definition of `well_formed`, one count per tag (reference twin of `_check_form`)."""
        return form_by_counts(self.text, self._think, self._answer)

    @property
    def claims(self) -> list[Claim]:
        if self._claims is None:
            self._claims = [Claim(name=c[0], boxes=claim_boxes(c), time=c[2]) for c in self.raw_claims]
        return self._claims

    @property
    def raw_claims(self) -> list[RawClaim]:
        """The claims as `[name, box tags, time, boxes]` lists whose boxes are read on first use
        (`claim_boxes`): the reward's hot path reads them only for claims that pass the gate."""
        if self._raw_claims is None:
            self._raw_claims = [] if self._think is None else self._parse_claims(*self._think)
        return self._raw_claims

    def _parse_claims(self, a: int, b: int) -> list[RawClaim]:
        found = _CLAIM.findall(self.text, a, b)
        # <obj></obj>, <t></t>, and <box></box> per box (`(\s*<box>[^<]*</box>)+`: one `</box>` each)
        tags = sum(4 + 2 * boxes.count("</box>") for _, boxes, _ in found)
        out = _raw_claims(found)
        if tags > self._think_tags:
            self._think_tags = tags
        return out

    @property
    def think_times(self) -> list[float | None]:
        """Every `<t>X</t>` in the think, in order (None where X is not a finite number)."""
        if self._think_times is None:
            found = [] if self._think is None else _T_TAG.findall(self.text, *self._think)
            if 2 * len(found) > self._think_tags:
                self._think_tags = 2 * len(found)
            self._think_times = list(map(parse_number, found))
        return self._think_times

    @property
    def think_second_times(self) -> list[float | None]:
        """Every `<t>X</t>s` in the think (a time with its unit), in order (None where X is not a
        finite number): `proximity_scope="all"` averages over these, as the reference does."""
        if self._think_second_times is None:
            self._think_second_times = second_times_in(self.text, self._think)
        return self._think_second_times

    @property
    def answer_times(self) -> list[float | None]:
        if self._answer_times is None:
            found = [] if self._answer is None else _T_TAG.findall(self.text, *self._answer)
            if 2 * len(found) > self._answer_tags:
                self._answer_tags = 2 * len(found)
            self._answer_times = list(map(parse_number, found))
        return self._answer_times

    @property
    def answer_boxes(self) -> list[list[float] | None]:
        if self._answer_boxes is None:
            found = [] if self._answer is None else _BOX_TAG.findall(self.text, *self._answer)
            if 2 * len(found) > self._answer_tags:
                self._answer_tags = 2 * len(found)
            self._answer_boxes = list(map(parse_box, found))
        return self._answer_boxes


def claim_boxes(claim: RawClaim) -> list[list[float] | None]:
    """The boxes of a raw claim, read once (then kept in it). The common one-box claim written
    `<box>[int,int,int,int]</box>` is read by one match; otherwise each box by `parse_box`'s fast path
    on the piece itself, or `parse_box`."""
    boxes = claim[3]
    if boxes is None:
        raw = claim[1]
        m = _INT_BOX_TAGS.fullmatch(raw)
        if m is not None:
            boxes = [_int_box(*m.groups())]
        else:
            boxes = []
            # splitting at `</box>` leaves `\s*<box>CONTENT` pieces (and a last empty one)
            for x in raw.split("</box>")[:-1]:
                m = _INT_BOX_TAG.fullmatch(x)
                boxes.append(_int_box(*m.groups()) if m is not None else parse_box(x[x.find("<box>") + 5 :]))
        claim[3] = boxes
    return boxes


def parse_completion(text: str) -> ParsedCompletion:
    """Parse a completion once; every reward component reads the result. Never raises on str input."""
    return ParsedCompletion(text)


def parse_option_letter(text: str) -> str | None:
    """The option letter of a multiple-choice answer: `Correct Option: X` anywhere in the answer's
    first `MAX_ANSWER_SCAN_CHARS` characters (temporal MCQ, where the reference prompt puts it after
    the span), else an answer that starts with `X`, `X.`, `(X)`, `[X]`, `X. text` or `Answer: X`.
    A letter must be followed by a delimiter or the end of the line (`_LETTER_END`), and letters are
    capitals only, so neither "a dog" nor "A man is walking" is option A. None if there is none."""
    m = _CORRECT_OPTION.search(text, 0, MAX_ANSWER_SCAN_CHARS)
    if m is None:
        m = _OPTION.match(text, 0, MAX_BOX_CHARS)  # as on text[:MAX_BOX_CHARS], without the copy
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
        return parse_span_text(parsed.answer[:MAX_ANSWER_SCAN_CHARS])
    return None
