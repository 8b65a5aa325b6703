"""Hand-computed values for every reward component, the [fix] cases of docs/design.md §3, routing and totals."""

from __future__ import annotations

import math
import random

import pytest
from rouge_score import rouge_scorer

from stgrl.reward_service.config import RewardConfig, RewardWeights
from stgrl.reward_service.geometry import box_iou, interval_iou, match_score, match_score_scipy
from stgrl.reward_service.rewards import score_batch, score_sample
from stgrl.reward_service.text import normalize_object_name, rouge_library_mean_f1, rouge_mean_f1
from stgrl.reward_service.types import KeyFrame, ScoringSample

CFG = RewardConfig()


def st(completion: str, **kw) -> ScoringSample:
    """A spatio_temporal sample on a 100x100 frame: key frame 0 at 2.0 s, key frame 1 at 9.2 s."""
    base = dict(id="s", task="spatio_temporal", completion=completion, answer="a red car", frame_size=[100, 100],
                key_frames=[KeyFrame(0, 2.0), KeyFrame(1, 9.2)],
                key_items={"0": {"red car": [[0.0, 0.0, 0.5, 0.5]], "dog": [[0.5, 0.5, 1.0, 1.0]]},
                           "1": {"red car": [[0.25, 0.0, 0.75, 0.5]]}})
    base.update(kw)
    return ScoringSample(**base)


def think(*claims: str, answer: str = "a red car") -> str:
    return f"<think>{' '.join(claims)}</think><answer>{answer}</answer>"


def comps(sample: ScoringSample, step: int = 0, total: int = 4, cfg: RewardConfig = CFG) -> dict[str, float]:
    s = score_sample(sample, step, total, cfg)
    assert s.error is None
    return s.components


