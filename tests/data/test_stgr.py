"""STGR import on a hand-written sample in the public Open-o3 Video annotation format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.stgr import import_stgr
from stgrl.rollout.prompts import target_text
from stgrl.rollout.video import prepare_prompt, resized_size

STGR_SAMPLE = [
    {
        "task": "temporal-spatial free-form QA", "source": "STR_plm_rdcap", "video_path": "plm/v1.mp4",
        "question": "What does the man in the red shirt pick up?",
        "answer": "He picks up a blue cup.",
        "key_frames": [{"idx": 1, "time": 2.0, "path": "kfs/v1_1.jpg"}, {"idx": 2, "time": 5.5, "path": "kfs/v1_2.jpg"}],
        "key_items": {"1": {"man": [[0.1, 0.2, 0.4, 0.9]]},
                      "2": {"blue cup": [[0.5, 0.5, 0.6, 0.65]], "man": [[0.12, 0.2, 0.42, 0.9]]}},
        "reasoning_process": "The <obj>man</obj><box>[0.1,0.2,0.4,0.9]</box>at<t>2.0</t>s walks to the table; "
                             "<obj>blue cup</obj><box>[0.5, 0.5, 0.6, 0.65]</box>at<t>5.5</t>s is lifted.",
    },
    {
        "task": "temporal QA", "source": "tvg", "video_path": "tvg/v2.mp4",
        "question": "When does the person open the door?", "answer": "[3.2, 7.9]",
        "reasoning_process": "The door is shut at <t>2.0</t>s and opens at <t>3.2</t>s.",
    },
    {
        "task": "temporal QA (MCQ)", "video_path": "tvg/v3.mp4",
        "question": "When does the dog jump?\nA. [0.0, 4.0]\nB. [10.0, 15.5]\nC. [20.0, 22.0]",
        "answer": "B\n[10.0, 15.5]", "reasoning_process": "It jumps at <t>11.0</t>s.",
    },
    {
        "task": "General video QA MCQ", "video_path": "gen/v4.mp4",
        "question": "How many cars pass?\nA. 2\nB. 3\nC. 4\nD. 5", "answer": "A",
        "reasoning_process": "Two cars.",
    },
    {
        "task": "General video QA Free-form", "video_path": "gen/v5.mp4",
        "question": "What is the weather like?", "answer": "It is raining.", "reasoning_process": "Rain.",
    },
    {
        "task": "visual QA", "source": "treevgr", "image_path": "img/i6.jpg", "image_size": [640, 480],
        "question": "Where is the dog?", "answer": "<obj>dog</obj><box>[64,48,320,240]</box>",
        "reasoning_process": "The <obj>dog</obj><box>[64,48,320,240]</box> lies on the sofa.",
    },
    {"task": "audio QA", "video_path": "x.mp4", "question": "?", "answer": "?"},
    {"task": "temporal QA", "video_path": "x.mp4", "question": "When?", "answer": "at some point"},
    {"task": "General video QA MCQ", "question": "no video", "answer": "A"},
]


@pytest.fixture()
def imported(tmp_path):
    src = tmp_path / "stgr.json"
    src.write_text(json.dumps(STGR_SAMPLE))
    out = tmp_path / "out" / "train.jsonl"
    report = import_stgr(src, out, DataConfig(), video_root=str(tmp_path / "videos"),
                         image_root=str(tmp_path / "images"))
    records, rr = read_records(out, check_media_files=False, allow_media_outside_root=True)  # roots lie outside
    return report, records, tmp_path


def test_task_mapping_counts_and_skips(imported):
    report, records, _ = imported
    assert report.converted == {"spatio_temporal": 1, "temporal": 2, "general": 2, "spatial": 1}
    assert report.skipped == {"unknown_task": 1, "invalid": 2}
    assert any("audio QA" in m for m in report.messages)
    assert [r.task for r in records] == ["spatio_temporal", "temporal", "temporal", "general", "general", "spatial"]


def test_fields_converted(imported):
    _, r, _ = imported
    st, tq, tmcq, gmcq, gfree, vqa = r
    assert st.video_path == "../videos/plm/v1.mp4" and st.box_space == "normalized"
    assert [(k.idx, k.time) for k in st.key_frames] == [(1, 2.0), (2, 5.5)]
    assert st.key_items["2"]["blue cup"] == [[0.5, 0.5, 0.6, 0.65]]
    assert st.options == [] and st.answer == "He picks up a blue cup."
    assert tq.span == [3.2, 7.9] and tq.answer == "[3.2, 7.9]" and tq.options == []
    assert tmcq.span == [10.0, 15.5] and tmcq.answer == "B\n[10.0, 15.5]"
    assert tmcq.question == "When does the dog jump?" and tmcq.options[1] == "B. [10.0, 15.5]"
    assert gmcq.options == ["A. 2", "B. 3", "C. 4", "D. 5"] and gmcq.question == "How many cars pass?"
    assert gfree.options == [] and gfree.answer == "It is raining."
    # visual QA: 640x480 → processor size 364x252 (default 128*28*28 max pixels); box rescaled by hand:
    # 64*364/640=36.4, 48*252/480=25.2, 320*364/640=182, 240*252/480=126
    assert resized_size(640, 480, DataConfig()) == (364, 252)
    assert vqa.answer == "<obj>dog</obj><box>[36,25,182,126]</box>"
    assert "<box>[36,25,182,126]</box>" in vqa.reasoning
    assert vqa.key_items == {"0": {"dog": [[0.1, 0.1, 0.5, 0.5]]}}
    assert vqa.image_path == "../images/img/i6.jpg"


def test_sft_target_converts_normalized_boxes_and_temporal_answers(imported):
    _, r, _ = imported
    st, tq, tmcq = r[0], r[1], r[2]
    t = target_text(st, (364, 252))
    assert "<obj>man</obj><box>[36,50,146,227]</box>at<t>2.0</t>s" in t
    assert "<box>[182,126,218,164]</box>at<t>5.5</t>s" in t
    assert t.endswith("<answer>He picks up a blue cup.</answer>")
    assert target_text(tq, (1, 1)).endswith("<answer><t>3.2</t>s to <t>7.9</t>s</answer>")
    assert target_text(tmcq, (1, 1)).endswith("<answer>Correct Option: B\n<t>10.0</t>s to <t>15.5</t>s</answer>")


def test_imported_visual_qa_box_lands_on_the_processed_image(imported, processor):
    """End to end: the rescaled answer box is in the pixel space of the frame the model gets."""
    _, r, tmp = imported
    vqa = r[5]
    img = np.zeros((480, 640, 3), np.uint8)
    img[48:240, 64:320] = (255, 0, 0)
    (tmp / "images" / "img").mkdir(parents=True)
    Image.fromarray(img).save(tmp / "images" / "img" / "i6.jpg")
    pp = prepare_prompt(vqa, processor, DataConfig(), tmp / "out")
    assert pp.frame_size == (364, 252) and pp.frame_times == [0.0]
    assert pp.model_inputs["image_grid_thw"].tolist() == [[1, 18, 26]]


def _write_counting_video(path, num_frames: int, fps: float) -> None:
    """Frame i is a flat grey of brightness 2i + 20, so a decoded frame tells its native index."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=None, ffmpeg_log_level="error",
                                output_params=["-crf", "0", "-threads", "1"])
    try:
        for i in range(num_frames):
            writer.append_data(np.full((56, 56, 3), 2 * i + 20, np.uint8))
    finally:
        writer.close()


