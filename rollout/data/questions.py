"""Questions, answers, evidence and SFT reasoning for one simulated scene, for all four tasks.

Every time written here is the true time of a frame the sampler shows (`Scene.sampled`), every box
is read from the scene state: pixels of the shown (resized) frame in text, normalized in
`key_items`. A builder returns None when the scene does not suit it (the generator then draws
another scene), so no question is ever asked about something that did not happen.
"""

from __future__ import annotations

import random
from typing import Literal

from msgspec import Struct

from stgrl.rollout.data.scene import Box, Difficulty, Scene
from stgrl.rollout.prompts import claim, fmt_box, fmt_time
from stgrl.rollout.video import frame_time

LETTERS = "ABCD"


class VstarInfo(Struct, kw_only=True):
    """What the V-STAR export needs beyond the record: the object, its when-span, and its boxes
    on every shown frame of the span (native pixels)."""

    object: str
    when_question: str
    where_phrase: str
    span: tuple[float, float]
    boxes: list[tuple[float, int, Box]]
    """(timestamp, native frame index, box)."""
    answer_text: str


class Draft(Struct, kw_only=True):
    """A record before ids and paths are attached (plus the still frame for `spatial`)."""

    task: Literal["spatio_temporal", "temporal", "spatial", "general"]
    question: str
    answer: str
    options: list[str] = []
    key_frames: list[tuple[int, float]] = []
    key_items: dict[str, dict[str, list[list[float]]]] = {}
    span: list[float] | None = None
    reasoning: str = ""
    still_frame: int | None = None
    vstar: VstarInfo | None = None


class Ctx:
    """Scene + scale from native pixels to the resized frame the model sees."""

    def __init__(self, scene: Scene, rng: random.Random, resized: tuple[int, int], free_form_p: float,
                 level: Difficulty):
        self.level = level  # distractors come from the level's own palette: no name is a giveaway
        self.scene = scene
        self.rng = rng
        self.sx = resized[0] / scene.width
        self.sy = resized[1] / scene.height
        self.free_form_p = free_form_p

    def t(self, i: int) -> float:
        return frame_time(i, self.scene.native_fps)

    def px(self, box: Box) -> list[float]:
        """Box in resized-frame pixels."""
        return [box[0] * self.sx, box[1] * self.sy, box[2] * self.sx, box[3] * self.sy]

    def norm(self, box: Box) -> list[float]:
        """Box as fractions of the frame. 10 decimals: with 4, an easy box inset 4 px in a 112 px
        frame (4/112 = 0.0357…) came back 0.002 px off, so a perfect claim scored IoU 0.9997."""
        w, h = self.scene.width, self.scene.height
        return [round(box[0] / w, 10), round(box[1] / h, 10), round(box[2] / w, 10), round(box[3] / h, 10)]

    def claim(self, name: str, i: int) -> str:
        box = self.scene.obj(name).boxes[i]
        assert box is not None, (name, i)
        return claim(name, [self.px(box)], self.t(i))

    def shown_visible(self, name: str) -> list[int]:
        o = self.scene.obj(name)
        return [i for i in self.scene.sampled if o.boxes[i] is not None]

    def evidence(self, frames_objs: list[tuple[int, list[str]]]) -> tuple[list, dict]:
        kf: list[tuple[int, float]] = []
        items: dict[str, dict[str, list[list[float]]]] = {}
        for i, names in frames_objs:
            if str(i) not in items:
                kf.append((i, self.t(i)))
                items[str(i)] = {}
            for n in names:
                box = self.scene.obj(n).boxes[i]
                assert box is not None
                items[str(i)][n] = [self.norm(box)]
        return kf, items

    def vstar(self, name: str, span_frames: list[int], when_q: str, where: str, ans: str) -> VstarInfo:
        o = self.scene.obj(name)
        boxes = [(self.t(i), i, o.boxes[i]) for i in span_frames if o.boxes[i] is not None]
        return VstarInfo(object=name, when_question=when_q, where_phrase=where,
                         span=(self.t(span_frames[0]), self.t(span_frames[-1])), boxes=boxes,  # type: ignore[arg-type]
                         answer_text=ans)

    def absent_names(self, k: int) -> list[str]:
        present = {o.name for o in self.scene.objects}
        lv = self.level
        pool = [f"{c} {s}" for c in lv.colours for s in lv.shapes if f"{c} {s}" not in present]
        colours = {o.colour for o in self.scene.objects}
        # Prefer look-alikes (a present colour or shape) so the answer cannot be told by name alone.
        pool.sort(key=lambda n: (n.split()[0] not in colours, n))
        head = pool[: max(k * 3, 6)]
        self.rng.shuffle(head)
        return head[:k]

    def mcq(self, correct: str, distractors: list[str]) -> tuple[list[str], str]:
        opts = [correct] + [d for d in dict.fromkeys(distractors) if d != correct][: len(LETTERS) - 1]
        self.rng.shuffle(opts)
        return [f"{LETTERS[k]}. {o}" for k, o in enumerate(opts)], LETTERS[opts.index(correct)]


