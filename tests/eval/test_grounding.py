"""Grounding diagnostics on hand-made samples: perfect, mean-box and video-ignoring predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stgrl.orchestration.evaluation import grounding as g

W, H = 100.0, 50.0


def _gt(i: int) -> g.GroundTruth:
    """Sample i: a red square at t=1 and t=3 whose position depends on i; duration 8 s."""
    a = [0.1 * i, 0.2, 0.1 * i + 0.2, 0.6]
    b = [0.1 * i + 0.1, 0.3, 0.1 * i + 0.3, 0.7]
    rec = {"key_frames": [{"idx": 2, "time": 1.0}, {"idx": 6, "time": 3.0}],
           "key_items": {"2": {"red square": [a]}, "6": {"red square": [b], "blue circle": [[0, 0, 0.5, 0.5]]}}}
    return g.GroundTruth.from_record(rec, (W, H), duration=8.0)


def _px(box) -> list[float]:
    return [box[0] * W, box[1] * H, box[2] * W, box[3] * H]


def _perfect(gt: g.GroundTruth) -> list[g.ClaimTuple]:
    return [("red square", [_px(gt.key_items[idx]["red square"][0])], gt.key_times[idx]) for idx in ("2", "6")]


GTS = [_gt(i) for i in range(5)]


def test_perfect_predictor():
    rep = g.diagnose([(_perfect(gt), gt) for gt in GTS])
    assert rep.model.iou == pytest.approx(1.0)
    assert rep.model.center_error == pytest.approx(0.0)
    assert rep.model.iou_ge_0_5 == 1.0 and rep.model.n_boxes == 10
    assert rep.time_error == pytest.approx(0.0)
    assert rep.middle_time_error == pytest.approx(1.0)  # middle 4 s, nearest key frame 3 s
    assert rep.mean_box.iou < 1.0 and rep.random_box.iou < rep.model.iou
    assert rep.n_claims == 10 and rep.n_unknown_objects == 0


def test_mean_box_predictor_equals_mean_box_baseline():
    mbox = g.mean_gt_box(GTS)
    # hand, over 15 boxes (5 samples × red at t=1, red at t=3, blue at t=3):
    # x1 = (Σ0.1i + Σ(0.1i+0.1) + 0) / 15 = (1.0 + 1.5) / 15; y1 = (5·0.2 + 5·0.3 + 0) / 15
    # x2 = (Σ(0.1i+0.2) + Σ(0.1i+0.3) + 5·0.5) / 15 = 7/15; y2 = (5·0.6 + 5·0.7 + 5·0.5) / 15
    assert mbox == pytest.approx((1 / 6, 1 / 6, 7 / 15, 9 / 15))
    samples = [([(n, [_px(mbox)], t) for n, _, t in _perfect(gt)], gt) for gt in GTS]
    rep = g.diagnose(samples)
    assert rep.model.iou == pytest.approx(rep.mean_box.iou)
    assert rep.model.center_error == pytest.approx(rep.mean_box.center_error)
    assert rep.model.iou < 1.0


def test_hand_computed_shifted_box_and_nearest_key_frame():
    gt = _gt(1)  # t=1: [0.1, 0.2, 0.3, 0.6]; t=3: [0.2, 0.3, 0.4, 0.7]
    # shifted right by 0.1 of the width, claimed at 1.4 s → nearest key frame 1 s
    s = g.score_sample([("The red squares", [[20, 10, 40, 30]], 1.4)], gt)
    assert s.ious == pytest.approx([(0.1 * 0.4) / (0.08 + 0.08 - 0.04)])  # 1/3
    assert s.center_errors == pytest.approx([0.1])
    assert s.time_errors == pytest.approx([0.4])
    # the same box at 2.6 s is compared with the t=3 frame instead
    s2 = g.score_sample([("red square", [[20, 10, 40, 30]], 2.6)], gt)
    assert s2.ious == pytest.approx([(0.2 * 0.3) / (0.08 + 0.08 - 0.06)])  # 0.6
    assert s2.center_errors == pytest.approx([math.hypot(0.0, 0.1)])


def test_unknown_invalid_untimed_claims_score_zero():
    gt = _gt(0)
    s = g.score_sample([("green dragon", [[0, 0, 10, 10]], 1.0),
                        ("red square", [None, [float("nan"), 0, 1, 1]], 1.0),
                        ("red square", [[0, 10, 20, 30]], None)], gt)
    assert s.ious == [0.0, 0.0, 0.0, 0.0]
    assert (s.n_unknown_objects, s.n_invalid_boxes, s.n_untimed_claims) == (1, 2, 1)
    assert s.center_errors == [] and s.mean_iou == 0.0


def test_random_baseline_is_seeded():
    samples = [(_perfect(gt), gt) for gt in GTS]
    r1, r2, r3 = g.diagnose(samples, seed=1), g.diagnose(samples, seed=1), g.diagnose(samples, seed=2)
    assert r1.random_box.iou == r2.random_box.iou
    assert r1.random_box.iou != r3.random_box.iou
    assert 0.0 <= r1.random_box.iou < 0.5


def test_swapped_video_test():
    n = len(GTS)

    def uses_video(video_gt):
        return _perfect(video_gt)

    def ignores_video(_video_gt):
        return [("red square", [_px(g.mean_gt_box(GTS))], 1.0), ("red square", [_px(g.mean_gt_box(GTS))], 3.0)]

    for predictor, reads_pixels in ((uses_video, True), (ignores_video, False)):
        own = [g.score_sample(predictor(GTS[i]), GTS[i]).mean_iou for i in range(n)]
        swapped = [g.score_sample(predictor(GTS[(i + 2) % n]), GTS[i]).mean_iou for i in range(n)]
        res = g.swapped_video_test(own, swapped, seed=0)
        if reads_pixels:
            assert res.mean_own == pytest.approx(1.0)
            assert res.mean_diff > 0.5 and res.ci_low > 0 and res.p_not_better == 0.0
        else:
            assert res.mean_diff == 0 and res.ci_low <= 0 <= res.ci_high and res.p_not_better == 1.0


def test_swapped_video_ci_covers_noise():
    rng = np.random.default_rng(0)
    own = rng.uniform(0, 1, 200)
    res = g.swapped_video_test(own, own + rng.normal(0, 0.1, 200), n_boot=1000)
    assert res.ci_low < 0 < res.ci_high
    shifted = g.swapped_video_test(own, own - 0.2 + rng.normal(0, 0.1, 200), n_boot=1000)
    assert shifted.ci_low > 0.15 and shifted.ci_high < 0.25
    with pytest.raises(ValueError):
        g.swapped_video_test([1.0], [1.0, 2.0])


def test_claims_from_text_uses_the_reward_parser():
    text = ("<think>I see <obj>red square</obj><box>[10,10,30,30]</box>at<t>1.0</t>s and "
            "<obj>blue circle</obj><box>[0,0,50,25]</box><box>[1,1,2,2]</box>at<t>3</t>s</think><answer>x</answer>")
    claims = g.claims_from_text(text)
    assert [(c[0], len(c[1]), c[2]) for c in claims] == [("red square", 1, 1.0), ("blue circle", 2, 3.0)]
    s = g.score_sample(claims, _gt(0))
    assert s.ious[1] == pytest.approx(1.0)  # blue circle [0,0,.5,.5] at 3 s