def test_key_frames_are_spliced_into_the_sampled_frames_at_their_true_times(imported, processor):
    """A 10 s, 10 fps video: the default sampler shows 16 frames spread evenly (native 0, 7, 13, 20, …,
    53, 59, …), so the key frame at 5.5 s (native 55) would never be shown. The import lists both key
    times in `extra_frame_times`; the prompt then shows native frame 55 labelled 5.5 s, beside 2.0 s."""
    from stgrl.rollout.video import VideoCache, record_media, sample_frame_indices

    _, r, tmp = imported
    st = r[0]
    assert st.extra_frame_times == [2.0, 5.5]
    assert all(not x.extra_frame_times for x in r[5:])  # the still image has nothing to splice
    assert 55 not in sample_frame_indices(100, 10.0, 2.0, 4, 16)  # what the sampler alone shows
    _write_counting_video(tmp / "videos" / "plm" / "v1.mp4", 100, 10.0)
    pp = prepare_prompt(st, processor, DataConfig(), tmp / "out")
    assert 2.0 in pp.frame_times and 5.5 in pp.frame_times
    assert len(pp.frame_times) == 17 and pp.frame_times == sorted(pp.frame_times)
    assert "at 5.5s" in pp.prompt_text
    media = record_media(st, tmp / "out", DataConfig(), VideoCache())
    shown = media.frames[media.times.index(5.5)]
    assert abs(float(shown.mean()) - (2 * 55 + 20)) < 1.5  # the pixels of native frame 55
    assert pp.model_inputs["image_grid_thw"].shape[0] == 17  # and the model gets all 17 frames