def _direction(a: Box, b: Box) -> str | None:
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= 2 and abs(dx) > 1.5 * abs(dy):
        return "right" if dx > 0 else "left"
    if abs(dy) >= 2 and abs(dy) > 1.5 * abs(dx):
        return "down" if dy > 0 else "up"
    return None


def _object_choice(c: Ctx, correct: str, question: str) -> tuple[list[str], str, str]:
    """(options, answer, question) for "which object" questions; free-form sometimes."""
    if c.rng.random() < c.free_form_p:
        return [], correct, question
    others = [o.name for o in c.scene.objects if o.name != correct]
    c.rng.shuffle(others)
    opts, ans = c.mcq(correct, others + c.absent_names(3))
    return opts, ans, question


def st_direction(c: Ctx) -> Draft | None:
    cands = []
    for o in c.scene.objects:
        vis = c.shown_visible(o.name)
        for i, j in zip(vis, vis[1:]):
            if c.scene.sampled.index(j) - c.scene.sampled.index(i) != 1:
                continue
            a, b = o.boxes[i], o.boxes[j]
            assert a is not None and b is not None
            if max(abs(b[0] - a[0]), abs(b[1] - a[1])) < 2:
                continue  # not moving yet
            d = _direction(a, b)
            if d:  # the first move has a clear direction (diagonal first moves are not asked)
                cands.append((o.name, i, j, d))
            break
    if not cands:
        return None
    name, i, j, d = c.rng.choice(cands)
    opts, ans = c.mcq(d, ["left", "right", "up", "down"])
    kf, items = c.evidence([(i, [name]), (j, [name])])
    reasoning = f"{c.claim(name, i)} then {c.claim(name, j)}, so it moves {d}."
    return Draft(task="spatio_temporal", question=f"Which way does the {name} move first?",
                 answer=ans, options=opts, key_frames=kf, key_items=items,
                 span=[c.t(i), c.t(j)], reasoning=reasoning,
                 vstar=c.vstar(name, [i, j], f"When does the {name} move {d}?", "moving " + d, d))


def st_appear(c: Ctx) -> Draft | None:
    ev = [e for e in c.scene.events if e.kind == "appear"]
    if len({e.objects[0] for e in ev}) != 1:  # exactly one right answer
        return None
    e = ev[0]
    name = e.objects[0]
    vis = c.shown_visible(name)
    prev = c.scene.sampled[c.scene.sampled.index(e.frame) - 1]
    q = "Which object appears after the start of the video?"
    opts, ans, q = _object_choice(c, name, q)
    kf, items = c.evidence([(e.frame, [name])])
    reasoning = f"At <t>{fmt_time(c.t(prev))}</t>s there is no {name}; {c.claim(name, e.frame)} it appears."
    return Draft(task="spatio_temporal", question=q, answer=ans, options=opts, key_frames=kf,
                 key_items=items, span=[c.t(vis[0]), c.t(vis[-1])], reasoning=reasoning,
                 vstar=c.vstar(name, vis, f"When is the {name} in the video?", "after it appears", name))


