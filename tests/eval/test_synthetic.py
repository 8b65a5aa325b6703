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


def test_grounding_command_with_swapped_videos(synth, tmp_path):
    import argparse

    from stgrl.orchestration.commands import eval as eval_cmd

    records = [json.loads(x) for x in (synth / "eval.jsonl").read_text().splitlines()]
    recs = [r for r in records if r.get("video_path") and "<obj>" in r.get("reasoning", "")]
    assert len(recs) >= 4

    def line(rec, reasoning):  # the runner's line: the question's record, the text from some video
        return json.dumps({"id": rec["id"], "task": rec["task"], "frame_size": [112, 112],
                           "frame_times": [0.0, 0.5, 1.0, 1.5], "record": rec,
                           "completion": f"<think>{reasoning}</think><answer>{rec['answer']}</answer>"})

    own, swapped = tmp_path / "own.jsonl", tmp_path / "swapped.jsonl"
    own.write_text("\n".join(line(r, r["reasoning"]) for r in recs))
    # a model that reads the pixels perfectly describes the *other* video when given it
    swapped.write_text("\n".join(line(r, recs[(i + 1) % len(recs)]["reasoning"]) for i, r in enumerate(recs)))
    parser = argparse.ArgumentParser()
    eval_cmd.configure(parser)
    out = tmp_path / "g.json"
    args = parser.parse_args(["grounding", "--predictions", str(own), "--swapped", str(swapped), "-o", str(out)])
    assert eval_cmd.run(args) == 0
    rep = json.loads(out.read_text())
    assert rep["report"]["model"]["iou"] == pytest.approx(1.0)
    assert rep["report"]["mean_box"]["iou"] < 1.0 and rep["report"]["random_box"]["iou"] < 1.0
    assert rep["report"]["time_error"] == pytest.approx(0.0)
    assert rep["swapped_video"]["mean_diff"] > 0
