"""The HTML browser of `stgrl visualize` in a real headless Chromium (Debian's `chromium`; installed by
scripts/deps/chromium.sh): the page loads with no console message, every image it shows exists, and a
screenshot shows the frames with the green ground-truth and orange/red claimed boxes.

Skips with a reason when chromium is absent, except under CI=true, where the missing browser is a
failure (CI installs it: a skipped browser test there would hide a broken page)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from stgrl.orchestration.visualize import draw

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "visualization" / "browser.png"
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? ?(.*)$")
W, H, FPS, N = 96, 72, 4, 8
SQUARE = (24, 12, 48, 36)


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but `chromium` is not installed: run scripts/deps/chromium.sh")
        pytest.skip("`chromium` is not installed (scripts/deps/chromium.sh installs it)")
    return exe


def run_chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with its log on stderr (console messages included). --no-sandbox: CI and
    containers run as root, where Chromium's sandbox refuses to start."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={profile}", "--hide-scrollbars", *args, url],
        capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for m in map(CONSOLE.search, stderr.splitlines()) if m]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src" and v]


def missing_images(dom: str, page: Path) -> list[str]:
    """`<img src>` of the loaded DOM that do not resolve to a file next to the page."""
    parser = _Images()
    parser.feed(dom)
    missing = []
    for src in parser.srcs:
        parsed = urlparse(src)
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else page.parent / unquote(src)
        if not path.is_file():
            missing.append(src)
    return missing


def colour_pixels(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """A run's page built by the real CLI from a real mp4: one sample whose claim checks out, one whose
    claim misses."""
    import imageio.v2 as imageio

    chromium()  # skip (or fail under CI) before building a page no browser will open
    root = tmp_path_factory.mktemp("browser")
    frames = np.full((N, H, W, 3), 30, dtype=np.uint8)
    x1, y1, x2, y2 = SQUARE
    frames[:, y1:y2, x1:x2] = (0, 0, 255)
    imageio.mimwrite(root / "v.mp4", list(frames), fps=FPS, codec="libx264", macro_block_size=1)
    record = {"id": "blue-square", "task": "spatio_temporal", "question": "Where is the blue square?",
              "answer": "top left", "video_path": "v.mp4", "key_frames": [{"idx": 4, "time": 1.0}],
              "key_items": {"4": {"blue square": [[x1 / W, y1 / H, x2 / W, y2 / H]]}}}
    good = "<think><obj>blue square</obj><box>[24,12,48,36]</box>at<t>1.0</t>s</think><answer>top left</answer>"
    bad = "<think><obj>blue square</obj><box>[60,40,90,70]</box>at<t>0</t>s</think><answer>bottom</answer>"
    preds = root / "predictions.jsonl"
    preds.write_text("\n".join(json.dumps(
        {"id": sid, "task": "spatio_temporal", "completion": text, "frame_times": [0.0, 0.5, 1.0, 1.5],
         "frame_size": [W, H], "record": {**record, "id": sid}, "dataset_dir": str(root),
         "scores": {"total": score}}) for sid, text, score in (("checks-out", good, 2.5), ("misses", bad, 0.2))) + "\n")
    out = root / "site" / "evidence.html"
    subprocess.run([sys.executable, "-m", "stgrl", "visualize", "--predictions", str(preds), "--html", str(out)],
                   check=True, timeout=120)
    return out


def test_page_loads_without_console_messages_and_all_images_exist(page, tmp_path):
    proc = run_chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count('class="card"') == 2, dom[:2000]
    assert "2 samples, 1/2 claims check out" in dom
    assert console_messages(proc.stderr) == [], "console messages while loading the page"
    assert missing_images(dom, page) == []


def test_screenshot_shows_frames_and_boxes(page, tmp_path):
    shot = tmp_path / "shot.png"
    proc = run_chromium(page.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1100,1400")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert colour_pixels(img, draw.GT_COLOR) > 100, "no green ground-truth box drawn"
    assert colour_pixels(img, draw.CLAIM_GOOD_COLOR) > 100, "no orange (checks out) claim box drawn"
    assert colour_pixels(img, draw.CLAIM_BAD_COLOR) > 50, "no red (misses) claim box drawn"
    assert colour_pixels(img, (0, 0, 255)) > 500, "the video frames (blue square) are not shown"
    if os.environ.get("STGRL_UPDATE_DOCS"):
        # the committed screenshot: `STGRL_UPDATE_DOCS=1 pytest tests/eval/test_visualize_browser.py`
        small = Image.open(shot).convert("RGB")
        rows = np.nonzero((np.asarray(small) != np.asarray(small)[-1, -1]).any(axis=(1, 2)))[0]
        small = small.crop((0, 0, small.width, int(rows.max()) + 16))  # the page's end, not the window's
        small.thumbnail((900, 1200))
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
    assert SCREENSHOT.is_file(), "docs/visualization/browser.png is missing"


def test_the_checks_catch_a_broken_page(tmp_path):
    """The two checks above are not vacuous: a console error and a missing image are both found."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><div class='card'><img src='gone.png'></div>"
                   "<script>console.error('broken page')</script></body></html>")
    proc = run_chromium(bad.as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("broken page" in m for m in console_messages(proc.stderr))
    assert missing_images(proc.stdout, bad) == ["gone.png"]
