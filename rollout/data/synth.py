"""The synthetic "shapes" dataset (docs/design.md §8): fixed splits on disk, or an endless stream.

Sample `i` of split `s` draws everything from its own RNG seeded by `(seed, s, i)`: the same seed
gives the same records and the same video bytes, samples are independent of each other (a split
can be regenerated in any order), and the eval split is held out simply by being another stream.
Task of sample `i` is `TASKS[i % 4]`, so splits are balanced.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

from msgspec import Struct

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.questions import Ctx, Draft, build
from stgrl.rollout.data.records import TASKS, KeyFrame, Record, encode_record
from stgrl.rollout.data.render import render_frame, write_png, write_video
from stgrl.rollout.data.scene import DIFFICULTIES, Scene, simulate
from stgrl.rollout.video import resized_size, sample_frame_indices

log = logging.getLogger(__name__)

FREE_FORM_P = {"easy": 0.0, "medium": 0.25, "hard": 0.3}
TEMPORAL_MCQ_P = {"easy": 0.0, "medium": 0.3, "hard": 0.3}
MAX_TRIES = 200


class Sample(Struct, kw_only=True):
    """A generated sample before its media is written: the record, its scene, its draft."""

    record: Record
    scene: Scene
    draft: Draft


def make_sample(index: int, seed: int, split: str, difficulty: str, data_cfg: DataConfig) -> Sample:
    """Sample `index` of a split: simulate scenes until one suits the task, then build the record."""
    d = DIFFICULTIES[difficulty]
    rng = random.Random(f"stgrl-shapes:{seed}:{split}:{index}")
    task = TASKS[index % len(TASKS)]
    resized = resized_size(d.width, d.height, data_cfg)

    def sampler(n: int, native_fps: float) -> list[int]:
        return sample_frame_indices(n, native_fps, data_cfg.fps, data_cfg.min_frames, data_cfg.max_frames)

    for _ in range(MAX_TRIES):
        scene = simulate(rng, d, sampler)
        draft = build(task, Ctx(scene, rng, resized, FREE_FORM_P[difficulty], d), TEMPORAL_MCQ_P[difficulty])
        if draft is not None:
            break
    else:  # pragma: no cover - every task is satisfiable; this guards a future template bug
        raise RuntimeError(f"no {task} question after {MAX_TRIES} scenes (sample {split}-{index})")
    rid = f"{split}-{index:06d}"
    record = Record(
        id=rid, task=draft.task, question=draft.question, answer=draft.answer, options=draft.options,
        video_path=None if draft.task == "spatial" else f"videos/{rid}.mp4",
        image_path=f"images/{rid}.png" if draft.task == "spatial" else None,
        key_frames=[KeyFrame(idx=i, time=t) for i, t in draft.key_frames],
        key_items=draft.key_items, span=draft.span, reasoning=draft.reasoning,
        source=f"shapes-{difficulty}",
    )
    return Sample(record=record, scene=scene, draft=draft)


def write_media(sample: Sample, out_dir: Path) -> None:
    """The sample's mp4 (all native frames) or, for `spatial`, its still PNG."""
    r = sample.record
    if r.image_path is not None:
        assert sample.draft.still_frame is not None
        write_png(render_frame(sample.scene, sample.draft.still_frame), out_dir / r.image_path)
    else:
        assert r.video_path is not None
        write_video(sample.scene, out_dir / r.video_path)


