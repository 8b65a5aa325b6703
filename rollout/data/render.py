"""Draw scene frames and write them as H.264 mp4 (imageio-ffmpeg) or PNG.

Shapes fill their ground-truth box exactly (a circle's box is its bounding square), so a box from
the scene state is the true box in the picture. Encoding is single-threaded with fixed settings so
the same scene gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stgrl.rollout.data.scene import COLOURS, Scene


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, box: tuple[int, int, int, int]) -> None:
    """Draw one named shape filling `box` exactly (the one drawing code for data and pretraining)."""
    x1, y1, x2, y2 = box
    fill = COLOURS[colour]
    # PIL boxes are inclusive of the last pixel: shape covers x1..x2-1.
    if shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon(((x1 + x2 - 1) / 2, y1, x1, y2 - 1, x2 - 1, y2 - 1), fill=fill)
    elif shape == "diamond":
        cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
        draw.polygon((cx, y1, x2 - 1, cy, cx, y2 - 1, x1, cy), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


FLOOR_BASE, FLOOR_STEP = 16, 24


def floor_image(width: int, height: int, background: tuple[int, int, int], floor: str, grid: int) -> Image.Image:
    """The empty frame: plain `background`, or for `floor="cells"` one dim shade per `grid` cell
    (column c -> red 16 + 24c, row r -> green 16 + 24r; see `Difficulty.floor` for why)."""
    if floor == "plain" or grid <= 0:
        return Image.new("RGB", (width, height), background)
    if floor != "cells":
        raise ValueError(f"unknown floor {floor!r}")
    arr = np.empty((height, width, 3), np.uint8)
    cols = np.minimum(np.arange(width) // grid, 255 // FLOOR_STEP)
    rows = np.minimum(np.arange(height) // grid, 255 // FLOOR_STEP)
    arr[..., 0] = np.minimum(255, FLOOR_BASE + FLOOR_STEP * cols)[None, :]
    arr[..., 1] = np.minimum(255, FLOOR_BASE + FLOOR_STEP * rows)[:, None]
    arr[..., 2] = FLOOR_BASE
    return Image.fromarray(arr)


def render_frame(scene: Scene, index: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of native frame `index`."""
    im = floor_image(scene.width, scene.height, scene.background, scene.floor, scene.grid)
    draw = ImageDraw.Draw(im)
    for obj in scene.objects:
        box = obj.boxes[index]
        if box is not None:
            draw_shape(draw, obj.shape, obj.colour, box)
    return np.asarray(im)


def write_video(scene: Scene, path: Path) -> None:
    """Encode every native frame as H.264 (yuv420p, crf 12, one thread: deterministic bytes)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        str(path), format="FFMPEG", mode="I", fps=scene.native_fps, codec="libx264",
        pixelformat="yuv420p", macro_block_size=1, quality=None, ffmpeg_log_level="error",
        output_params=["-crf", "12", "-preset", "medium", "-threads", "1", "-g", "4",
                       "-bf", "0", "-map_metadata", "-1", "-fflags", "+bitexact",
                       "-flags:v", "+bitexact"],
    )
    try:
        for i in range(scene.num_frames):
            writer.append_data(render_frame(scene, i))
    finally:
        writer.close()


def write_png(frame: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, format="PNG", optimize=False)