# ------------------------------------------------------------------------------------ geometry
def test_box_and_interval_iou():
    assert box_iou([0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([1, 1, 0, 0], [0, 0, 1, 1]) == 0.0  # inverted scores 0
    assert interval_iou((3, 7), (5, 9)) == pytest.approx(2 / 6)
    assert interval_iou((7, 3), (3, 7)) == 0.0


def test_match_is_optimal_not_greedy():
    # IoUs: a-g0 1/3, a-g1 0.4, b-g0 0, b-g1 1/3. Greedy takes a-g1 (0.4) and leaves b with 0;
    # the optimum pairs a-g0 and b-g1: (1/3 + 1/3) / 2.
    a, b = [0, 0, 3, 1], [3, 0, 7, 1]
    gt = [[2, 0, 3, 1], [1, 0, 5, 1]]
    assert match_score([a, b], gt) == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert match_score([a, b], gt) == pytest.approx(match_score_scipy([a, b], gt))


def test_match_agrees_with_hungarian_twin():
    rng = random.Random(0)

    def box():
        x, y = rng.random(), rng.random()
        return [x, y, x + rng.random() * 0.5, y + rng.random() * 0.5]

    for _ in range(300):
        pred = [box() if rng.random() > 0.1 else None for _ in range(rng.randint(1, 7))]
        gt = [box() for _ in range(rng.randint(1, 7))]
        assert match_score(pred, gt) == pytest.approx(match_score_scipy(pred, gt), abs=1e-12)


# ------------------------------------------------------------------------------------- format
def test_format_levels():
    good = "<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s"
    assert comps(st(think(good)))["format"] == 1.0
    assert comps(st(think("no claims here")))["format"] == 0.5
    assert comps(st("<think>x</think>no answer"))["format"] == 0.0
    assert comps(st(think("<obj>red car</obj><box>[0,0,nan,50]</box>at<t>2</t>s")))["format"] == 0.5
    general = ScoringSample(id="g", task="general", completion=think("plain"), answer="B",
                            options=["A. x", "B. y"], frame_size=[1, 1])
    assert comps(general)["format"] == 1.0  # claims are required only for spatio_temporal


# ---------------------------------------------------------------------------- answer_accuracy
@pytest.mark.parametrize("ans,expected", [("B", 1.0), ("(B)", 1.0), ("[B]", 1.0), ("B.", 1.0),
                                          ("B. a dog", 1.0), ("C", 0.0), ("", 0.0)])
def test_accuracy_multiple_choice(ans, expected):
    s = ScoringSample(id="g", task="general", completion=think("x", answer=ans), answer="B",
                      options=["A. cat", "B. dog", "C. car"], frame_size=[1, 1])
    assert comps(s)["answer_accuracy"] == expected


def test_accuracy_free_form_rouge_by_hand_and_against_the_library():
    # truth "the cat sat", prediction "the cat": R1 F=0.8, R2 F=2/3, RL F=0.8
    assert rouge_mean_f1("the cat sat", "the cat") == pytest.approx((0.8 + 2 / 3 + 0.8) / 3)
    plain = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for ref, hyp in [("The running dogs jumped over fences", "a dog runs and jumps over the fence"),
                     ("red car turning left", "the red cars turned left at the crossing"), ("x", "")]:
        sc = plain.score(ref, hyp)
        want = (sc["rouge1"].fmeasure + sc["rouge2"].fmeasure + sc["rougeL"].fmeasure) / 3
        assert rouge_mean_f1(ref, hyp) == pytest.approx(want, abs=1e-12)
    assert comps(st(think("x", answer="the cat"), answer="the cat sat"))["answer_accuracy"] == pytest.approx(
        (0.8 + 2 / 3 + 0.8) / 3)


def test_fast_rouge_equals_the_library_on_random_texts():
    rng = random.Random(7)
    words = "the a dog dogs running runs ran car cars red blue x y 1 2 3 over under jumps jumping !,.".split()
    for _ in range(400):
        ref = " ".join(rng.choices(words, k=rng.randint(0, 25)))
        hyp = " ".join(rng.choices(words, k=rng.randint(0, 70)))  # > 64 tokens: multi-word bit masks
        assert rouge_mean_f1(ref, hyp) == pytest.approx(rouge_library_mean_f1(ref, hyp), abs=1e-12)


# ---------------------------------------------------------------------------- temporal task
def temporal(completion: str, **kw) -> ScoringSample:
    base = dict(id="t", task="temporal", completion=completion, answer="[5, 9]", span=[5.0, 9.0],
                frame_size=[1, 1])
    base.update(kw)
    return ScoringSample(**base)


def test_answer_tiou_and_think_segment():
    c = "<think><t>2</t>s <t>6</t>s <t>8.5</t>s <t>x</t>s</think><answer><t>3</t>s to <t>7</t>s</answer>"
    got = comps(temporal(c))
    assert set(got) == {"format", "answer_tiou", "think_temporal_segment"}
    assert got["answer_tiou"] == pytest.approx(2 / 6)  # [3,7] vs [5,9]
    assert got["think_temporal_segment"] == pytest.approx(2 / 4)  # 6 and 8.5 inside, 2 and "x" not
    inverted = "<think>x</think><answer><t>7</t>s to <t>3</t>s</answer>"
    assert comps(temporal(inverted))["answer_tiou"] == 0.0


def test_think_segment_counts_a_negative_time_as_outside_the_span():
    """Deliberately unlike the reference (docs/fidelity.md R8), whose `[\\d.]+` never sees `-3`: a time
    before the video starts is a wrong time, so it counts and lies outside [5, 9]."""
    c = "<think><t>-3</t>s <t>6</t>s</think><answer><t>5</t>s to <t>9</t>s</answer>"
    assert comps(temporal(c))["think_temporal_segment"] == pytest.approx(1 / 2)


def test_temporal_mcq_gets_accuracy_and_span_from_answer():
    c = "<think><t>6</t>s</think><answer>Correct Option: B\n<t>5</t>s to <t>9</t>s</answer>"
    got = comps(temporal(c, answer="B\n[5, 9]", span=None, options=["A. [0, 2]", "B. [5, 9]"]))
    assert got == {"format": 1.0, "answer_accuracy": 1.0, "answer_tiou": 1.0, "think_temporal_segment": 1.0}


# ------------------------------------------------------------------------------ spatial task
def test_answer_viou_uses_frame_size():
    s = ScoringSample(id="v", task="spatial", completion=think("x", answer="<box>[0,0,50,50]</box>"),
                      key_items={"0": {"cup": [[0.0, 0.0, 0.5, 0.5]]}}, frame_size=[100, 200])
    # [0,0,50,50] px in 100x200 -> [0,0,.5,.25]; against [0,0,.5,.5]: IoU 0.5
    assert comps(s) == {"format": 1.0, "answer_viou": pytest.approx(0.5)}


def _grid_boxes(width: int, height: int) -> list[str]:
    """Blind tilings of the frame, 2x2 to 5x5: 54 boxes written without looking at the image."""
    out = []
    for n in range(2, 6):
        for i in range(n):
            for j in range(n):
                out.append(f"<box>[{i * width // n},{j * height // n},{(i + 1) * width // n},{(j + 1) * height // n}]</box>")
    return out


def test_answer_viou_blind_grid_scores_nothing_and_one_exact_box_scores_one():
    """[fix] with "best IoU of any box" this 54-box grid scored 1.0 (its 2x2 tile [50,0,100,50] is the
    object's box exactly; 0.58 on average over real spatial samples); one-to-one matching divides the
    one matched IoU by max(#pred, #gt) = 54."""
    gt = {"0": {"cup": [[0.5, 0.0, 1.0, 0.5]]}}
    grid = _grid_boxes(100, 100)
    assert len(grid) == 54
    blind = ScoringSample(id="v", task="spatial", completion=think("x", answer="".join(grid)), key_items=gt,
                          frame_size=[100, 100])
    assert comps(blind)["answer_viou"] == pytest.approx(1 / 54)  # the one exact tile, shared by 54 boxes
    exact = ScoringSample(id="v", task="spatial", completion=think("x", answer="<box>[50,0,100,50]</box>"),
                          key_items=gt, frame_size=[100, 100])
    assert comps(exact)["answer_viou"] == pytest.approx(1.0)
    # one exact box plus one elsewhere: (1 + 0) / 2; a malformed extra box costs like any other
    two = think("x", answer="<box>[50,0,100,50]</box><box>[0,60,20,80]</box>")
    assert comps(ScoringSample(id="v", task="spatial", completion=two, key_items=gt,
                               frame_size=[100, 100]))["answer_viou"] == pytest.approx(0.5)
    bad = think("x", answer="<box>[50,0,100,50]</box><box>[1,2,x,4]</box>")
    assert comps(ScoringSample(id="v", task="spatial", completion=bad, key_items=gt,
                               frame_size=[100, 100]))["answer_viou"] == pytest.approx(0.5)


def test_answer_viou_matches_several_ground_truth_boxes_one_to_one():
    gt = {"0": {"cup": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]}}
    both = think("x", answer="<box>[0,0,50,50]</box><box>[50,50,100,100]</box>")
    one = think("x", answer="<box>[0,0,50,50]</box>")
    twice = think("x", answer="<box>[0,0,50,50]</box><box>[0,0,50,50]</box>")
    got = [comps(ScoringSample(id="v", task="spatial", completion=c, key_items=gt, frame_size=[100, 100]))
           ["answer_viou"] for c in (both, one, twice)]
    assert got == pytest.approx([1.0, 0.5, 0.5])  # the same box twice matches one object only


def test_temporal_mcq_in_the_reference_answer_order():
    """[fix] the reference prompt asks for the span first, the option after it; the letter was looked
    for only at the start, so this answer (87 of 2,000 samples) scored accuracy 0."""
    c = "<think><t>38</t>s</think><answer>From <t>37.4</t>s to <t>39.4</t>s.\nCorrect Option: A</answer>"
    got = comps(temporal(c, answer="A\n[37.9, 40.5]", span=[37.9, 40.5], options=["A. [37.9, 40.5]", "B. [0, 2]"]))
    assert got["answer_accuracy"] == 1.0
    assert got["answer_tiou"] == pytest.approx((39.4 - 37.9) / (40.5 - 37.4))
    wrong = c.replace("Option: A", "Option: B")
    assert comps(temporal(wrong, answer="A\n[37.9, 40.5]", span=[37.9, 40.5],
                          options=["A. x", "B. y"]))["answer_accuracy"] == 0.0


@pytest.mark.parametrize("ans", ["A man is walking", "I think it is B", "Because B", "Bob"])
def test_option_letter_needs_a_delimiter_after_it(ans):
    """[fix] "A man is walking" read as option A and "I think it is B" as option I."""
    s = ScoringSample(id="g", task="general", completion=think("x", answer=ans), answer="A",
                      options=["A. man", "B. dog", "I. ink"], frame_size=[1, 1])
    assert comps(s)["answer_accuracy"] == 0.0
    i_truth = ScoringSample(id="g", task="general", completion=think("x", answer=ans), answer="I",
                            options=["A. man", "B. dog", "I. ink"], frame_size=[1, 1])
    assert comps(i_truth)["answer_accuracy"] == 0.0


# ------------------------------------------------------------------------ temporal proximity
def test_proximity_curriculum_by_hand():
    c = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>5.0</t>s")
    # d = 3 (key frame at 2.0). step 0 of 4: p=.25, sigma=3 -> exp(-9/18)
    assert comps(st(c), step=0, total=4)["temporal_proximity"] == pytest.approx(math.exp(-0.5))
    # last step: p=1, sigma=sigma_min=1 -> exp(-4.5)
    assert comps(st(c), step=3, total=4)["temporal_proximity"] == pytest.approx(math.exp(-4.5))


def test_proximity_scope_claims_vs_all():
    c = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s and later <t>5.0</t>s")
    assert comps(st(c))["temporal_proximity"] == pytest.approx(1.0)
    all_cfg = RewardConfig(proximity_scope="all")
    assert comps(st(c), cfg=all_cfg)["temporal_proximity"] == pytest.approx((1 + math.exp(-0.5)) / 2)


def test_proximity_scope_all_counts_only_times_with_their_unit():
    """`all` reproduces the reference, whose pattern is `<t>([\\d.]+)</t>s`: the bare `<t>5.0</t>` is no
    mention (it was counted: (1 + 2 e^-0.5) / 3 instead of (1 + e^-0.5) / 2)."""
    c = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s, then <t>5.0</t>s and <t>5.0</t> again")
    all_cfg = RewardConfig(proximity_scope="all")
    # mentions: 2.0 (d 0) and the first 5.0 (d 3, sigma 3 at step 0 of 4); the bare <t>5.0</t> is not one
    assert comps(st(c), cfg=all_cfg)["temporal_proximity"] == pytest.approx((1 + math.exp(-0.5)) / 2)
    spaced = think("<obj>red car</obj><box>[0,0,50,50]</box> at <t>2.0</t> s")  # claim grammar's spacing
    assert comps(st(spaced), cfg=all_cfg)["temporal_proximity"] == pytest.approx(1.0)


# -------------------------------------------------------------------------- spatial gated
def test_gate_uses_absolute_difference():
    """[fix] a claim at t=40 s against a key frame at 9.2 s scores 0 (the reference's signed test passes it)."""
    c = think("<obj>red car</obj><box>[25,0,75,50]</box>at<t>40</t>s")
    assert comps(st(c))["spatial_gated"] == 0.0
    # the same box at 9.5 s is inside the 1 s gate and matches key frame 1 exactly
    c_ok = think("<obj>red car</obj><box>[25,0,75,50]</box>at<t>9.5</t>s")
    assert comps(st(c_ok))["spatial_gated"] == pytest.approx(1.0)
    # "plain" ablation: no gate, nearest key frame, no proximity component
    plain = comps(st(c), cfg=RewardConfig(spatial_mode="plain"))
    assert plain["spatial_gated"] == pytest.approx(1.0) and "temporal_proximity" not in plain


def test_wrong_object_scores_zero_with_name_matching():
    """[fix] a box on the dog, claimed as "red car", earns nothing with object_match=name."""
    c = think("<obj>red car</obj><box>[50,50,100,100]</box>at<t>2.0</t>s")
    assert comps(st(c))["spatial_gated"] == 0.0
    assert comps(st(c), cfg=RewardConfig(object_match="any"))["spatial_gated"] == pytest.approx(1.0)
    # names match after lower-casing, articles and plural s
    c2 = think("<obj>The Red Cars</obj><box>[0,0,50,50]</box>at<t>2.0</t>s")
    assert comps(st(c2))["spatial_gated"] == pytest.approx(1.0)
    assert normalize_object_name("the red cars") == normalize_object_name("A red car") == "red car"


def test_extra_boxes_lower_the_score():
    one = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s")
    two = think("<obj>red car</obj><box>[0,0,50,50]</box><box>[60,60,90,90]</box>at<t>2.0</t>s")
    assert comps(st(one))["spatial_gated"] == pytest.approx(1.0)
    assert comps(st(two))["spatial_gated"] == pytest.approx(0.5)  # (1 + 0) / max(2, 1)


def test_spatial_mean_over_claims_with_partial_iou():
    c = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>9.2</t>s",  # vs [.25,0,.75,.5]: 1/3
              "<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.5</t>s",  # exact: 1
              "<obj>red car</obj><box>[0,0,50,50]</box>at<t>5.6</t>s")  # gate closed: 0
    assert comps(st(c))["spatial_gated"] == pytest.approx((1 / 3 + 1 + 0) / 3)