def vstar_item(sample: Sample, difficulty: str) -> dict | None:
    """The sample in the V-STAR annotation format (docs/design.md §9), for spatio_temporal samples: what
    (the question), when (`temporal_question`, `timestamps`) and where (`bboxes`, native pixels)
    for both chains (chain 1 what→when→where, chain 2 what→where→when)."""
    v = sample.draft.vstar
    r = sample.record
    if v is None or r.task != "spatio_temporal":
        return None
    s, e = v.span
    where1 = f"Where is the {v.object} between {s:.1f}s and {e:.1f}s?"
    where2 = f"Where is the {v.object} {v.where_phrase}?"
    return {
        "vid": r.id,
        "domain": f"shapes-{difficulty}",
        "fps": sample.scene.native_fps,
        "width": sample.scene.width,
        "height": sample.scene.height,
        "frame_count": sample.scene.num_frames,
        "video_path": r.video_path,
        "question": "\n".join([r.question, *r.options]),
        "options": r.options,
        "answer": v.answer_text,
        "answer_option": r.answer if r.options else None,
        "chain": f"<think>{r.reasoning}</think>",
        "object": v.object,
        "temporal_question": v.when_question,
        "temporal_question_2": v.when_question,
        "spatial_question": where1,
        "spatial_question_2": where2,
        "chain1": [r.question, v.when_question, where1],
        "chain2": [r.question, where2, v.when_question],
        "timestamps": [s, e],
        "bboxes": [
            {"timestamp": t, "frame_index": i, "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]}
            for t, i, b in v.boxes
        ],
    }


def _make_and_write(job: tuple[int, int, str, str, DataConfig, str]) -> tuple[Record, dict | None]:
    """Worker body: one sample, media written, record + V-STAR item returned (picklable)."""
    i, seed, split, difficulty, data_cfg, out = job
    sample = make_sample(i, seed, split, difficulty, data_cfg)
    write_media(sample, Path(out))
    return sample.record, vstar_item(sample, difficulty)


def generate_split(
    out_dir: str | Path,
    split: str,
    count: int,
    seed: int,
    difficulty: str = "easy",
    data_cfg: DataConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> tuple[list[Record], list[dict]]:
    """Write `count` samples (media + `{split}.jsonl`) under `out_dir`; returns the records and
    their V-STAR items. Media of samples already on disk are rewritten (same bytes). `workers` > 1
    generates in processes; the output is identical (each sample has its own RNG)."""
    data_cfg = data_cfg or DataConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    vstar: list[dict] = []
    from concurrent.futures import ProcessPoolExecutor

    from rich.progress import Progress

    jobs = [(i, seed, split, difficulty, data_cfg, str(out)) for i in range(count)]
    pool = ProcessPoolExecutor(workers) if workers > 1 and count > 1 else None
    try:
        results = pool.map(_make_and_write, jobs, chunksize=8) if pool else map(_make_and_write, jobs)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"{split} ({difficulty})", total=count)
            for record, item in results:
                records.append(record)
                if item is not None:
                    vstar.append(item)
                bar.advance(task)
    finally:
        if pool:
            pool.shutdown()
    tmp = out / f"{split}.jsonl.tmp"
    with open(tmp, "wb") as f:
        for r in records:
            f.write(encode_record(r) + b"\n")
    tmp.replace(out / f"{split}.jsonl")
    log.info("wrote %d %s records (%s) to %s", len(records), split, difficulty, out)
    return records, vstar


def write_vstar(items: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps(items, indent=1) + "\n")


def generate_dataset(
    out_dir: str | Path,
    train: int,
    eval: int,
    seed: int = 0,
    difficulty: str = "easy",
    data_cfg: DataConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, int]:
    """`train.jsonl`, `eval.jsonl` (a separate seed stream: held out) and `eval_vstar.json`."""
    generate_split(out_dir, "train", train, seed, difficulty, data_cfg, progress, workers)
    _, vstar = generate_split(out_dir, "eval", eval, seed, difficulty, data_cfg, progress, workers)
    write_vstar(vstar, Path(out_dir) / "eval_vstar.json")
    return {"train": train, "eval": eval, "vstar": len(vstar)}


def iter_samples(
    seed: int,
    difficulty: str = "easy",
    out_dir: str | Path = "data/stream",
    data_cfg: DataConfig | None = None,
    split: str = "stream",
    start: int = 0,
) -> Iterator[Record]:
    """Fresh samples without end (docs/design.md §8): sample `start`, `start+1`, … of stream `split`, each
    with its media written under `out_dir` before it is yielded (record paths are relative to
    `out_dir`). Resumable: pass the count already consumed as `start`. The caller owns cleanup."""
    data_cfg = data_cfg or DataConfig()
    out = Path(out_dir)
    i = start
    while True:
        sample = make_sample(i, seed, split, difficulty, data_cfg)
        write_media(sample, out)
        yield sample.record
        i += 1
