"""The fast reward path (`fast.py`, parser fast paths) against its reference twins, bit for bit.

`score_batch` must give exactly the floats of `score_components_reference` + `weighted_total` (the
per-component definition in `components.py`); the parser's shortcuts must agree with the strict
readings they skip.
"""

from __future__ import annotations

import random

import msgspec
import pytest

from stgrl.reward_service import parser as P
from stgrl.reward_service.config import RewardConfig, RewardWeights
from stgrl.reward_service.fast import Truth
from stgrl.reward_service.rewards import (
    reset_caches,
    score_batch,
    score_components_reference,
    weighted_total,
)
from stgrl.reward_service.types import TASKS, KeyFrame, ScoringSample

OBJECTS = ["red car", "The red cars", "dog", "a dog", "cup", "person"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<obj>", "</obj>", "<box>", "</box>", "<t>", "</t>"]
NOISE = TAGS + ["at", "s", " ", "\n", "[", "]", ",", "-", ".", "1e3", "nan", "inf", "\u0663", "x", "<", ">", "/"]
CONFIGS = [
    RewardConfig(),
    RewardConfig(proximity_scope="all", object_match="any"),
    RewardConfig(spatial_mode="plain"),
    RewardConfig(gate_delta_s=3.0, sigma0=2.5, sigma_min=0.5,
                 weights=RewardWeights(format=0.3, answer_accuracy=1.7, answer_tiou=0.9, answer_viou=2.1,
                                       think_temporal_segment=0.4, temporal_proximity=1.3, spatial_gated=2.9)),
]


def _box(rng: random.Random) -> list[float]:
    x, y = rng.uniform(-0.1, 0.8), rng.uniform(-0.1, 0.8)
    return [x, y, x + rng.uniform(-0.05, 0.4), y + rng.uniform(-0.05, 0.4)]


def _number(rng: random.Random, v: float) -> str:
    return rng.choice([f"{v:.1f}", f"{v:.0f}", f" {v:.2f} ", f"{v:.1e}", f"+{v:.1f}", f"{-v:.1f}", "nan", "1_0"])


def _px(rng: random.Random, b: list[float], w: int, h: int) -> str:
    j = rng.choice([0, 2, 10, 60])
    nums = [round(b[0] * w + rng.gauss(0, j)), round(b[1] * h + rng.gauss(0, j)),
            round(b[2] * w + rng.gauss(0, j)), round(b[3] * h + rng.gauss(0, j))]
    if rng.random() < 0.15:
        return "[" + ", ".join(_number(rng, float(n)) for n in nums) + "]"
    return "[" + ",".join(str(n) for n in nums) + "]"


def _truth(rng: random.Random) -> dict:
    task = rng.choice(TASKS)
    w, h = rng.choice([(100, 100), (448, 252), (0, 10), (336, 448)])
    times = sorted(round(rng.uniform(0, 30), 1) for _ in range(rng.randint(0, 4)))
    items = {str(k): {o: [_box(rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
                      for o in rng.sample(OBJECTS, rng.randint(1, 3))} for k in range(len(times))}
    options = [f"{c}. x" for c in "ABCD"] if rng.random() < 0.4 else None
    answer = rng.choice(["the red car turns left near the door", "B", "C\n[3.0, 9.5]", "[2, 7]", "a dog runs"])
    span = [round(rng.uniform(0, 10), 1), round(rng.uniform(5, 20), 1)] if rng.random() < 0.7 else None
    return dict(task=task, answer=answer, options=options, key_frames=[KeyFrame(k, t) for k, t in enumerate(times)],
                key_items=items, span=span, frame_size=[w, h])


def _completion(rng: random.Random, g: dict) -> str:
    w, h = g["frame_size"]
    w, h = max(w, 1), max(h, 1)
    claims = []
    for _ in range(rng.randint(0, 4)):
        k = rng.randrange(len(g["key_frames"])) if g["key_frames"] else 0
        objs = g["key_items"].get(str(k), {"cup": [[0.1, 0.1, 0.5, 0.5]]})
        name, boxes = rng.choice(list(objs.items()))
        boxes = boxes or [_box(rng)]
        t = g["key_frames"][k].time + rng.choice([0.0, rng.gauss(0, 0.7), rng.uniform(-15, 15)]) \
            if g["key_frames"] else rng.uniform(0, 20)
        pred = [_px(rng, b, w, h) for b in boxes[: rng.randint(1, 3)]]
        if rng.random() < 0.2:
            pred.append(_px(rng, _box(rng), w, h))
        sep = rng.choice(["", "", " "])
        claims.append(f"<obj>{rng.choice([name, rng.choice(OBJECTS)])}</obj>"
                      + sep.join(f"<box>{p}</box>" for p in pred) + f"{sep}at{sep}<t>{_number(rng, max(t, 0))}</t>{sep}s")
    # time mentions with and without their unit (`proximity_scope: all` counts only `<t>X</t>s`)
    mentions = " ".join(f"<t>{_number(rng, rng.uniform(-3, 25))}</t>{rng.choice(['s', 's', '', ' s', 'x'])}"
                        for _ in range(rng.randint(0, 3)))
    answer = rng.choice([f"<t>{_number(rng, rng.uniform(0, 9))}</t>s to <t>{_number(rng, rng.uniform(3, 20))}</t>s",
                         f"Correct Option: {rng.choice('ABCD')}\n<t>3</t>s to <t>8</t>s", rng.choice("ABCD") + ".",
                         f"<box>{_px(rng, _box(rng), w, h)}</box>", "the red cars turned left at the door",
                         "a dog", "", "from [2.5, 8]",
                         # the 4,096-character answer cap of the `[S, E]` fallback and the option search:
                         # a span or option starting just before, straddling and just after the cap
                         "y" * 4085 + " [2.5, 8]", "y" * 4090 + "[2.5, 8]", "[1, 3] " + "y" * 4090 + "[2.5, 8]",
                         "y" * 4070 + "\nCorrect Option: B", "y" * 4090 + "Correct Option: C",
                         f"<t>1</t>s to <t>4</t>s{'y' * 4100}",
                         f"<box>{_px(rng, _box(rng), w, h)}</box>" * rng.randint(2, 6)])
    text = f"<think>I see {' then '.join(claims)} {mentions}.</think>\n<answer>{answer}</answer>"
    for _ in range(rng.choice([0, 0, 0, 1, 3])):  # malformed: random fragments spliced in
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(NOISE) + text[i + rng.choice([0, 0, 1, 5]):]
    return text


def make_groups(n_groups: int, seed: int, group_size: int = 8) -> list[ScoringSample]:
    """Groups sharing one ground truth object (as a rollout builds them)."""
    rng = random.Random(seed)
    out = []
    for j in range(n_groups):
        g = _truth(rng)
        for i in range(group_size):
            out.append(ScoringSample(id=f"g{j}.{i}", completion=_completion(rng, g), **g))
    return out


def reference(sample: ScoringSample, step: int, total_steps: int, cfg: RewardConfig):
    try:
        comps = score_components_reference(sample, step, total_steps, cfg)
    except Exception as e:  # noqa: BLE001 - the reference path's error, compared by presence
        return ("error", type(e).__name__)
    return comps, weighted_total(comps, cfg)


def fast(score) -> tuple:
    return ("error", score.error) if score.error is not None else (score.components, score.total)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "all-any", "plain", "weights"])
def test_fast_path_equals_the_reference_bit_for_bit(cfg):
    samples = make_groups(150, seed=3)
    for step in (0, 7, 19):
        reset_caches()
        got = score_batch(samples, step, 20, cfg)
        for sample, score in zip(samples, got, strict=True):
            want = reference(sample, step, 20, cfg)
            if want[0] == "error":
                assert score.error is not None, sample
                continue
            assert fast(score) == want, sample  # == on floats: identical, not approximately equal


def test_group_truth_decoded_per_sample_gives_the_same_scores():
    """Over the wire every sample decodes into its own objects: the group is recognised by value."""
    samples = make_groups(60, seed=5)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(samples), type=list[ScoringSample])
    assert decoded[0].key_items is not decoded[1].key_items
    cfg = CONFIGS[0]
    assert [fast(s) for s in score_batch(decoded, 3, 10, cfg)] == [fast(s) for s in score_batch(samples, 3, 10, cfg)]
    # and one at a time (no sharing at all)
    assert [fast(score_batch([s], 3, 10, cfg)[0]) for s in decoded] == [fast(s) for s in score_batch(samples, 3, 10, cfg)]


