"""One static HTML page that browses a run's samples: per sample a card with the question, the true
answer, the model's text with each claim highlighted by whether it checks out, and the frame grid.

Images go to a folder next to the page (``<page stem>_img/``) and are linked relatively, so the page
plus that folder can be copied anywhere; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stgrl.orchestration.evaluation import grounding
from stgrl.orchestration.visualize import draw
from stgrl.orchestration.visualize.formats import PredictionLine, read_predictions, read_records

log = logging.getLogger(__name__)

# Bounded pieces only (no nested unbounded repetition): linear on any completion.
_CLAIM = re.compile(r"<obj>[^<]{0,256}</obj>(?:\s{0,8}<box>[^<]{0,256}</box>){1,32}\s{0,8}at\s{0,8}"
                    r"<t>[^<]{0,64}</t>\s{0,8}s")
_ANSWER = re.compile(r"<answer>.{0,4096}?</answer>", re.DOTALL)


@dataclass
class Card:
    """One sample on the page."""

    id: str
    task: str
    question: str
    answer: str
    options: Sequence[str]
    completion_html: str
    image: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    claims_ok: int = 0
    claims_total: int = 0
    error: str | None = None


def highlight_claims(completion: str, record: Mapping[str, Any], model_size: tuple[float, float]) -> tuple[str, int, int]:
    """HTML of the completion with claims in ``<mark>`` (class ``good`` when the claim checks out —
    :func:`draw.claim_ok` against the same object's ground truth at the nearest key frame — ``bad``
    otherwise, ``unknown`` when the object is not in the ground truth) and the answer in bold;
    returns (html, good claims, claims)."""
    gt = grounding.GroundTruth.from_record(record, model_size)
    parts: list[str] = []
    pos = good = total = 0
    for m in _CLAIM.finditer(completion):
        parts.append(_escape_answer(completion[pos:m.start()]))
        claims = grounding.claims_from_text(f"<think>{m.group(0)}</think>")
        cls, tip = "unknown", "object not in the ground truth"
        if claims:
            s = grounding.score_sample(claims[:1], gt)
            total += 1
            if s.n_unknown_objects == 0 and s.n_untimed_claims == 0:
                ok = draw.claim_ok(s.mean_iou, s.time_errors[0] if s.time_errors else None)
                good += ok
                cls = "good" if ok else "bad"
                dt = f", Δt {s.time_errors[0]:.1f}s" if s.time_errors else ""
                tip = f"IoU {s.mean_iou:.2f}{dt}"
        parts.append(f'<mark class="{cls}" title="{html.escape(tip)}">{html.escape(m.group(0))}</mark>')
        pos = m.end()
    parts.append(_escape_answer(completion[pos:]))
    return "".join(parts), good, total


def _escape_answer(text: str) -> str:
    out, pos = [], 0
    for m in _ANSWER.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<b>{html.escape(m.group(0))}</b>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


_STYLE = """
body{font-family:sans-serif;margin:1em;background:#f4f4f4}
.card{background:#fff;border-radius:6px;padding:.8em 1em;margin:0 0 1em;box-shadow:0 1px 3px #0002}
.card h2{font-size:1.05em;margin:.1em 0 .4em}.meta{color:#555;font-size:.9em}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #ddd;padding:.5em;font-size:.85em}
mark.good{background:#ffd9a0}mark.bad{background:#ffb3b3}mark.unknown{background:#ddd}
img{max-width:100%;border:1px solid #ccc}.err{color:#b00}
.legend span{padding:0 .4em;margin-right:.6em}
"""


def render_page(cards: Sequence[Card], title: str) -> str:
    """The whole page as a string."""
    ok = sum(c.claims_ok for c in cards)
    total = sum(c.claims_total for c in cards)
    head = (f"<h1>{html.escape(title)}</h1><p class='meta'>{len(cards)} samples, {ok}/{total} claims check out "
            f"(IoU ≥ {draw.GOOD_IOU} with the same object at the nearest key frame, time within "
            f"{draw.GOOD_DT} s of it).</p><p class='legend'>"
            "<span style='background:#ffd9a0'>claim checks out</span><span style='background:#ffb3b3'>claim "
            "misses</span><span style='background:#ddd'>object not in ground truth</span> — in images: green "
            "ground truth, orange/red claims.</p>")
    body = []
    for c in cards:
        opts = f"<div class='meta'>options: {html.escape(' | '.join(c.options))}</div>" if c.options else ""
        scores = ("<div class='meta'>" + html.escape("  ".join(f"{k} {v:.3f}" for k, v in c.scores.items()))
                  + "</div>") if c.scores else ""
        img = (f"<img src='{html.escape(c.image)}' alt='frames of {html.escape(c.id)}'>" if c.image
               else f"<p class='err'>no frames: {html.escape(c.error or 'unknown error')}</p>")
        body.append(
            f"<div class='card' id='{html.escape(c.id)}'><h2>{html.escape(c.id)} <span class='meta'>"
            f"[{html.escape(c.task)}] claims ok {c.claims_ok}/{c.claims_total}</span></h2>"
            f"<div><b>Q:</b> {html.escape(c.question)}</div>{opts}"
            f"<div><b>truth:</b> {html.escape(c.answer)}</div>{scores}"
            f"<pre>{c.completion_html}</pre>{img}</div>"
        )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{head}{''.join(body)}</body></html>")


def media_path(record: Mapping[str, Any], dataset_dir: Path) -> Path | None:
    """The record's video (or image) resolved against the dataset folder."""
    rel = record.get("video_path") or record.get("image_path")
    return (dataset_dir / rel) if rel else None


def build_card(line: PredictionLine, record: Mapping[str, Any], dataset_dir: Path, img_dir: Path,
               img_prefix: str) -> Card:
    """Draw one sample's grid and build its card; a missing or undecodable video becomes a card
    with the error instead of stopping the page."""
    image, error, frames = None, None, None
    path = media_path(record, dataset_dir)
    try:
        if path is None:
            raise FileNotFoundError("record has no video_path or image_path")
        frames = draw.load_frames(path, line.frame_times or None)
    except Exception as e:  # any decode failure is shown on the card
        error = f"{path}: {e}"
        log.warning("sample %s: %s", line.id, error)
    model_size = tuple(line.frame_size) if line.frame_size else (frames.size if frames else (1.0, 1.0))
    text, good, total = highlight_claims(line.completion, record, model_size)
    if frames is not None:
        stem = draw.safe_stem(line.id)
        view = draw.SampleView(record, line.completion, frames, model_size, line.scores)
        draw.save_sample(view, img_dir, stem, gif=False)
        image = f"{img_prefix}/{stem}.png"
    return Card(id=line.id, task=line.task or str(record.get("task", "")), question=str(record.get("question", "")),
                answer=str(record.get("answer", "")), options=list(record.get("options") or []),
                completion_html=text, image=image, scores=line.scores, claims_ok=good, claims_total=total,
                error=error)


def write_html(predictions: str | Path, out_html: str | Path, records: str | Path | None = None,
               dataset_dir: str | Path | None = None, limit: int | None = None) -> Path:
    """Render a predictions JSON-lines file (see :class:`PredictionLine`) as one static page."""
    predictions, out_html = Path(predictions), Path(out_html)
    by_id = {str(r.get("id")): r for r in read_records(records)} if records else {}
    img_dir = out_html.parent / f"{out_html.stem}_img"
    cards = []
    for n, line in read_predictions(predictions):
        if limit is not None and len(cards) >= limit:
            break
        record = line.record or by_id.get(line.id)
        if record is None:
            log.warning("%s:%d: no record for id %s (pass --records)", predictions, n, line.id)
            continue
        base = Path(line.dataset_dir) if line.dataset_dir else (
            Path(dataset_dir) if dataset_dir else (Path(records).parent if records else predictions.parent))
        cards.append(build_card(line, record, base, img_dir, img_dir.name))
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render_page(cards, f"stgrl evidence: {predictions.name}"), encoding="utf-8")
    log.info("wrote %s (%d samples, images in %s)", out_html, len(cards), img_dir)
    return out_html
