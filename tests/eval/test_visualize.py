"""Visualizer on a real tiny mp4: a blue square on a dark background, its ground-truth box, a claim."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stgrl.orchestration.visualize import draw
from stgrl.orchestration.visualize.html import highlight_claims, write_html

W, H, FPS, N = 64, 48, 4, 8
SQUARE = (16, 8, 32, 24)  # pixels, at every frame


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    import imageio.v2 as imageio

    root = tmp_path_factory.mktemp("viz")
    frames = np.full((N, H, W, 3), 30, dtype=np.uint8)
    x1, y1, x2, y2 = SQUARE
    frames[:, y1:y2, x1:x2] = (0, 0, 255)
    imageio.mimwrite(root / "v.mp4", list(frames), fps=FPS, codec="libx264", macro_block_size=1)
    record = {"id": "s1", "task": "spatio_temporal", "question": "Where is the blue square?",
              "answer": "top left", "video_path": "v.mp4", "key_frames": [{"idx": 4, "time": 1.0}],
              "key_items": {"4": {"blue square": [[x1 / W, y1 / H, x2 / W, y2 / H]]}}}
    (root / "eval.jsonl").write_text(json.dumps(record) + "\n")
    return root, record


GOOD = "<think><obj>blue square</obj><box>[16,8,32,24]</box>at<t>1.0</t>s</think><answer>top left</answer>"
BAD = "<think><obj>blue square</obj><box>[40,30,60,46]</box>at<t>0</t>s</think><answer>bottom</answer>"


def test_sampling_rule():
    assert draw.sample_indices(N, FPS) == [0, 2, 4, 6]          # 2 fps grid
    assert draw.sample_indices(200, 25.0) == [round(k * 12.5) for k in range(16)]  # grid of 16 fits
    assert draw.sample_indices(400, 25.0) == [int(round(x)) for x in np.linspace(0, 399, 16)]  # clamped
    assert draw.sample_indices(0, 25.0) == []


def test_grid_draws_gt_box_where_the_square_is(dataset, tmp_path):
    root, record = dataset
    frames = draw.load_frames(root / "v.mp4")
    assert frames.times == [0.0, 0.5, 1.0, 1.5] and frames.size == (W, H)
    view = draw.SampleView(record, BAD, frames)
    png, gif, layout = draw.save_sample(view, tmp_path)
    assert png.exists() and gif is not None and gif.exists()
    img = np.asarray(Image.open(png).convert("RGB"))
    s = layout.scale
    x1, y1, x2, y2 = SQUARE
    ox, oy = layout.origins[2]  # key frame t=1.0 is the third shown frame
    assert tuple(img[oy + y1 * s, ox + x1 * s]) == draw.GT_COLOR          # box corners
    assert tuple(img[oy + y2 * s - 1, ox + x2 * s - 1]) == draw.GT_COLOR
    cy, cx = oy + (y1 + y2) * s // 2, ox + (x1 + x2) * s // 2
    r, g, b = img[cy, cx].astype(int)
    assert b > 150 and r < 80 and g < 80                                   # the video's square inside it
    gx, gy = layout.origins[0]                                             # no GT on the t=0 frame …
    assert tuple(img[gy + y1 * s, gx + x1 * s]) != draw.GT_COLOR
    assert tuple(img[gy + 30 * s + 2, gx + 40 * s + 2]) == draw.CLAIM_BAD_COLOR  # … but the wrong claim (t=0)
    with Image.open(gif) as g_img:
        assert g_img.n_frames == 4


def test_claim_scaled_from_model_frame_size(dataset):
    _, record = dataset
    times = [0.0, 0.5, 1.0, 1.5]
    claims = [("blue square", [[32, 16, 64, 48]], 1.0)]  # pixels of a 2× larger model frame
    ov = draw.plan_overlays(record, claims, times, (W, H), model_size=(2 * W, 2 * H))
    mark = ov[2].claims[0]
    assert mark.boxes == [pytest.approx(SQUARE)]
    assert mark.iou == pytest.approx(1.0) and mark.time_error == pytest.approx(0.0)
    assert draw.claim_color(mark) == draw.CLAIM_GOOD_COLOR
    assert ov[2].gt_times == [1.0] and not ov[0].gt


def test_highlight_claims():
    record = {"key_frames": [{"idx": 4, "time": 1.0}],
              "key_items": {"4": {"blue square": [[16 / W, 8 / H, 32 / W, 24 / H]]}}}
    text = GOOD.replace("</think>", " and <obj>cat</obj><box>[0,0,1,1]</box>at<t>1</t>s & more</think>")
    out, good, total = highlight_claims(text, record, (W, H))
    assert (good, total) == (1, 2)
    assert '<mark class="good" title="IoU 1.00, Δt 0.0s">&lt;obj&gt;blue square' in out
    assert '<mark class="unknown"' in out and "&amp; more" in out and "<b>&lt;answer&gt;" in out
    # adversarial input stays fast and intact
    evil = "<obj>" * 20000 + "<box>[" * 20000
    out, good, total = highlight_claims(evil, record, (W, H))
    assert total == 0 and out.count("&lt;obj&gt;") == 20000


def test_html_page_and_cli(dataset, tmp_path):
    from stgrl.orchestration.commands import visualize as cmd

    root, record = dataset
    preds = tmp_path / "predictions.jsonl"
    lines = [{"id": "s1", "task": "spatio_temporal", "completion": GOOD, "frame_times": [0.0, 0.5, 1.0, 1.5],
              "frame_size": [W, H], "record": record, "dataset_dir": str(root), "scores": {"total": 2.5}},
             {"id": "gone", "completion": BAD, "record": {**record, "id": "gone", "video_path": "missing.mp4"},
              "dataset_dir": str(root)}]
    preds.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    page = write_html(preds, tmp_path / "page" / "run.html")
    text = page.read_text()
    assert text.count("class='card'") == 2
    assert "run_img/s1.png" in text and (tmp_path / "page" / "run_img" / "s1.png").exists()
    assert "no frames" in text and "missing.mp4" in text  # a broken sample becomes a card, not a crash
    assert "1/2 claims" in text

    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    out = tmp_path / "single"
    args = parser.parse_args(["--record", str(root / "eval.jsonl"), "--index", "0", "--predictions", str(preds),
                              "--out", str(out)])
    assert cmd.run(args) == 0
    assert (out / "s1.png").exists() and (out / "s1.gif").exists()
    assert cmd.run(parser.parse_args(["--record", str(root / "eval.jsonl"), "--index", "5", "--out", str(out)])) == 2


def test_right_box_at_the_wrong_time_is_marked_wrong(dataset):
    _, record = dataset
    times = [0.0, 0.5, 1.0, 1.5]
    ov = draw.plan_overlays(record, [("blue square", [list(SQUARE)], 0.0)], times, (W, H))
    mark = ov[0].claims[0]                       # drawn on the t=0 frame, compared with the t=1 key frame
    assert mark.iou == pytest.approx(1.0) and mark.time_error == pytest.approx(1.0)
    assert draw.claim_color(mark) == draw.CLAIM_BAD_COLOR
    assert draw.claim_ok(0.6, 0.25) and not draw.claim_ok(0.4, 0.0) and not draw.claim_ok(None, 0.0)
