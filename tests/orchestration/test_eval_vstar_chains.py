"""`stgrl eval run`'s V-STAR export: the protocol's two chains, each asked in its own prompt, and the
span the answer states (the export used to copy chain 1 into chain 2 and take [min, max] of the claim
times, so one claim gave tIoU 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stgrl.orchestration.eval_run import chain_prompt_question, vstar_prediction
from stgrl.orchestration.evaluation import vstar

REPO = Path(__file__).resolve().parents[2]


def test_each_chain_reads_its_own_completion_and_the_stated_span():
    what = "<think>x</think><answer>B</answer>"
    c1 = ("<think><obj>red square</obj><box>[28,28,56,56]</box>at<t>0.5</t>s</think>"
          "<answer>B\n<t>0.5</t>s to <t>2.0</t>s</answer>")
    c2 = "<think><obj>red square</obj><box>[0,0,28,28]</box>at<t>1.0</t>s</think><answer>from 1 to 3 s</answer>"
    p = vstar_prediction("v", what, (112, 112), (c1, c2))
    assert p["answer_vqa"] == "B"
    assert p["answer_temporal"] == [0.5, 2.0]          # one claim, and still the stated span
    assert p["answer_spatial"] == {"0.5": [[28.0, 28.0, 56.0, 56.0]]}
    assert p["answer_temporal_2"] == []                 # no <t> pair: the evaluator reads the text
    assert p["answer_temporal_pre_2"] == "from 1 to 3 s"
    assert p["answer_spatial_2"] == {"1.0": [[0.0, 0.0, 28.0, 28.0]]}
    item = vstar.item_from_dict({"id": "v", "question": "q", "answer": "B", "timestamps": [0.5, 2.5],
                                 "width": 112, "height": 112,
                                 "bboxes": [{"timestamp": 1.0, "xmin": 0, "ymin": 0, "xmax": 28, "ymax": 28}]},
                                "v")
    sc = vstar.evaluate([item], vstar.decode_predictions([p])).items[0]
    assert sc.chains[0].tiou == pytest.approx(1.5 / 2.0) and sc.chains[0].viou == 0.0
    assert sc.chains[1].tiou == pytest.approx(1.5 / 2.5) and sc.chains[1].viou == pytest.approx(1.0)


def test_chain_questions_and_prompts_follow_each_chain_order():
    raw = {"question": "What moves?", "temporal_question": "When does it move?",
           "spatial_question": "Where is it between 1s and 2s?", "spatial_question_2": "Where is it when it moves?"}
    one, two = vstar.chain_questions(raw)
    assert one == ("What moves?", "When does it move?", "Where is it between 1s and 2s?")
    assert two == ("What moves?", "Where is it when it moves?", "When does it move?")
    q1, q2 = chain_prompt_question(one, 0).splitlines(), chain_prompt_question(two, 1).splitlines()
    assert q1[0] == q2[0] == "What moves?"
    assert q1[1].startswith("When does it move?") and "<t>S</t>s to <t>E</t>s" in q1[1]
    assert q1[2].startswith("Where is it between") and "<box>" in q1[2]
    assert q2[1].startswith("Where is it when it moves?") and "<box>" in q2[1]
    assert q2[2].startswith("When does it move?") and "<t>S</t>s to <t>E</t>s" in q2[2]
    assert vstar.chain_questions({"question": "q"}) == ()
    explicit = {"chain1": ["a", "b", "c"], "chain2": ["a", "c", "b"]}
    assert vstar.chain_questions(explicit) == (("a", "b", "c"), ("a", "c", "b"))


@pytest.mark.timeout(600)
def test_eval_run_asks_one_prompt_per_chain(tmp_path):
    """End to end on the embedded tiny model: every V-STAR item gets both chains' answers in
    `vstar_predictions.jsonl`, each from a prompt that asked that chain's questions."""
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.eval_run import evaluate_model
    from stgrl.orchestration.stage_support import load_split
    from stgrl.rollout.data.synth import generate_dataset
    from stgrl.rollout.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "model", seed=0)
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"model.path={tmp_path / 'model'}", "rollout.max_new_tokens=12", "metrics.wandb=false"])
    generate_dataset(tmp_path / "data", train=1, eval=4, seed=0, difficulty="easy", data_cfg=cfg.data,
                     progress=False)
    annotations = json.loads((tmp_path / "data" / "eval_vstar.json").read_text())
    assert annotations and all(len(vstar.chain_questions(a)) == 2 for a in annotations)
    records, dataset_dir = load_split(str(tmp_path / "data" / "eval.jsonl"), "eval")
    m = evaluate_model(cfg, tmp_path / "model", records, dataset_dir, tmp_path / "out", max_samples=4,
                       swapped=False, vstar_annotations=tmp_path / "data" / "eval_vstar.json")
    preds = [json.loads(x) for x in (tmp_path / "out" / "vstar_predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted(a["vid"] for a in annotations)
    for p in preds:
        assert {"answer_temporal", "answer_temporal_2", "answer_spatial", "answer_spatial_2"} <= set(p)
    report = json.loads((tmp_path / "out" / "vstar.json").read_text())
    assert report["overall"]["n_items"] == len(annotations) and report["spatial_match"] == "exact"
    assert "vstar/mam" in m
