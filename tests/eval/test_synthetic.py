"""End-to-end on the embedded synthetic data: its V-STAR export and records through the evaluator
and the visualizer."""

from __future__ import annotations

import json

import pytest

from stgrl.orchestration.evaluation import vstar
from stgrl.orchestration.visualize import draw
from stgrl.orchestration.visualize.html import highlight_claims


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from stgrl.rollout.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, train=0, eval=16, seed=3, progress=False)
    return root


def _perfect(item: dict, letter: bool = False) -> dict:
    boxes = {str(b["timestamp"]): [b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in item["bboxes"]}
    return {"id": item["vid"], "answer_vqa": item["answer_option"] if letter and item.get("options") else item["answer"],
            "answer_temporal": item["timestamps"], "answer_temporal_2": item["timestamps"],
            "answer_spatial": boxes, "answer_spatial_2": boxes}


def test_export_perfect_and_degraded_predictions(synth):
    raws = json.loads((synth / "eval_vstar.json").read_text())
    assert raws, "the synthetic eval split should export spatio-temporal V-STAR items"
    items = vstar.load_annotations(synth / "eval_vstar.json")
    assert all(it.frames and it.timestamps and it.duration for it in items)
    for letter in (False, True):
        rep = vstar.evaluate(items, vstar.decode_predictions([_perfect(r, letter) for r in raws]))
        assert rep.overall.acc == 1.0 and rep.overall.mam == pytest.approx(1.0) and not rep.missing_ids
    # answers shifted to the next item: a different object/direction, other spans and boxes
    shifted = [{**_perfect(raws[(i + 1) % len(raws)]), "id": r["vid"]} for i, r in enumerate(raws)]
    worse = vstar.evaluate(items, vstar.decode_predictions(shifted)).overall
    assert worse.mam < 1.0
    half = vstar.evaluate(items, vstar.decode_predictions([_perfect(r) for r in raws[: len(raws) // 2]])).overall
    assert half.n_missing == len(raws) - len(raws) // 2


def test_visualize_synthetic_record_with_its_own_reasoning(synth, tmp_path):
    records = [json.loads(x) for x in (synth / "eval.jsonl").read_text().splitlines()]
    rec = next(r for r in records if r["task"] == "spatio_temporal")
    completion = f"<think>{rec['reasoning']}</think><answer>{rec['answer']}</answer>"
    frames = draw.load_frames(synth / rec["video_path"])
    _, good, total = highlight_claims(completion, rec, frames.size)
    assert total >= 1 and good == total  # the generator's reasoning is correct evidence
    png, gif, layout = draw.save_sample(draw.SampleView(rec, completion, frames), tmp_path)
    assert png.exists() and gif.exists() and len(layout.origins) == len(frames.times)