def st_disappear(c: Ctx) -> Draft | None:
    ev = [e for e in c.scene.events if e.kind == "disappear"]
    if len({e.objects[0] for e in ev}) != 1:  # exactly one right answer
        return None
    e = ev[0]
    name = e.objects[0]
    vis = c.shown_visible(name)
    nxt = c.scene.sampled[c.scene.sampled.index(e.frame) + 1]
    q = "Which object leaves before the end of the video?"
    opts, ans, q = _object_choice(c, name, q)
    kf, items = c.evidence([(e.frame, [name])])
    reasoning = f"{c.claim(name, e.frame)} is its last sighting; at <t>{fmt_time(c.t(nxt))}</t>s it is gone."
    return Draft(task="spatio_temporal", question=q, answer=ans, options=opts, key_frames=kf,
                 key_items=items, span=[c.t(vis[0]), c.t(vis[-1])], reasoning=reasoning,
                 vstar=c.vstar(name, vis, f"When is the {name} in the video?", "before it leaves", name))


def st_collide(c: Ctx) -> Draft | None:
    cands = []
    for e in c.scene.events:
        if e.kind != "collide":
            continue
        a, b = e.objects
        shown = [i for i in c.scene.sampled
                 if c.scene.obj(a).boxes[i] is not None and c.scene.obj(b).boxes[i] is not None]
        if shown:
            k = min(shown, key=lambda i: (abs(i - e.frame), i))
            if abs(k - e.frame) <= c.scene.native_fps / 2:
                cands.append((a, b, k, e.frame))
    if not cands:
        return None
    a, b, k, f = c.rng.choice(cands)
    if c.rng.random() < 0.5:
        a, b = b, a
    partners = {n for e in c.scene.events if e.kind == "collide" and a in e.objects for n in e.objects} - {a}
    if partners != {b}:  # the asked object bumped into several: no single right answer
        return None
    q = f"Which object does the {a} bump into?"
    opts, ans, q = _object_choice(c, b, q)
    kf, items = c.evidence([(k, [a, b])])
    reasoning = f"{c.claim(a, k)} touches {c.claim(b, k)} and they bounce apart."
    before = [i for i in c.scene.sampled if i <= f and c.scene.obj(a).boxes[i] is not None]
    after = [i for i in c.scene.sampled if i > f and c.scene.obj(a).boxes[i] is not None]
    span_frames = before[-1:] + after[:1] or [k]
    return Draft(task="spatio_temporal", question=q, answer=ans, options=opts, key_frames=kf,
                 key_items=items, span=[c.t(span_frames[0]), c.t(span_frames[-1])], reasoning=reasoning,
                 vstar=c.vstar(a, span_frames, f"When does the {a} bump into the {b}?", "at the bump", b))


def temporal_visible(c: Ctx, mcq_p: float) -> Draft | None:
    partial = []
    for o in c.scene.objects:
        vis = c.shown_visible(o.name)
        if len(vis) >= 2 and (vis[0] != c.scene.sampled[0] or vis[-1] != c.scene.sampled[-1]):
            partial.append((o.name, vis))
    if not partial:
        return None
    name, vis = c.rng.choice(partial)
    s, e = c.t(vis[0]), c.t(vis[-1])
    kf, items = c.evidence([(vis[0], [name]), (vis[-1], [name])])
    reasoning = f"{c.claim(name, vis[0])} is the first frame with the {name}, {c.claim(name, vis[-1])} the last."
    q = f"When is the {name} visible?"
    options: list[str] = []
    answer = f"[{fmt_time(s)}, {fmt_time(e)}]"
    if c.rng.random() < mcq_p:
        times = [c.t(i) for i in c.scene.sampled]
        spans = {(s, e)}
        for _ in range(40):
            a, b = sorted(c.rng.sample(times, 2)) if len(times) > 1 else (times[0], times[0])
            spans.add((a, b))
            if len(spans) == 4:
                break
        choices = [f"[{fmt_time(a)}, {fmt_time(b)}]" for a, b in spans]
        options, letter = c.mcq(answer, [x for x in choices if x != answer])
        answer = f"{letter}\n{answer}"
    return Draft(task="temporal", question=q, answer=answer, options=options, key_frames=kf,
                 key_items=items, span=[s, e], reasoning=reasoning)