def test_truth_is_shared_only_when_equal_including_object_order():
    base = dict(task="spatio_temporal", completion="", frame_size=[100, 100], answer="a", key_frames=[KeyFrame(0, 1.0)])
    a = ScoringSample(id="a", key_items={"0": {"red car": [[0, 0, 1, 1]], "red cars": [[0, 0, 0.5, 0.5]]}}, **base)
    b = ScoringSample(id="b", key_items={"0": {"red cars": [[0, 0, 0.5, 0.5]], "red car": [[0, 0, 1, 1]]}}, **base)
    c = ScoringSample(id="c", key_items={"0": {"red car": [[0, 0, 1, 1]], "red cars": [[0, 0, 0.5, 0.5]]}}, **base)
    assert a.key_items == b.key_items  # equal dicts, but the merged box order of "red car" differs
    assert not Truth(a).same(b)
    assert Truth(a).same(c)
    assert not Truth(a).same(ScoringSample(id="d", **{**base, "answer": "b"}, key_items=a.key_items))


def test_truth_is_not_shared_across_frame_sizes():
    """`Truth.same` compares `frame_size`: the group's prepared (W, H) normalises every pixel box, so two
    consecutive samples that differ only in it must not share a truth (dropping it from `same` passed
    every other reward test)."""
    base = dict(task="spatial", answer="", key_frames=[KeyFrame(0, 0.0)],
                key_items={"0": {"cup": [[0.0, 0.0, 0.5, 0.5]]}})
    text = "<think>x</think><answer><box>[0,0,50,50]</box></answer>"
    small = ScoringSample(id="a", completion=text, frame_size=[100, 100], **base)
    large = ScoringSample(id="b", completion=text, frame_size=[200, 200], **base)
    assert not Truth(small).same(large)
    got = [s.components["answer_viou"] for s in score_batch([small, large], 0, 4, RewardConfig())]
    assert got == [1.0, 0.25]  # [0,0,50,50] is [0,0,.5,.5] of a 100 px frame, [0,0,.25,.25] of a 200 px one
    assert got == [score_components_reference(s, 0, 4, RewardConfig())["answer_viou"] for s in (small, large)]


