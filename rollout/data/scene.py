"""Scene simulation for the synthetic "shapes" videos: ground truth comes from here, never from
detection.

A scene is a few named shapes ("red circle") on a plain background. Each object is visible over an
interval of native frames (it appears and disappears), moves, bounces off the walls and off other
objects (a *collision*: the two swept boxes would overlap, so both reverse). Objects never overlap,
so every ground-truth box shows its object unoccluded. Appear/disappear times are placed on frames
the video sampler shows the model (`sampled`), so every event the questions ask about is visible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from msgspec import Struct

Box = tuple[int, int, int, int]
"""Pixel box `(x1, y1, x2, y2)`, edges: the shape covers columns x1..x2-1."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 20, 20),
    "green": (20, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (250, 230, 20),
    "magenta": (230, 30, 220),
    "cyan": (20, 220, 230),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")


class Difficulty(Struct, frozen=True, kw_only=True):
    """One rung of the difficulty ladder (issue 13): everything the generator varies by level."""

    name: Literal["easy", "medium", "hard"]
    width: int
    height: int
    native_fps: float
    min_frames: int
    """Native frame count range of a video (duration = frames / native_fps)."""
    max_frames: int
    min_objects: int
    max_objects: int
    min_size: int
    max_size: int
    grid: int
    """>0: positions and steps are multiples of `grid` px (the merged 28 px patch cell); 0: free."""
    min_speed: float
    """Pixels per second for free motion (grid motion moves one cell per frame)."""
    max_speed: float
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    background: tuple[int, int, int]
    still_prob: float
    """Probability that an object does not move."""
    floor: Literal["plain", "cells"] = "plain"
    """"cells": each `grid` cell of the background gets its own dim shade (column -> red, row ->
    green), a chessboard with labelled squares. Why: the Qwen2.5-VL vision tower has no absolute
    position embedding (2-D RoPE only), so on a uniform background a token cannot tell where it is
    except from the frame's borders, which a tiny model learns slowly and unreliably (measured,
    docs/grounding.md). Objects are drawn inset in their cell so the shade shows around them."""


DIFFICULTIES: dict[str, Difficulty] = {
    # 4x4 cells of 28 px, 2 fps native = the sampler's fps, so every frame is shown (4..6 frames).
    "easy": Difficulty(
        name="easy", width=112, height=112, native_fps=2.0, min_frames=4, max_frames=6,
        min_objects=1, max_objects=2, min_size=20, max_size=20, grid=28, min_speed=0, max_speed=0,
        colours=("red", "green", "blue", "yellow"), shapes=("circle", "square"),
        background=(0, 0, 0), still_prob=0.2, floor="cells",
    ),
    "medium": Difficulty(
        name="medium", width=168, height=168, native_fps=8.0, min_frames=32, max_frames=64,
        min_objects=2, max_objects=4, min_size=20, max_size=36, grid=0, min_speed=12, max_speed=36,
        colours=("red", "green", "blue", "yellow", "magenta", "cyan"),
        shapes=("circle", "square", "triangle"), background=(30, 30, 30), still_prob=0.15,
    ),
    "hard": Difficulty(
        name="hard", width=224, height=168, native_fps=10.0, min_frames=40, max_frames=100,
        min_objects=3, max_objects=6, min_size=14, max_size=28, grid=0, min_speed=20, max_speed=60,
        colours=tuple(COLOURS), shapes=SHAPES, background=(70, 70, 70), still_prob=0.1,
    ),
}


class SceneObject(Struct, kw_only=True):
    """One named shape and its per-native-frame box (None while invisible)."""

    name: str
    colour: str
    shape: str
    size: int
    boxes: list[Box | None]

    def visible_frames(self) -> list[int]:
        return [i for i, b in enumerate(self.boxes) if b is not None]


class Event(Struct, frozen=True):
    """Something that happened: `kind` in appear/disappear/collide, at a native frame index."""

    kind: Literal["appear", "disappear", "collide"]
    frame: int
    objects: tuple[str, ...]


class Scene(Struct, kw_only=True):
    """A simulated video: size, native fps, objects with per-frame boxes, events, and the native
    frame indices the sampler shows the model (`sampled`)."""

    width: int
    height: int
    native_fps: float
    num_frames: int
    background: tuple[int, int, int]
    objects: list[SceneObject]
    events: list[Event]
    sampled: list[int]
    floor: Literal["plain", "cells"] = "plain"
    grid: int = 0

    def obj(self, name: str) -> SceneObject:
        return next(o for o in self.objects if o.name == name)

    def visible_at(self, frame: int) -> list[SceneObject]:
        return [o for o in self.objects if o.boxes[frame] is not None]


def _overlap(a: Box, b: Box, gap: int = 0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _pick_objects(rng: random.Random, d: Difficulty, n: int) -> list[tuple[str, str]]:
    """Distinct (colour, shape) pairs; hard scenes favour look-alikes (shared colours or shapes)."""
    pairs = [(c, s) for c in d.colours for s in d.shapes]
    rng.shuffle(pairs)
    return pairs[:n]


def simulate(rng: random.Random, d: Difficulty, sampled_for: Callable[[int, float], list[int]]) -> Scene:
    """Simulate one scene. `sampled_for(num_frames, native_fps)` returns the native indices the
    video sampler will show (the generator passes the real sampler so both agree)."""
    num_frames = rng.randint(d.min_frames, d.max_frames)
    sampled = list(sampled_for(num_frames, d.native_fps))
    n_obj = rng.randint(d.min_objects, d.max_objects)
    specs = _pick_objects(rng, d, n_obj)
    # Visible intervals on sampled frames: the first object is visible all along (something to see);
    # others may appear late and/or leave early, by at least one shown frame.
    intervals: list[tuple[int, int]] = []
    k = len(sampled)
    for j in range(n_obj):
        # Every object stays for at least two shown frames (a one-frame span has no length).
        modes = ["all"] if j == 0 or k < 3 else ["all", "appear", "disappear"] + (["both"] if k >= 4 else [])
        mode = rng.choice(modes)
        a, b = 0, k - 1
        if mode == "appear":
            a = rng.randint(1, k - 2)
        elif mode == "disappear":
            b = rng.randint(1, k - 2)
        elif mode == "both":
            a = rng.randint(1, k - 3)
            b = rng.randint(a + 1, k - 2)
        intervals.append((sampled[a], sampled[b] if b < k - 1 else num_frames - 1))

    sizes = [d.min_size if d.grid else rng.randint(d.min_size, d.max_size) for _ in range(n_obj)]
    objects = [
        SceneObject(name=f"{c} {s}", colour=c, shape=s, size=sz, boxes=[None] * num_frames)
        for (c, s), sz in zip(specs, sizes)
    ]
    pos: list[list[float] | None] = [None] * n_obj
    vel: list[tuple[float, float]] = [(0.0, 0.0)] * n_obj
    events: list[Event] = []
    spawned = [False] * n_obj
    shown = set(sampled)
    cells_x, cells_y = (d.width // d.grid, d.height // d.grid) if d.grid else (0, 0)

    def box_of(j: int, p: list[float]) -> Box:
        x, y = round(p[0]), round(p[1])
        return (x, y, x + sizes[j], y + sizes[j])

    for i in range(num_frames):
        # Spawn objects whose interval starts now, at a free spot (retry next frame if none).
        for j, (a, b) in enumerate(intervals):
            if not spawned[j] and a <= i <= b and i in shown:
                others = [box_of(q, pos[q]) for q in range(n_obj) if pos[q] is not None]
                for _ in range(60):
                    if d.grid:  # inset: centred in its cell
                        inset = (d.grid - sizes[j]) // 2
                        p = [rng.randrange(cells_x) * d.grid + inset, rng.randrange(cells_y) * d.grid + inset]
                    else:
                        p = [rng.uniform(0, d.width - sizes[j]), rng.uniform(0, d.height - sizes[j])]
                    if not any(_overlap(box_of(j, p), o, gap=2) for o in others):
                        pos[j] = p
                        break
                if pos[j] is not None:
                    spawned[j] = True
                    if rng.random() < d.still_prob:
                        vel[j] = (0.0, 0.0)
                    elif d.grid:
                        vel[j] = rng.choice(((d.grid, 0), (-d.grid, 0), (0, d.grid), (0, -d.grid)))
                    else:
                        sp = rng.uniform(d.min_speed, d.max_speed) / d.native_fps
                        vel[j] = rng.choice(((sp, 0), (-sp, 0), (0, sp), (0, -sp),
                                             (sp * 0.7, sp * 0.7), (-sp * 0.7, sp * 0.7)))
                    intervals[j] = (i, b)
                    if i > 0:
                        events.append(Event("appear", i, (objects[j].name,)))
        # Record this frame's boxes.
        for j in range(n_obj):
            if pos[j] is not None:
                objects[j].boxes[i] = box_of(j, pos[j])
        # Disappear after the interval's last frame.
        for j, (_a, b) in enumerate(intervals):
            if pos[j] is not None and i == b and i < num_frames - 1:
                events.append(Event("disappear", i, (objects[j].name,)))
                pos[j] = None
        if i == num_frames - 1:
            break
        # Move: walls reflect; swept-box overlap with another object is a collision (both reverse).
        nxt: dict[int, list[float]] = {}
        for j in range(n_obj):
            if pos[j] is None:
                continue
            vx, vy = vel[j]
            p = [pos[j][0] + vx, pos[j][1] + vy]
            if not 0 <= p[0] <= d.width - sizes[j]:
                vx = -vx
            if not 0 <= p[1] <= d.height - sizes[j]:
                vy = -vy
            vel[j] = (vx, vy)
            nxt[j] = [min(max(pos[j][0] + vx, 0), d.width - sizes[j]),
                      min(max(pos[j][1] + vy, 0), d.height - sizes[j])]
        ids = sorted(nxt)
        for ai, j in enumerate(ids):
            for q in ids[ai + 1:]:
                sj = _union(box_of(j, pos[j]), box_of(j, nxt[j]))
                sq = _union(box_of(q, pos[q]), box_of(q, nxt[q]))
                if _overlap(sj, sq):  # touching is allowed: a bump leaves them side by side
                    vel[j] = (-vel[j][0], -vel[j][1])
                    vel[q] = (-vel[q][0], -vel[q][1])
                    nxt[j], nxt[q] = list(pos[j]), list(pos[q])
                    events.append(Event("collide", i, (objects[j].name, objects[q].name)))
        # A swap can still leave a (rare) overlap with a third object: then nobody moves.
        moved = {j: nxt[j] for j in ids}
        boxes = {j: box_of(j, moved[j]) for j in ids}
        if any(_overlap(boxes[j], boxes[q]) for ai, j in enumerate(ids) for q in ids[ai + 1:]):
            moved = {j: list(pos[j]) for j in ids}
        for j in ids:
            pos[j] = moved[j]

    objects = [o for o in objects if any(b is not None for b in o.boxes)]
    return Scene(width=d.width, height=d.height, native_fps=d.native_fps, num_frames=num_frames,
                 background=d.background, objects=objects, events=events, sampled=sampled,
                 floor=d.floor, grid=d.grid)
