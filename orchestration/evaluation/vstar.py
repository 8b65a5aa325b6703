"""V-STAR metrics (What / When / Where on two reasoning chains), as docs/design.md §9.

Inputs are the benchmark's annotation list plus our predictions (:class:`VStarPrediction`), or the
reference evaluator's single merged list (annotation fields and ``answer_*`` fields in one object,
see :func:`split_merged`) so numbers are comparable with published ones.

Per item: Acc from a pluggable judge; tIoU of the predicted span per chain; per ground-truth frame the
IoU of the box predicted at exactly the frame's timestamp (``spatial_match="exact"``, the default and
the reference evaluator's rule: a frame without a prediction at its timestamp scores 0) or at the
nearest predicted time however far away (``"nearest"``, an option whose numbers are NOT comparable
with published ones: 3 GT frames at 2, 3 and 4 s and one prediction at 2 s give vIoU 0.828 and
AP@0.5 1.0 where the reference gives 0.333 and 0.333); AP@τ = fraction of the item's frames with
IoU ≥ τ. Aggregates: means over items, R1@τ, ``AM_c = (Acc + tIoU_c + vIoU_c) / 3``,
``LGM_c = −[ln(1−Acc) + ln(1−tIoU_c) + ln(1−vIoU_c)] / 3`` with each ``1 − x`` clipped to ≥ 1e-6 (a
perfect score gives a large finite LGM, not infinity), ``mAM``/``mLGM`` the means over both chains.
An item without a prediction counts as wrong everywhere and is listed in ``missing_ids``.

With default arguments the metrics equal the reference evaluator's on its merged file (tested against
a twin of its metric rules). Differences on purpose, each with its example in docs/fidelity.md (V1-V8):
inverted spans are ordered instead of scored as garbage; spatial keys are compared as numbers (``"12"``
matches timestamp ``12.0``); LGM clips instead of failing on a perfect score; the judge is
deterministic; the whole-frame random vIoU is computed (the reference's is 0 on merged files).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from stgrl.orchestration.evaluation.geometry import Box, best_iou, box_list, parse_span_text, span_iou
from stgrl.orchestration.evaluation.judge import DeterministicJudge, Judge, option_letter

log = logging.getLogger(__name__)

AP_THRESHOLDS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
R1_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
LGM_EPS = 1e-6
SpatialMatch = Literal["exact", "nearest"]
DEFAULT_SPATIAL_MATCH: SpatialMatch = "exact"
"""The reference evaluator's rule; the only one whose numbers compare with published V-STAR results."""
NOT_COMPARABLE = "nearest"
"""The spatial rule whose numbers are not comparable with published ones (reported as such)."""

# Fields that belong to the model's answer in the reference's merged list.
PREDICTION_FIELDS: tuple[str, ...] = (
    "answer_vqa", "answer_temporal", "answer_temporal_pre", "answer_spatial",
    "answer_temporal_2", "answer_temporal_pre_2", "answer_spatial_2",
)


# ----------------------------------------------------------------------------------------- formats
class GTFrame(msgspec.Struct, frozen=True):
    """One ground-truth box of the queried object, in the annotation's pixel space."""

    timestamp: float
    box: Box


class VStarItem(msgspec.Struct, frozen=True):
    """One benchmark item, normalised from either our export or the public V-STAR annotation."""

    key: str
    question: str
    answer: str
    timestamps: tuple[float, float] | None
    frames: tuple[GTFrame, ...]
    width: float | None = None
    height: float | None = None
    duration: float | None = None
    domain: str = "unknown"
    options: tuple[str, ...] | None = None
    answer_option: str | None = None
    """The correct option letter when the item is multiple choice (our export's ``answer_option``)."""
    chains: tuple[tuple[str, ...], ...] = ()
    """The questions of chain 1 (what, when, where) and chain 2 (what, where, when), when the
    annotation has them (``chain1``/``chain2``, or ``temporal_question``/``spatial_question`` and
    their ``_2`` forms): what ``stgrl eval run`` asks, one prompt per chain."""