def test_answer_cap_by_hand_on_both_paths():
    """The `[S, E]` fallback reads the answer's first 4,096 characters: a span that ends before the cap
    counts, one that crosses it does not (the last span before the cap wins). The parity corpus holds
    these answers too, so the two paths are held to the same cap."""
    def sample(answer: str) -> ScoringSample:
        return ScoringSample(id="t", task="temporal", completion=f"<think>x</think><answer>{answer}</answer>",
                             answer="[2, 8]", span=[2.0, 8.0], frame_size=[1, 1])

    cases = {"y" * 4085 + " [2.5, 8]": 5.5 / 6, "y" * 4090 + "[2.5, 8]": 0.0,
             "[1, 3] " + "y" * 4090 + "[2.5, 8]": 1 / 7}
    for answer, want in cases.items():
        s = sample(answer)
        assert score_batch([s], 0, 4, RewardConfig())[0].components["answer_tiou"] == pytest.approx(want)
        assert score_components_reference(s, 0, 4, RewardConfig())["answer_tiou"] == pytest.approx(want)
    corpus = [x.completion for x in make_groups(150, seed=3)]
    assert sum("y" * 4090 + "[2.5, 8]" in c for c in corpus) >= 3


def _fuzz_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    pieces = NOISE + ["<obj>dog</obj><box>[1,2,3,4]</box>at<t>2</t>s", "<t>5</t>s", "<box>[0,0,9,9]</box>",
                      "red car", "<obj>a</obj> <box>[1, 2, 3, 4]</box> at <t>1.5</t> s"]
    return ["".join(rng.choices(pieces, k=rng.randint(0, 25))) for _ in range(n)] + \
        [s.completion for s in make_groups(40, seed=seed)]


@pytest.mark.parametrize("first", ["nothing", "claims", "think_times", "answer_times", "answer_boxes", "all"])
def test_well_formed_shortcut_equals_the_full_count(first):
    for text in _fuzz_texts(11, 6000):
        p = P.parse_completion(text)
        if first in ("claims", "all"):
            p.raw_claims  # noqa: B018
        if first in ("think_times", "all"):
            p.think_times  # noqa: B018
        if first in ("answer_times", "all"):
            p.answer_times  # noqa: B018
        if first in ("answer_boxes", "all"):
            p.answer_boxes  # noqa: B018
        assert p.well_formed == p._check_form_by_counts(), text


def test_number_and_box_fast_paths_equal_the_strict_readings():
    rng = random.Random(2)
    chars = "0123456789.,[]+-e _\u0663\u00b2 nai"
    texts = ["".join(rng.choices(chars, k=rng.randint(0, 12))) for _ in range(30000)]
    texts += ["5", "5.", ".5", ".", "", "1.2.3", "9" * 64, "9" * 65, "[1,2,3,4]", "[1, 2,3,4]", "[1,2,3,4,5]",
              "[" + "9" * 60 + ",1,2,3]", "[" + "9" * 61 + ",1,2,3]", "[" + ",".join(["9" * 63] * 4) + "]",
              "[" + ",".join(["9" * 64] * 4) + "]", "[1,2,3,4]x", "[1,2,3]", "[1,2,3,4][5,6,7,8]", "[007,0,0,1]",
              "[" + "9" * 300 + ",1,2,3]", "[\u0663,1,2,3]", "[1,2,3,\u00b2]", "[,1,2,3]", "[1,2,3,]"]
    for t in texts:
        P.reset_caches()
        assert P.parse_number(t) == P._parse_number_strict(t), t
        assert P.parse_number(t) == P._parse_number_strict(t), t  # memoised
        assert P.parse_box(t) == P._parse_box_strict(t), t
        claim = ["x", f"<box>{t}</box> <box>{t}</box>", 1.0, None]
        assert P.claim_boxes(claim) == [P._parse_box_strict(t)] * 2, t
        claim = ["x", f"<box>{t}</box>", 1.0, None]
        assert P.claim_boxes(claim) == [P._parse_box_strict(t)], t


