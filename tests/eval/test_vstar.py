"""V-STAR metrics on a three-item benchmark whose every number is computed by hand below."""

from __future__ import annotations

import json
import math

import pytest

from stgrl.orchestration.evaluation import vstar
from stgrl.orchestration.evaluation.geometry import parse_span_text, span_iou
from stgrl.orchestration.evaluation.judge import DeterministicJudge, ExactJudge, make_judge


def _annotations() -> list[dict]:
    return [
        {"id": "a", "vid": "va", "domain": "x", "fps": 2, "frame_count": 20, "width": 100, "height": 100,
         "question": "What colour is the square?", "answer": "red", "timestamps": [2, 6],
         "bboxes": [{"timestamp": 2, "frame_index": 4, "xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10},
                    {"timestamp": 4, "frame_index": 8, "xmin": 10, "ymin": 10, "xmax": 30, "ymax": 30}]},
        {"id": "b", "vid": "vb", "domain": "x", "fps": 1, "frame_count": 10, "width": 100, "height": 100,
         "question": "Which colour?", "answer": "B", "options": ["A. blue", "B. red"], "timestamps": [0, 10],
         "bboxes": [{"timestamp": 5, "xmin": 50, "ymin": 50, "xmax": 100, "ymax": 100}]},
        {"id": "c", "vid": "vc", "domain": "y", "fps": 1, "frame_count": 10, "width": 100, "height": 100,
         "question": "What moves?", "answer": "a circle", "timestamps": [1, 2],
         "bboxes": [{"timestamp": 1, "xmin": 0, "ymin": 0, "xmax": 50, "ymax": 50}]},
    ]


def _predictions() -> list[dict]:
    return [
        {"id": "a", "answer_vqa": "<think>…</think><answer>Red.</answer>",
         "answer_temporal": [4, 8],                                   # tIoU 2/6
         "answer_spatial": {"2": [0, 0, 10, 10],                      # frame t=2: IoU 1
                            "4.5": [[0, 0, 5, 5], [10, 10, 30, 20]]},  # frame t=4 → key 4.5: best 200/400
         "answer_temporal_pre_2": "from 0:03 to 0:05",                # tIoU 2/4 with [2, 6]
         "answer_temporal_2": [], "answer_spatial_2": {}},
        {"id": "b", "answer_vqa": "A", "answer_temporal": [10, 0],    # wrong option; inverted span → 1
         "answer_spatial": {"5": [25, 25, 50, 50]}, "frame_size": [50, 50],  # ×2 → GT box exactly
         "answer_temporal_pre_2": "<answer><t>5.0</t>s to <t>10.0</t>s</answer>",  # tIoU 0.5
         "answer_spatial_2": {"7": [25, 25, 37.5, 50]}},              # ×2 → [50,50,75,100]: IoU 0.5
        {"id": "zzz", "answer_vqa": "nothing"},                       # matches no item
    ]


@pytest.fixture(scope="module")
def judge() -> DeterministicJudge:
    return DeterministicJudge()


def _report(judge, match="nearest") -> vstar.VStarReport:
    items = [vstar.item_from_dict(r, k) for r, k in zip(_annotations(), vstar.annotation_keys(_annotations()))]
    return vstar.evaluate(items, vstar.decode_predictions(_predictions()), judge=judge, spatial_match=match)


def test_item_scores_by_hand(judge):
    rep = _report(judge)
    a, b, c = rep.items
    assert a.correct and not b.correct and not c.correct
    assert a.chains[0].tiou == pytest.approx(1 / 3)
    assert a.chains[0].viou == pytest.approx(0.75)
    assert a.chains[0].ap == pytest.approx([1, 1, 1, 0.5, 0.5])
    assert a.chains[1].tiou == pytest.approx(0.5)          # mm:ss parsed from the free text
    assert a.chains[1].viou == 0 and a.chains[1].ap == [0] * 5  # empty spatial answer
    assert b.chains[0].tiou == pytest.approx(1.0)
    assert b.chains[0].viou == pytest.approx(1.0)          # frame_size rescaling
    assert b.chains[1].tiou == pytest.approx(0.5)
    assert b.chains[1].viou == pytest.approx(0.5)
    assert c.missing and c.chains[0].tiou == 0 and c.chains[1].viou == 0
    assert rep.missing_ids == ["c"]
    assert rep.unmatched_prediction_ids == ["zzz"]


def test_aggregates_by_hand(judge):
    s = _report(judge).overall
    assert s.n_items == 3 and s.n_missing == 1
    assert s.acc == pytest.approx(1 / 3)
    c1, c2 = s.chains
    assert c1.tiou == pytest.approx(4 / 9)
    assert c1.viou == pytest.approx(7 / 12)
    assert c1.r1 == pytest.approx({"0.3": 2 / 3, "0.5": 1 / 3, "0.7": 1 / 3})
    assert c1.ap == pytest.approx({"0.1": 2 / 3, "0.3": 2 / 3, "0.5": 2 / 3, "0.7": 0.5, "0.9": 0.5})
    assert c1.am == pytest.approx(49 / 108)
    assert c1.lgm == pytest.approx(-(math.log(2 / 3) + math.log(5 / 9) + math.log(5 / 12)) / 3)
    assert (c1.acc_and_tiou, c1.acc_and_viou, c1.tiou_and_viou, c1.acc_tiou_viou) == pytest.approx(
        (1 / 3, 1 / 3, 2 / 3, 1 / 3))
    assert c2.tiou == pytest.approx(1 / 3)
    assert c2.viou == pytest.approx(1 / 6)
    assert c2.am == pytest.approx(5 / 18)
    assert s.mam == pytest.approx((49 / 108 + 5 / 18) / 2)
    assert s.mlgm == pytest.approx((c1.lgm + c2.lgm) / 2)
    # whole video [0, 10]: tIoU .4, 1, .1; whole frame: vIoU (.01 + .04)/2, .25, .25
    assert s.random_tiou == pytest.approx(0.5)
    assert s.random_viou == pytest.approx(0.175)


def test_by_domain(judge):
    rep = _report(judge)
    assert set(rep.by_domain) == {"x", "y"}
    assert rep.by_domain["x"].n_items == 2 and rep.by_domain["x"].acc == pytest.approx(0.5)
    assert rep.by_domain["y"].n_missing == 1 and rep.by_domain["y"].mam == 0


def test_exact_spatial_match_is_the_reference_rule(judge):
    assert vstar.evaluate([], [], judge).spatial_match == "exact"  # the default
    a = _report(judge, match="exact").items[0]
    assert a.chains[0].viou == pytest.approx(0.5)  # no key "4" → frame t=4 scores 0
    assert a.chains[0].ap == pytest.approx([0.5] * 5)


def test_perfect_prediction_am_one_lgm_finite(judge):
    ann = _annotations()[:1]
    pred = [{"id": "a", "answer_vqa": "red", "answer_temporal": [2, 6], "answer_temporal_2": [2, 6],
             "answer_spatial": {"2": [0, 0, 10, 10], "4": [10, 10, 30, 30]},
             "answer_spatial_2": {"2": [0, 0, 10, 10], "4": [10, 10, 30, 30]}}]
    s = vstar.evaluate([vstar.item_from_dict(ann[0], "a")], vstar.decode_predictions(pred), judge).overall
    assert s.acc == 1 and s.mam == pytest.approx(1.0)
    assert s.chains[0].ap == pytest.approx({k: 1.0 for k in ("0.1", "0.3", "0.5", "0.7", "0.9")})
    assert math.isfinite(s.mlgm) and s.mlgm == pytest.approx(-math.log(vstar.LGM_EPS))


def test_empty_ground_truth_boxes_and_garbage_predictions(judge):
    raw = {**_annotations()[0], "bboxes": []}
    item = vstar.item_from_dict(raw, "a")
    pred = vstar.decode_predictions([{"id": "a", "answer_vqa": "", "answer_temporal": ["x", None],
                                      "answer_spatial": {"2": [float("nan"), 0, 1, 1], "bad": [0, 0, 1, 1]}}])
    sc = vstar.evaluate([item], pred, judge).items[0]
    assert not sc.missing and not sc.correct
    assert sc.chains[0].tiou == 0 and sc.chains[0].viou == 0 and sc.chains[0].ap == [0] * 5


def test_merged_format_gives_the_same_numbers(judge):
    preds = {p["id"]: p for p in _predictions()}
    merged = [{**ann, **{k: v for k, v in preds.get(ann["id"], {}).items() if k != "id"}} for ann in _annotations()]
    # the merged form has no frame_size; give b its boxes in annotation pixels instead
    merged[1]["answer_spatial"] = {"5": [50, 50, 100, 100]}
    merged[1]["answer_spatial_2"] = {"7": [50, 50, 75, 100]}
    items, p = vstar.split_merged(merged)
    assert [x.id for x in p] == ["a", "b"]
    got = vstar.evaluate(items, p, judge).overall  # the default: the reference's exact rule
    want = _report(judge, match="exact").overall
    assert got.mam == pytest.approx(want.mam) and got.mlgm == pytest.approx(want.mlgm)
    assert got.n_missing == 1


def test_public_keyed_boxes_and_vid_keys():
    raws = [{"vid": "v1", "question": "q", "answer": "x", "timestamps": [1, 3],
             "bboxes": [{"2_4": {"xmin": 0, "ymin": 0, "xmax": 4, "ymax": 4}}, {"3": [1, 1, 2, 2]}]},
            {"vid": "v1", "question": "q", "answer": "y", "timestamps": [0, 1], "bboxes": []}]
    keys = vstar.annotation_keys(raws)
    assert keys == ["v1", "v1#1"]
    item = vstar.item_from_dict(raws[0], keys[0])
    assert [(f.timestamp, f.box) for f in item.frames] == [(2.0, (0, 0, 4, 4)), (3.0, (1, 1, 2, 2))]


@pytest.mark.parametrize(("text", "want"), [
    ("from 0:03 to 0:05", [3.0, 5.0]),
    ("<think>at 1s, 2s, 3s</think><answer><t>1.5</t>s to <t>4</t>s</answer>", [1.5, 4.0]),
    ("between 12.5 and 20 seconds", [12.5, 20.0]),
    ("at 3, 4 and 5", []),
    ("", []),
])
def test_parse_span_text(text, want):
    assert parse_span_text(text) == want


def test_span_iou_edges():
    assert span_iou([0, 10], [0, 10]) == 1
    assert span_iou([0, 10], [20, 30]) == 0
    assert span_iou([0, 10], [float("inf"), 1]) == 0
    assert span_iou([5, 5], [5, 5]) == 0  # zero-length union


def test_judges():
    det, exact = DeterministicJudge(), ExactJudge()
    assert det("q", "the red square moves left", "A red square is moving to the left.")
    assert not exact("q", "the red square moves left", "A red square is moving to the left.")
    assert det("q", "B", "(B) red", ["A. blue", "B. red"])
    assert det("q", "B", "red", ["A. blue", "B. red"])        # option text maps to its letter
    assert not det("q", "B", "A", ["A. blue", "B. red"])
    assert not det("q", "blue circle", "green triangle")
    assert not det("q", "red", "")
    with pytest.raises(ValueError, match="deterministic"):
        make_judge("gpt")


def test_cli_writes_report(tmp_path):
    from stgrl.orchestration.commands import eval as eval_cmd

    ann, pred, out = tmp_path / "a.json", tmp_path / "p.jsonl", tmp_path / "o" / "m.json"
    ann.write_text(json.dumps(_annotations()))
    pred.write_text("\n".join(json.dumps(p) for p in _predictions()))
    import argparse

    parser = argparse.ArgumentParser()
    eval_cmd.configure(parser)
    args = parser.parse_args(["vstar", "--annotations", str(ann), "--predictions", str(pred), "-o", str(out)])
    assert eval_cmd.run(args) == 0
    rep = json.loads(out.read_text())
    assert rep["overall"]["acc"] == pytest.approx(1 / 3)
    assert rep["missing_ids"] == ["c"]
    assert len(rep["items"]) == 3
    bad = parser.parse_args(["vstar", "--annotations", str(ann)])
    assert eval_cmd.run(bad) == 2


def test_answer_option_letter_or_text(judge):
    raw = {**_annotations()[0], "answer": "red", "options": ["A. blue", "B. red"], "answer_option": "B"}
    item = vstar.item_from_dict(raw, "a")
    assert vstar.is_correct(item, "B", judge) and vstar.is_correct(item, "<answer>(B)</answer>", judge)
    assert vstar.is_correct(item, "red", judge)                 # the option's text names B
    assert not vstar.is_correct(item, "A", judge) and not vstar.is_correct(item, "blue", judge)
    # multiple choice is strict: text that names no option is wrong even if ROUGE would pass it
    assert not vstar.is_correct(item, "it is red", judge)
    free = vstar.item_from_dict({**_annotations()[0], "answer": "red"}, "a")
    assert vstar.is_correct(free, "it is red", judge)           # free form: ROUGE-L F1 = 0.5