def spatial_where(c: Ctx) -> Draft | None:
    frames = [i for i in c.scene.sampled if c.scene.visible_at(i)]
    if not frames:
        return None
    i = c.rng.choice(frames)
    name = c.rng.choice(c.scene.visible_at(i)).name
    box = c.scene.obj(name).boxes[i]
    assert box is not None
    answer = f"<obj>{name}</obj><box>{fmt_box(c.px(box))}</box>"
    reasoning = f"{claim(name, [c.px(box)], 0.0)} is the {name}."
    return Draft(task="spatial", question=f"Where is the {name}?", answer=answer,
                 key_frames=[(0, 0.0)], key_items={"0": {name: [c.norm(box)]}}, reasoning=reasoning,
                 still_frame=i)


def general_count(c: Ctx) -> Draft | None:
    names = [o.name for o in c.scene.objects if c.shown_visible(o.name)]
    n = len(names)
    # Options only from the counts this level can produce: an impossible count would be a giveaway.
    lo, hi = max(1, c.level.min_objects), c.level.max_objects
    if not lo <= n <= hi:  # an object that never found room to appear: draw another scene
        return None
    start = min(max(lo, n - c.rng.randint(0, 3)), max(lo, hi - 3))
    nums = [x for x in range(start, min(hi, start + 3) + 1)]
    opts, ans = c.mcq(str(n), [str(x) for x in nums])
    firsts = [(c.shown_visible(nm)[0], nm) for nm in names]
    kf, items = c.evidence([(i, [nm]) for i, nm in sorted(firsts)])
    reasoning = " ".join(c.claim(nm, i) for i, nm in sorted(firsts)) + f" That is {n}."
    return Draft(task="general", question="How many objects appear in the video?", answer=ans,
                 options=opts, key_frames=kf, key_items=items, reasoning=reasoning)


def general_colour(c: Ctx) -> Draft | None:
    by_shape: dict[str, list[str]] = {}
    for o in c.scene.objects:
        if c.shown_visible(o.name):
            by_shape.setdefault(o.shape, []).append(o.name)
    unique = [v[0] for v in by_shape.values() if len(v) == 1]
    if not unique:
        return None
    name = c.rng.choice(unique)
    o = c.scene.obj(name)
    i = c.shown_visible(name)[0]
    others = [col for col in c.level.colours if col != o.colour]
    c.rng.shuffle(others)
    opts, ans = c.mcq(o.colour, others)
    kf, items = c.evidence([(i, [name])])
    return Draft(task="general", question=f"What colour is the {o.shape}?", answer=ans, options=opts,
                 key_frames=kf, key_items=items, reasoning=f"{c.claim(name, i)} is {o.colour}.")


SPATIO_TEMPORAL = (st_direction, st_appear, st_disappear, st_collide)
GENERAL = (general_count, general_colour)


def build(task: str, c: Ctx, temporal_mcq_p: float) -> Draft | None:
    """One draft for `task` from the scene, or None if the scene does not suit it."""
    if task == "spatio_temporal":
        makers = list(SPATIO_TEMPORAL)
        c.rng.shuffle(makers)
        for make in makers:
            d = make(c)
            if d is not None:
                return d
        return None
    if task == "temporal":
        return temporal_visible(c, temporal_mcq_p)
    if task == "spatial":
        return spatial_where(c)
    makers = list(GENERAL)
    c.rng.shuffle(makers)
    for make in makers:
        d = make(c)
        if d is not None:
            return d
    return None