class VStarPrediction(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A model's answers to one item (JSON list or JSON lines; documented in docs/evaluation.md).

    ``answer_temporal*`` is ``[start, end]`` in seconds, or ``[]``/absent with the raw text in
    ``answer_temporal_pre*`` (``mm:ss`` accepted, ``<t>`` tags preferred). ``answer_spatial*`` maps a
    time in seconds (as a string) to one box ``[x1, y1, x2, y2]`` or a list of boxes, in the
    annotation's ``width × height`` pixels — or in ``frame_size`` pixels when that is given, which
    are rescaled. Chain 1 is what→when→where, chain 2 what→where→when.
    """

    id: str
    answer_vqa: str | None = None
    answer_temporal: Any = None
    answer_temporal_pre: str | None = None
    answer_spatial: Any = None
    answer_temporal_2: Any = None
    answer_temporal_pre_2: str | None = None
    answer_spatial_2: Any = None
    frame_size: tuple[float, float] | None = None


class ChainScore(msgspec.Struct):
    """One item's grounding scores on one chain."""

    tiou: float
    viou: float
    ap: list[float]


class ItemScore(msgspec.Struct):
    """One item's scores; ``chains[0]`` is chain 1, ``chains[1]`` chain 2."""

    key: str
    domain: str
    missing: bool
    correct: bool
    chains: list[ChainScore]
    random_tiou: float
    random_viou: float
    random_ap: list[float]


class ChainMetrics(msgspec.Struct):
    """Aggregated metrics of one chain (fractions in [0, 1], LGM unbounded above)."""

    tiou: float
    viou: float
    r1: dict[str, float]
    ap: dict[str, float]
    am: float
    lgm: float
    acc_and_tiou: float
    acc_and_viou: float
    tiou_and_viou: float
    acc_tiou_viou: float


class VStarSummary(msgspec.Struct):
    """Aggregates over a set of items (the whole benchmark or one domain)."""

    n_items: int
    n_missing: int
    acc: float
    chains: list[ChainMetrics]
    mam: float
    mlgm: float
    random_tiou: float
    random_viou: float
    random_ap: dict[str, float]


class VStarReport(msgspec.Struct):
    """What ``stgrl eval vstar -o`` writes."""

    overall: VStarSummary
    by_domain: dict[str, VStarSummary]
    missing_ids: list[str]
    unmatched_prediction_ids: list[str]
    spatial_match: str
    items: list[ItemScore]


# --------------------------------------------------------------------------------------- loading
def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _time_of_key(key: Any) -> float | None:
    """A frame key as seconds: ``"12"``, ``"12.5"``, ``"12_3"`` (public V-STAR: seconds_index)."""
    return _float(str(key).split("_")[0].strip())


def _gt_frames(raw: Any, fps: float | None) -> tuple[GTFrame, ...]:
    """Ground-truth boxes from our flat form ``{timestamp, frame_index, xmin, …}`` or the public
    keyed form ``{"<sec>_<idx>": {xmin, …}}`` / ``{"<sec>": [x1, y1, x2, y2]}``."""
    frames: list[GTFrame] = []
    for entry in raw or []:
        if not isinstance(entry, dict):
            continue
        if "xmin" in entry:
            t = _float(entry.get("timestamp"))
            if t is None and fps and _float(entry.get("frame_index")) is not None:
                t = float(entry["frame_index"]) / fps
            boxes = box_list([entry.get("xmin"), entry.get("ymin"), entry.get("xmax"), entry.get("ymax")])
            if t is not None and boxes:
                frames.append(GTFrame(t, boxes[0]))
            continue
        for key, value in entry.items():
            t = _time_of_key(key)
            if isinstance(value, dict):
                value = [value.get("xmin"), value.get("ymin"), value.get("xmax"), value.get("ymax")]
            boxes = box_list(value)
            if t is not None and boxes:
                frames.append(GTFrame(t, boxes[0]))
    return tuple(frames)


def chain_questions(raw: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    """The two chains' questions of an annotation: its ``chain1``/``chain2`` lists, else built from
    ``question`` + ``temporal_question`` + ``spatial_question`` (chain 2: ``spatial_question_2``
    then ``temporal_question_2``, each falling back to the chain-1 form); () without both."""
    given = [raw.get("chain1"), raw.get("chain2")]
    if all(isinstance(c, list) and c and all(isinstance(q, str) for q in c) for c in given):
        return tuple(tuple(c) for c in given)  # type: ignore[union-attr]
    what, when, where = raw.get("question"), raw.get("temporal_question"), raw.get("spatial_question")
    if not (isinstance(what, str) and isinstance(when, str) and isinstance(where, str)):
        return ()
    when2 = raw.get("temporal_question_2") if isinstance(raw.get("temporal_question_2"), str) else when
    where2 = raw.get("spatial_question_2") if isinstance(raw.get("spatial_question_2"), str) else where
    return ((what, when, where), (what, where2, when2))


def item_from_dict(raw: dict[str, Any], key: str) -> VStarItem:
    """Normalise one annotation object (our export or the public V-STAR file) into a VStarItem."""
    fps = _float(raw.get("fps"))
    frame_count = _float(raw.get("frame_count"))
    duration = _float(raw.get("duration"))
    if duration is None and fps and frame_count is not None:
        duration = frame_count / fps
    span = raw.get("timestamps", raw.get("span"))
    ts = None
    if isinstance(span, (list, tuple)) and len(span) == 2 and all(_float(v) is not None for v in span):
        lo, hi = sorted(float(v) for v in span)
        ts = (lo, hi)
    options = raw.get("options")
    return VStarItem(
        key=key,
        question=str(raw.get("question", raw.get("what_question", ""))),
        answer=str(raw.get("answer", "")),
        timestamps=ts,
        frames=_gt_frames(raw.get("bboxes"), fps),
        width=_float(raw.get("width")),
        height=_float(raw.get("height")),
        duration=duration,
        domain=str(raw.get("domain") or "unknown"),
        options=tuple(str(o) for o in options) if isinstance(options, list) and options else None,
        answer_option=str(raw["answer_option"]).strip() if raw.get("answer_option") else None,
        chains=chain_questions(raw),
    )


def annotation_keys(raws: Sequence[dict[str, Any]]) -> list[str]:
    """Item keys: ``id`` if present, else ``vid``, else the list index; a repeated key gets ``#k``.

    Predictions refer to items by these keys (the merged format needs no keys).
    """
    seen: dict[str, int] = {}
    keys = []
    for i, raw in enumerate(raws):
        base = str(raw.get("id", raw.get("vid", i)))
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys.append(base if n == 0 else f"{base}#{n}")
    if any(n > 1 for n in seen.values()):
        log.warning("annotation ids repeat; later copies are keyed '<id>#k' (k = 1, 2, …)")
    return keys


def load_json_or_jsonl(path: str | Path) -> Any:
    """A JSON document, or a JSON-lines file as a list of objects."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_annotations(path: str | Path) -> list[VStarItem]:
    """Annotation file (JSON list or JSONL) → items keyed as :func:`annotation_keys`."""
    raws = load_json_or_jsonl(path)
    if not isinstance(raws, list):
        raise ValueError(f"{path}: expected a JSON list of V-STAR items")
    return [item_from_dict(r, k) for r, k in zip(raws, annotation_keys(raws))]


def decode_predictions(raw: Any) -> list[VStarPrediction]:
    """Predictions from a list of objects, or a mapping ``{id: {...}}``; malformed entries raise a
    clear msgspec validation error naming the field."""
    if isinstance(raw, dict):
        raw = [{**v, "id": str(k)} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise ValueError("predictions: expected a JSON list, a JSON-lines file or an {id: answers} map")
    raw = [{**r, "id": str(r["id"])} if isinstance(r, dict) and "id" in r else r for r in raw]
    return msgspec.convert(raw, list[VStarPrediction])


def load_predictions(path: str | Path) -> list[VStarPrediction]:
    """Prediction file (JSON list, ``{id: answers}`` map, or JSONL) → predictions."""
    return decode_predictions(load_json_or_jsonl(path))


def split_merged(raws: Sequence[dict[str, Any]]) -> tuple[list[VStarItem], list[VStarPrediction]]:
    """The reference evaluator's merged list → (items, predictions). An object without any
    ``answer_*`` field has no prediction (counted missing)."""
    keys = annotation_keys(raws)
    items = [item_from_dict(r, k) for r, k in zip(raws, keys)]
    preds = []
    for r, k in zip(raws, keys):
        fields = {f: r[f] for f in PREDICTION_FIELDS if f in r}
        if fields:
            preds.append(VStarPrediction(id=k, **fields))
    return items, preds


# ----------------------------------------------------------------------------------------- scoring
def predicted_span(value: Any, raw_text: str | None) -> list[float]:
    """A chain's predicted span: ``answer_temporal`` if it is two numbers, else parsed from the text."""
    if isinstance(value, str):
        value = parse_span_text(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_float(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return parse_span_text(raw_text)


def predicted_boxes(value: Any, scale: tuple[float, float] = (1.0, 1.0)) -> list[tuple[float, list[Box]]]:
    """``answer_spatial`` → ``[(time, boxes)]`` sorted by time; unparseable keys/boxes are dropped.

    Also accepts the reference's fallback list form ``[[time, box], …]``.
    """
    if isinstance(value, list):
        value = {str(v[0]): v[1] for v in value if isinstance(v, (list, tuple)) and len(v) == 2}
    if not isinstance(value, dict):
        return []
    sx, sy = scale
    out = []
    for key, boxes in value.items():
        t = _time_of_key(key)
        parsed = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in box_list(boxes)]
        if t is not None:
            out.append((t, parsed))
    out.sort(key=lambda tb: tb[0])
    return out


def frame_ious(
    frames: Sequence[GTFrame], preds: Sequence[tuple[float, list[Box]]], match: SpatialMatch = DEFAULT_SPATIAL_MATCH
) -> list[float]:
    """IoU per ground-truth frame: best IoU among the boxes predicted for exactly the frame's time
    (``exact``, the reference) or for the nearest predicted time (``nearest``, not comparable); 0 when
    no prediction applies."""
    ious = []
    for f in frames:
        if not preds:
            ious.append(0.0)
            continue
        if match == "exact":
            hit = [b for t, b in preds if abs(t - f.timestamp) < 1e-6]
            boxes = hit[0] if hit else []
        else:
            boxes = min(preds, key=lambda tb: abs(tb[0] - f.timestamp))[1]
        ious.append(best_iou(f.box, boxes))
    return ious


def ap_rates(ious: Sequence[float]) -> list[float]:
    """AP@τ for τ in :data:`AP_THRESHOLDS`: the fraction of frames with IoU ≥ τ (0 with no frames,
    as the reference)."""
    if not ious:
        return [0.0] * len(AP_THRESHOLDS)
    return [sum(i >= th for i in ious) / len(ious) for th in AP_THRESHOLDS]


def _chain(item: VStarItem, span_value: Any, span_text: str | None, spatial: Any,
           scale: tuple[float, float], match: SpatialMatch) -> ChainScore:
    tiou = span_iou(item.timestamps, predicted_span(span_value, span_text)) if item.timestamps else 0.0
    ious = frame_ious(item.frames, predicted_boxes(spatial, scale), match)
    return ChainScore(tiou=tiou, viou=sum(ious) / len(ious) if ious else 0.0, ap=ap_rates(ious))


def score_item(
    item: VStarItem, pred: VStarPrediction | None, judge: Judge, match: SpatialMatch = DEFAULT_SPATIAL_MATCH
) -> ItemScore:
    """Score one item; ``pred=None`` (missing) scores 0 on everything."""
    whole_span = [0.0, item.duration] if item.duration else None
    random_tiou = span_iou(item.timestamps, whole_span) if item.timestamps else 0.0
    if item.width and item.height:
        whole = (0.0, 0.0, item.width, item.height)
        random_ious = [best_iou(f.box, [whole]) for f in item.frames]
    else:
        random_ious = []
    random_viou = sum(random_ious) / len(random_ious) if random_ious else 0.0
    empty = ChainScore(tiou=0.0, viou=0.0, ap=[0.0] * len(AP_THRESHOLDS))
    if pred is None:
        return ItemScore(item.key, item.domain, True, False, [empty, empty], random_tiou, random_viou,
                         ap_rates(random_ious))
    scale = (1.0, 1.0)
    if pred.frame_size and item.width and item.height and all(pred.frame_size):
        scale = (item.width / pred.frame_size[0], item.height / pred.frame_size[1])
    correct = bool(pred.answer_vqa) and is_correct(item, pred.answer_vqa or "", judge)
    chains = [
        _chain(item, pred.answer_temporal, pred.answer_temporal_pre, pred.answer_spatial, scale, match),
        _chain(item, pred.answer_temporal_2, pred.answer_temporal_pre_2, pred.answer_spatial_2, scale, match),
    ]
    return ItemScore(item.key, item.domain, False, bool(correct), chains, random_tiou, random_viou,
                     ap_rates(random_ious))


def is_correct(item: VStarItem, candidate: str, judge: Judge) -> bool:
    """Multiple choice with a known letter: an answer that names an option (letter or option text)
    is right iff it names the correct one; anything else goes to the judge against the text answer."""
    if item.answer_option and item.options:
        letter = option_letter(candidate, item.options)
        if letter is not None:
            return letter == item.answer_option
    return bool(judge(item.question, item.answer, candidate, item.options))


def lgm(acc: float, tiou: float, viou: float, eps: float = LGM_EPS) -> float:
    """Log-geometric mean of one chain; each ``1 − x`` is clipped to ≥ ``eps`` so it stays finite."""
    return -sum(math.log(max(1.0 - x, eps)) for x in (acc, tiou, viou)) / 3.0


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


def summarize(scores: Sequence[ItemScore]) -> VStarSummary:
    """Aggregate item scores (every item counts, missing ones as 0) into the benchmark metrics."""
    n = len(scores)
    acc = _mean(float(s.correct) for s in scores)
    chains = []
    for c in range(2):
        tious = [s.chains[c].tiou for s in scores]
        vious = [s.chains[c].viou for s in scores]
        tiou, viou = _mean(tious), _mean(vious)
        chains.append(ChainMetrics(
            tiou=tiou,
            viou=viou,
            r1={f"{th:g}": _mean(float(t >= th) for t in tious) for th in R1_THRESHOLDS},
            ap={f"{th:g}": _mean(s.chains[c].ap[k] for s in scores) for k, th in enumerate(AP_THRESHOLDS)},
            am=(acc + tiou + viou) / 3.0,
            lgm=lgm(acc, tiou, viou),
            acc_and_tiou=_mean(float(s.correct and s.chains[c].tiou >= 0.3) for s in scores),
            acc_and_viou=_mean(float(s.correct and s.chains[c].viou >= 0.1) for s in scores),
            tiou_and_viou=_mean(float(s.chains[c].tiou >= 0.3 and s.chains[c].viou >= 0.1) for s in scores),
            acc_tiou_viou=_mean(
                float(s.correct and s.chains[c].tiou >= 0.3 and s.chains[c].viou >= 0.1) for s in scores
            ),
        ))
    return VStarSummary(
        n_items=n,
        n_missing=sum(s.missing for s in scores),
        acc=acc,
        chains=chains,
        mam=_mean(ch.am for ch in chains),
        mlgm=_mean(ch.lgm for ch in chains),
        random_tiou=_mean(s.random_tiou for s in scores),
        random_viou=_mean(s.random_viou for s in scores),
        random_ap={f"{th:g}": _mean(s.random_ap[k] for s in scores) for k, th in enumerate(AP_THRESHOLDS)},
    )


def evaluate(
    items: Sequence[VStarItem],
    predictions: Sequence[VStarPrediction],
    judge: Judge | None = None,
    spatial_match: SpatialMatch = DEFAULT_SPATIAL_MATCH,
) -> VStarReport:
    """Score every item against its prediction (matched by id) and aggregate overall and per domain."""
    judge = judge if judge is not None else DeterministicJudge()
    if spatial_match == NOT_COMPARABLE:
        log.warning("spatial_match=%s: vIoU/AP are NOT comparable with published V-STAR numbers "
                    "(the reference scores a frame without a prediction at its timestamp 0)", spatial_match)
    by_id: dict[str, VStarPrediction] = {}
    for p in predictions:
        if p.id in by_id:
            log.warning("duplicate prediction for %s: keeping the first", p.id)
            continue
        by_id[p.id] = p
    scores = [score_item(it, by_id.get(it.key), judge, spatial_match) for it in items]
    keys = {it.key for it in items}
    missing = [s.key for s in scores if s.missing]
    unmatched = sorted(k for k in by_id if k not in keys)
    if missing:
        log.warning("%d of %d items have no prediction (scored as wrong)", len(missing), len(items))
    if unmatched:
        log.warning("%d predictions match no annotation id, e.g. %s", len(unmatched), unmatched[:3])
    domains = sorted({s.domain for s in scores})
    return VStarReport(
        overall=summarize(scores),
        by_domain={d: summarize([s for s in scores if s.domain == d]) for d in domains},
        missing_ids=missing,
        unmatched_prediction_ids=unmatched,
        spatial_match=spatial_match,
        items=scores,
    )


# ------------------------------------------------------------------------------------------ tables
MAIN_COLUMNS: tuple[str, ...] = ("Acc", "tIoU c1", "vIoU c1", "tIoU c2", "vIoU c2", "mAM", "mLGM")


def main_row(s: VStarSummary) -> list[float]:
    """The paper's V-STAR columns, in its order, as percentages."""
    c1, c2 = s.chains
    return [100 * v for v in (s.acc, c1.tiou, c1.viou, c2.tiou, c2.viou, s.mam, s.mlgm)]


def render_tables(report: VStarReport, title: str = "V-STAR") -> list[Any]:
    """Rich tables: the paper's columns (overall and per domain), then per-chain details."""
    from rich.table import Table

    if report.spatial_match == NOT_COMPARABLE:
        title = f"{title} [spatial match '{report.spatial_match}': NOT comparable with published numbers]"
    main = Table(title=f"{title} (%, n={report.overall.n_items}, missing={report.overall.n_missing})")
    main.add_column("split")
    for col in MAIN_COLUMNS:
        main.add_column(col, justify="right")
    rows = [("all", report.overall)] + (list(report.by_domain.items()) if len(report.by_domain) > 1 else [])
    for name, summ in rows:
        main.add_row(name, *(f"{v:.1f}" for v in main_row(summ)))
    o = report.overall
    main.add_row("random", "-", f"{100 * o.random_tiou:.1f}", f"{100 * o.random_viou:.1f}",
                 f"{100 * o.random_tiou:.1f}", f"{100 * o.random_viou:.1f}", "-", "-")

    ground = Table(title="grounding per chain (%)")
    ground.add_column("chain")
    for col in [f"R1@{th:g}" for th in R1_THRESHOLDS] + ["mtIoU"] + [f"AP@{th:g}" for th in AP_THRESHOLDS] + ["mvIoU"]:
        ground.add_column(col, justify="right")
    combined = Table(title="chain scores and joint success (%): t = tIoU ≥ 0.3, v = vIoU ≥ 0.1")
    combined.add_column("chain")
    for col in ("AM", "LGM", "Acc&t", "Acc&v", "t&v", "Acc&t&v"):
        combined.add_column(col, justify="right")
    for c, ch in enumerate(o.chains, start=1):
        vals = [ch.r1[f"{th:g}"] for th in R1_THRESHOLDS] + [ch.tiou] + [ch.ap[f"{th:g}"] for th in AP_THRESHOLDS]
        ground.add_row(str(c), *(f"{100 * v:.1f}" for v in vals + [ch.viou]))
        joint = [ch.am, ch.lgm, ch.acc_and_tiou, ch.acc_and_viou, ch.tiou_and_viou, ch.acc_tiou_viou]
        combined.add_row(str(c), *(f"{100 * v:.1f}" for v in joint))
    return [main, ground, combined]
