"""The one prompt builder for SFT, RL and eval (docs/design.md §2.2, 2.3; docs/conventions.md).

Each shown frame is its own image, labelled with its true time: `Frame 2 at 0.5s: <image>`. The
system prompt teaches the output grammar in as few tokens as possible (the tiny model has a short
context). `target_text` writes the SFT target in the same grammar the rewards parse.
"""

from __future__ import annotations

import re
from typing import Any

from stgrl.rollout.data.records import Record

SYSTEM_PROMPT = (
    "Think in <think></think>, then answer in <answer></answer>. "
    "Cite what you see as <obj>name</obj><box>[x1,y1,x2,y2]</box>at<t>T</t>s "
    "(box in frame pixels, T = frame time)."
)

_INSTRUCTION = {
    "mcq": "Answer with the option letter.",
    "free": "Answer in a few words.",
    "temporal": "Answer as <t>S</t>s to <t>E</t>s.",
    "temporal_mcq": "Answer as Correct Option: X then <t>S</t>s to <t>E</t>s.",
    "spatial": "Answer as <obj>name</obj><box>[x1,y1,x2,y2]</box>.",
}


def answer_style(record: Record) -> str:
    """Which answer form the task asks for (key of the instruction table)."""
    if record.task == "temporal":
        return "temporal_mcq" if record.options else "temporal"
    if record.task == "spatial":
        return "spatial"
    return "mcq" if record.options else "free"


def question_text(record: Record) -> str:
    """Question, options one per line, and the answer-form instruction."""
    parts = [record.question.strip()]
    parts += [o.strip() for o in record.options]
    parts.append(_INSTRUCTION[answer_style(record)])
    return "\n".join(parts)


def build_messages(record: Record, frame_times: list[float]) -> list[dict[str, Any]]:
    """Chat messages for `processor.apply_chat_template`: system grammar, then each frame as an
    image after its `Frame k at {t}s:` label, then the question."""
    content: list[dict[str, Any]] = []
    for k, t in enumerate(frame_times, start=1):
        content.append({"type": "text", "text": f"Frame {k} at {t:.1f}s: "})
        content.append({"type": "image"})
        content.append({"type": "text", "text": "\n"})
    content.append({"type": "text", "text": question_text(record)})
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": content},
    ]


def fmt_time(t: float) -> str:
    return f"{t:.1f}"


def fmt_box(box: list[float] | tuple[float, ...]) -> str:
    """`[x1,y1,x2,y2]` with integer pixels, no spaces (the form the reward regex reads)."""
    return "[" + ",".join(str(int(round(v))) for v in box) + "]"


def claim(name: str, boxes: list[list[float]] | list[tuple[int, ...]], t: float) -> str:
    """One evidence claim: `<obj>name</obj><box>[..]</box>…at<t>T</t>s`."""
    return f"<obj>{name}</obj>" + "".join(f"<box>{fmt_box(b)}</box>" for b in boxes) + f"at<t>{fmt_time(t)}</t>s"


_BOX_RE = re.compile(r"<box>\s*\[([^\[\]<>]{0,200})\]\s*</box>")


def scale_boxes(text: str, fx: float, fy: float) -> str:
    """Multiply x by `fx` and y by `fy` in every well-formed `<box>[x1,y1,x2,y2]</box>` of `text`."""

    def sub(m: re.Match[str]) -> str:
        try:
            v = [float(x) for x in m.group(1).split(",")]
        except ValueError:
            return m.group(0)
        if len(v) != 4:
            return m.group(0)
        return f"<box>{fmt_box([v[0] * fx, v[1] * fy, v[2] * fx, v[3] * fy])}</box>"

    return _BOX_RE.sub(sub, text)


def normalized_boxes_to_pixels(text: str, frame_size: tuple[int, int]) -> str:
    """Rewrite every `<box>[..]</box>` holding [0, 1] fractions as pixels of a W×H frame."""
    return scale_boxes(text, frame_size[0], frame_size[1])


def answer_text(record: Record, frame_size: tuple[int, int]) -> str:
    """The `<answer>` body in the output grammar (docs/design.md §2.1, 2.3).

    temporal: `<t>S</t>s to <t>E</t>s` from `span`; the MCQ form (record answer `"X\\n[s, e]"`)
    puts `Correct Option: X` on the first line, where the reward's option parser looks.
    Other tasks: the record's answer (boxes in pixels).
    """
    if record.task == "temporal":
        assert record.span is not None
        s, e = record.span
        text = f"<t>{fmt_time(s)}</t>s to <t>{fmt_time(e)}</t>s"
        if record.options:
            letter = record.answer.split("\n", 1)[0].strip()
            text = f"Correct Option: {letter}\n{text}"
        return text
    if record.box_space == "normalized":
        return normalized_boxes_to_pixels(record.answer, frame_size)
    return record.answer


def target_text(record: Record, frame_size: tuple[int, int]) -> str:
    """SFT target: `<think>{reasoning}</think>\\n<answer>{answer}</answer>` (docs/design.md §5)."""
    reasoning = record.reasoning
    if record.box_space == "normalized":
        reasoning = normalized_boxes_to_pixels(reasoning, frame_size)
    return f"<think>{reasoning}</think>\n<answer>{answer_text(record, frame_size)}</answer>"
