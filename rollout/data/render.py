"""Draw scene frames and write them as H.264 mp4 (imageio-ffmpeg) or PNG.

Shapes fill their ground-truth box exactly (a circle's box is its bounding square), so a box from
the scene state is the true box in the picture. Encoding is single-threaded with fixed settings so
the same scene gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stgrl.rollout.data.scene import COLOURS, Scene, SceneObject


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    fill = COLOURS[obj.colour]
    # PIL boxes are inclusive of the last pixel: shape covers x1..x2-1.
    if obj.shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(((x1 + x2 - 1) / 2, y1, x1, y2 - 1, x2 - 1, y2 - 1), fill=fill)
    elif obj.shape == "diamond":
        cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
        draw.polygon((cx, y1, x2 - 1, cy, cx, y2 - 1, x1, cy), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_frame(scene: Scene, index: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of native frame `index`."""
    im = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(im)
    for obj in scene.objects:
        box = obj.boxes[index]
        if box is not None:
            _draw(draw, obj, box)
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