# ------------------------------------------------------------------------- routing, totals
def test_mixed_batch_is_routed_per_sample():
    """[fix] each sample by its own task (the reference routes the batch by its first sample)."""
    batch = [
        temporal("<think><t>6</t>s</think><answer><t>5</t>s to <t>9</t>s</answer>", id="a"),
        st(think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>2.0</t>s"), id="b"),
        ScoringSample(id="c", task="general", completion=think("x", answer="A"), answer="A", options=["A. 1"],
                      frame_size=[1, 1]),
        ScoringSample(id="d", task="spatial", completion=think("x", answer="<box>[0,0,1,1]</box>"),
                      key_items={"0": {"o": [[0, 0, 1, 1]]}}, frame_size=[1, 1]),
    ]
    out = score_batch(batch, 0, 4, CFG)
    assert [s.id for s in out] == ["a", "b", "c", "d"]
    assert [set(s.components) for s in out] == [
        {"format", "answer_tiou", "think_temporal_segment"},
        {"format", "answer_accuracy", "temporal_proximity", "spatial_gated"},
        {"format", "answer_accuracy"},
        {"format", "answer_viou"},
    ]
    assert [s.total for s in out] == pytest.approx([3.0, 4.0, 2.0, 2.0])


def test_weighted_total_and_unknown_task():
    c = think("<obj>red car</obj><box>[0,0,50,50]</box>at<t>5.0</t>s")
    w = RewardConfig(weights=RewardWeights(format=0.5, answer_accuracy=0.0, temporal_proximity=2.0,
                                           spatial_gated=3.0))
    got = score_sample(st(c), 0, 4, w)
    # format 1, proximity exp(-.5), spatial: gate closed (d=3) -> 0
    assert got.total == pytest.approx(0.5 + 2 * math.exp(-0.5))
    bad = score_sample(st(c, task="audio"), 0, 4, CFG)
    assert bad.error and "unknown task" in bad.error and bad.total == 0.0 and bad.components == {}