def test_option_letter_reads_the_first_256_characters_without_copying_them():
    rng = random.Random(4)
    for _ in range(3000):
        t = " " * rng.choice([0, 250, 253, 254, 255, 256]) + rng.choice(["B", "(B)", "B.", "Answer: C", "b", "Bx"]) \
            + rng.choice(["", "\n", " x"])
        assert P.parse_option_letter(t) == (m.group(1) if (m := P._OPTION.match(t[:256])) else None), repr(t)


def test_claims_keep_their_public_shape():
    p = P.parse_completion("<think><obj> dog </obj><box>[1,2,3,4]</box> <box>[1,2,x,4]</box>at<t>2</t>s</think>")
    assert [(c.name, c.boxes, c.time, c.well_formed) for c in p.claims] == [("dog", [[1, 2, 3, 4], None], 2.0, False)]


def test_form_match_proves_well_formed_and_finds_the_same_blocks():
    """`FORM` is a sufficient condition: where it matches, the tag counts agree and its blocks are the
    ones `str.find` locates; where it does not, `blocks` leaves `well_formed` to the counts."""
    matched = 0
    for text in _fuzz_texts(12, 6000):
        think, answer, wf = P.blocks(text)
        i = text.find("<think>")
        j = -1 if i < 0 else text.find("</think>", i + 7)
        k = text.find("<answer>")
        m = -1 if k < 0 else text.find("</answer>", k + 8)
        assert (think, answer) == ((None if j < 0 else (i + 7, j)), (None if m < 0 else (k + 8, m))), text
        if wf is not None:
            matched += 1
            assert wf is True and P.form_by_counts(text, think, answer), text
    assert matched > 150  # the fuzz set holds well-formed completions too: the shortcut is exercised


def test_possessive_patterns_match_what_the_plain_patterns_match():
    import re

    plain = {
        P._CLAIM: r"<obj>([^<]*)</obj>((?:\s*<box>[^<]*</box>)+)\s*at\s*<t>([^<]*)</t>\s*s",
        P._BOX_TAG: r"<box>([^<]*)</box>",
        P._T_TAG: r"<t>([^<]*)</t>",
        P._T_SECONDS: r"<t>([^<]*)</t>\s*s",
        P._OPTION: r"\s*(?i:answer\s*:)?\s*[\(\[]?([A-Z])(?:[\)\]]|[.:,]|[ \t]*(?:\r?\n|$))",
        P._CORRECT_OPTION: r"(?i:correct\s+option)\s*:?\s*[\(\[]?([A-Z])(?:[\)\]]|[.:,]|[ \t]*(?:\r?\n|$))",
    }
    texts = _fuzz_texts(13, 6000) + ["Correct Option :  (B)", "correct  option\tC\n", "Answer : D,", " A  \n",
                                      "<obj>a</obj> \n<box>[1]</box>  <box>x</box>\tat \n<t>2</t> s",
                                      "<obj>a</obj><box>1</box> <box>2</box> a <t>2</t>s", "<t></t><box></box>"]
    for fast_rx, pattern in plain.items():
        slow = re.compile(pattern)
        for text in texts:
            assert fast_rx.findall(text) == slow.findall(text), text


def test_unrolled_matching_equals_match_score_for_every_small_shape():
    from stgrl.reward_service.fast import _match
    from stgrl.reward_service.geometry import match_score

    rng = random.Random(6)
    for _ in range(4000):
        n_pred, n_gt = rng.randint(1, 5), rng.randint(0, 5)
        pred = [None if rng.random() < 0.15 else _box(rng) for _ in range(n_pred)]
        gt = [_box(rng) for _ in range(n_gt)]
        if rng.random() < 0.2 and gt:  # ties: a duplicated box
            pred[0] = list(gt[0]) if pred[0] is not None else None
        assert _match(pred, gt) == match_score(pred, gt), (pred, gt)


def test_claim_boxes_of_several_boxes_equal_the_strict_readings():
    rng = random.Random(8)
    forms = ["[1,2,3,4]", "[10,20,300,400]", "[1, 2,3,4]", "[1,2,3]", "[007,0,0,1]", "[" + "9" * 61 + ",1,2,3]", "[x]"]
    for _ in range(3000):
        contents = [rng.choice(forms) for _ in range(rng.randint(1, 4))]
        raw = "".join(rng.choice(["", " ", "\n"]) + f"<box>{c}</box>" for c in contents)
        assert P.claim_boxes(["x", raw, 1.0, None]) == [P._parse_box_strict(c) for c in contents], raw
