"""Reward throughput: the reference's code path vs ours, and the sharded service's latency.

    .venv/bin/python benchmarks/rewards.py [--n 2000] [--shards 1 2] [--out results.json]

1. Generates N synthetic completions (all four tasks, realistic perturbations: wrong and jittered
   times, jittered boxes, wrong objects, extra boxes, malformed tags and numbers) from its own small
   ground-truth generator.
2. Scores them (a) along a baseline that mirrors the reference implementation's code path (every
   reward function re-extracts think/answer with regexes, claims parsed with the reference regex and
   `json.loads`, IoU through numpy arrays, a ROUGE scorer built per sample, groups routed by their
   first sample) and (b) with `score_batch`; reports samples per CPU-second (= per core: both run
   single-threaded) and the ratio.
3. Starts a local Ray (temp dir) and measures the service with 1 and 2 shards: throughput of the
   whole set and p50/p99 latency of one request of 32 samples, client side (encode, send, score,
   reply, decode).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.rewards import reset_caches, score_batch
from stgrl.reward_service.types import KeyFrame, ScoringSample

log = logging.getLogger("benchmarks.rewards")

OBJECTS = ["red car", "dog", "person", "bicycle", "cup", "bus", "traffic light", "cat", "umbrella", "horse"]
VERBS = ["walks past", "stops near", "turns towards", "appears behind", "moves away from", "waits beside"]
FILLER = ["Let me look at the frames carefully.", "The scene changes after a few seconds.",
          "I need to find where the object is first visible.", "Comparing the frames around this moment,",
          "The camera pans slowly to the right.", "This matches the question.", "So the evidence suggests"]
FRAME_SIZES = [(448, 252), (392, 392), (504, 280), (336, 448)]


# ------------------------------------------------------------------------ synthetic ground truth
def _box(rng: random.Random) -> list[float]:
    x, y = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
    return [round(x, 3), round(y, 3), round(min(1, x + rng.uniform(0.1, 0.3)), 3),
            round(min(1, y + rng.uniform(0.1, 0.3)), 3)]


def _px(b: list[float], w: int, h: int, rng: random.Random, jitter: float) -> list[int]:
    bw, bh = (b[2] - b[0]) * w, (b[3] - b[1]) * h
    return [round(b[0] * w + rng.gauss(0, jitter * bw)), round(b[1] * h + rng.gauss(0, jitter * bh)),
            round(b[2] * w + rng.gauss(0, jitter * bw)), round(b[3] * h + rng.gauss(0, jitter * bh))]


def _sentence(rng: random.Random, obj: str) -> str:
    return f"the {obj} {rng.choice(VERBS)} the {rng.choice(OBJECTS)} near the {rng.choice(['road', 'door', 'tree'])}"


def _paraphrase(rng: random.Random, text: str) -> str:
    words = text.split()
    out = [w for w in words if rng.random() > 0.15]
    if rng.random() < 0.5:
        out.insert(rng.randrange(len(out) + 1), rng.choice(["slowly", "then", "clearly", "a"]))
    return " ".join(out)


def _malform(rng: random.Random, text: str) -> str:
    """One realistic formatting defect."""
    kind = rng.randrange(6)
    if kind == 0:
        return text.replace("</think>", "", 1)
    if kind == 1:
        return text.replace("</t>s", "</t>", 1)
    if kind == 2:
        return text.replace("<box>[", "<box>[nan,", 1)
    if kind == 3:
        return text.replace("</obj>", "<obj>", 1)
    if kind == 4:
        return text[: len(text) * 2 // 3]  # truncated generation
    return text.replace("]</box>", "</box>", 1)


def _claim(rng: random.Random, name: str, boxes: list[list[int]], t: float) -> str:
    return f"<obj>{name}</obj>" + "".join(f"<box>[{b[0]},{b[1]},{b[2]},{b[3]}]</box>" for b in boxes) + f"at<t>{t:.1f}</t>s"


def _truth(j: int, rng: random.Random) -> dict:
    """Ground truth of prompt j (its task cycles through the four)."""
    task = ("spatio_temporal", "temporal", "spatial", "general")[j % 4]
    w, h = rng.choice(FRAME_SIZES)
    duration = rng.uniform(10, 60)
    times = sorted(round(rng.uniform(0, duration), 1) for _ in range(rng.randint(2, 4)))
    g = {"task": task, "w": w, "h": h, "options": None, "span": None,
         "key_frames": [KeyFrame(k, t) for k, t in enumerate(times)],
         "key_items": {str(k): {o: [_box(rng) for _ in range(rng.choice([1, 1, 2]))]
                                for o in rng.sample(OBJECTS, rng.randint(1, 2))} for k in range(len(times))}}
    if task == "spatio_temporal":
        g["answer"] = _sentence(rng, rng.choice(list(g["key_items"]["0"])))
    elif task == "temporal":
        s = round(rng.uniform(0, duration - 5), 1)
        g["span"] = [s, round(s + rng.uniform(2, 10), 1)]
        g["answer"] = f"[{g['span'][0]}, {g['span'][1]}]"
        if rng.random() < 0.5:
            g["options"] = [f"{c}. [{rng.uniform(0, 30):.1f}, {rng.uniform(30, 60):.1f}]" for c in "ABCD"]
            g["letter"] = rng.choice("ABCD")
            g["answer"] = f"{g['letter']}\n{g['answer']}"
    elif task == "spatial":
        g["key_frames"] = [KeyFrame(0, 0.0)]
        g["name"] = rng.choice(OBJECTS)
        g["key_items"] = {"0": {g["name"]: [_box(rng)]}}
        b = g["key_items"]["0"][g["name"]][0]
        g["answer"] = f"<box>[{round(b[0] * w)},{round(b[1] * h)},{round(b[2] * w)},{round(b[3] * h)}]</box>"
    elif rng.random() < 0.5:
        g["options"] = [f"{c}. {_sentence(rng, rng.choice(OBJECTS))}" for c in "ABCD"]
        g["answer"] = rng.choice("ABCD")
    else:
        g["answer"] = _sentence(rng, rng.choice(OBJECTS))
    return g


def _completion(g: dict, rng: random.Random) -> str:
    """One policy output for prompt `g`, with realistic mistakes."""
    task, w, h, times = g["task"], g["w"], g["h"], [kf.time for kf in g["key_frames"]]
    filler = " ".join(rng.choices(FILLER, k=rng.randint(2, 6)))
    if task == "spatio_temporal":
        claims = []
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(len(times))
            name, boxes = rng.choice(list(g["key_items"][str(k)].items()))
            t = times[k] + rng.choice([0.0, rng.gauss(0, 0.6), rng.uniform(-15, 15)])  # right / jittered / wrong
            pred = [_px(b, w, h, rng, rng.choice([0.02, 0.1, 0.3])) for b in boxes]
            if rng.random() < 0.2:
                name = rng.choice(OBJECTS)  # wrong object
            if rng.random() < 0.15:
                pred.append(_px(_box(rng), w, h, rng, 0))  # extra box
            claims.append(_claim(rng, name, pred, max(t, 0.0)))
        think = f"{filler} " + " Then ".join(claims) + f". {rng.choice(FILLER)}"
        answer = _paraphrase(rng, g["answer"]) if rng.random() < 0.8 else _sentence(rng, rng.choice(OBJECTS))
    elif task == "temporal":
        s, e = g["span"]
        ment = " ".join(f"around <t>{rng.uniform(s - 4, e + 4):.1f}</t>s" for _ in range(rng.randint(1, 4)))
        think = f"{filler} The event happens {ment}. {rng.choice(FILLER)}"
        answer = f"<t>{max(s + rng.gauss(0, 1.5), 0):.1f}</t>s to <t>{e + rng.gauss(0, 1.5):.1f}</t>s"
        if g["options"]:
            answer = f"Correct Option: {g['letter'] if rng.random() < 0.6 else rng.choice('ABCD')}\n{answer}"
    elif task == "spatial":
        p = _px(g["key_items"]["0"][g["name"]][0], w, h, rng, rng.choice([0.02, 0.1, 0.3]))
        box = f"<box>[{p[0]},{p[1]},{p[2]},{p[3]}]</box>"
        think = f"{filler} The {g['name']} is at <obj>{g['name']}</obj>{box}."
        answer = box
    else:
        think = f"{filler} {rng.choice(FILLER)}"
        if g["options"]:
            pick = g["answer"] if rng.random() < 0.6 else rng.choice("ABCD")
            answer = rng.choice([pick, f"{pick}.", f"({pick})", f"{pick}. {g['options']['ABCD'.index(pick)][3:]}"])
        else:
            answer = _paraphrase(rng, g["answer"])
    completion = f"<think>{think}</think>\n<answer>{answer}</answer>"
    return _malform(rng, completion) if rng.random() < 0.1 else completion


def make_samples(n: int, seed: int = 0, group_size: int = 8) -> list[ScoringSample]:
    """`n` completions, `group_size` per prompt (a GRPO/GSPO group shares its prompt and truth)."""
    rng = random.Random(seed)
    out: list[ScoringSample] = []
    j = 0
    while len(out) < n:
        g = _truth(j, rng)
        for _ in range(min(group_size, n - len(out))):
            out.append(ScoringSample(id=f"b{len(out)}", task=g["task"], completion=_completion(g, rng),
                                     answer=g["answer"], options=g["options"], key_frames=g["key_frames"],
                                     key_items=g["key_items"], span=g["span"], frame_size=[g["w"], g["h"]]))
        j += 1
    return out


# ------------------------------------------------------------ baseline: the reference's code path
_REF_TASK = {"spatio_temporal": "temporal-spatial free-form QA", "spatial": "visual QA"}


def _ref_task(s: ScoringSample) -> str:
    if s.task == "temporal":
        return "temporal QA (MCQ)" if s.options else "temporal QA"
    if s.task == "general":
        return "General video QA MCQ" if s.options else "General video QA Free-form"
    return _REF_TASK[s.task]


def _ref_extract_answer(text: str) -> str:
    m = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    return m.group(1).strip() if m else ""


def _ref_iou(a, b) -> float:
    try:
        if not (isinstance(b, list) and len(b) == 4):
            return 0.0
        a, b = np.array(a, dtype=float), np.array(b, dtype=float)
    except (ValueError, TypeError):
        return 0.0
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _ref_accuracy(contents, group, task):
    from rouge_score import rouge_scorer

    out = []
    for c, s in zip(contents, group):
        pred = _ref_extract_answer(c)
        gt = _ref_extract_answer(f"<answer>{s.answer}</answer>")
        try:
            if task == "temporal QA (MCQ)":
                choice = pred.split("Correct Option:")[1]
                g = s.answer.split("\n")[0].strip()
                out.append(1.0 if choice.strip() in (g, g + ".", f"({g})", f"[{g}]") else 0.0)
            elif task in ("temporal-spatial free-form QA", "General video QA Free-form"):
                scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
                sc = scorer.score(gt, pred)
                out.append((sc["rouge1"].fmeasure + sc["rouge2"].fmeasure + sc["rougeL"].fmeasure) / 3)
            elif task == "General video QA MCQ":
                g = gt.strip()
                out.append(1.0 if pred.strip() in (g, g + ".", f"({g})", f"[{g}]") else 0.0)
            else:
                out.append(0.0)
        except Exception:
            out.append(0.0)
    return out


def _ref_tiou(contents, group, task):
    out = []
    for c, s in zip(contents, group):
        pred = _ref_extract_answer(c)
        r = 0.0
        try:
            if task in ("temporal QA", "temporal QA (MCQ)"):
                gt = ast.literal_eval(s.answer.split("\n")[1] if task == "temporal QA (MCQ)" else s.answer)
                m = re.search(r"<t>(\d+\.?\d*)</t>s to <t>(\d+\.?\d*)</t>s", pred)
                if m and float(m.group(2)) >= float(m.group(1)):
                    a, b = float(m.group(1)), float(m.group(2))
                    inter = max(0, min(b, gt[1]) - max(a, gt[0]))
                    union = max(b, gt[1]) - min(a, gt[0])
                    r = inter / union if union else 0.0
        except Exception:
            r = 0.0
        out.append(r)
    return out


def _ref_viou(contents, group, task):
    out = []
    for c, s in zip(contents, group):
        r = 0.0
        try:
            if task == "visual QA":
                w, h = s.frame_size
                g = next(iter(s.key_items["0"].values()))[0]
                gt = [g[0] * w, g[1] * h, g[2] * w, g[3] * h]
                m = re.search(r"<box>(\[.*?\])</box>", _ref_extract_answer(c))
                if m:
                    r = _ref_iou(gt, json.loads(m.group(1)))
        except Exception:
            r = 0.0
        out.append(r)
    return out


def _ref_format(contents, group, task):
    out = []
    for c in contents:
        tm = re.search(r"<think>(.*?)</think>", c, re.DOTALL)
        am = re.search(r"<answer>.*?</answer>", c, re.DOTALL)
        if not (tm and am) or c.count("<think>") != c.count("</think>") or c.count("<answer>") != c.count("</answer>"):
            out.append(0.0)
            continue
        th = tm.group(1)
        if not all(th.count(f"<{x}>") == th.count(f"</{x}>") for x in ("obj", "t", "box")):
            out.append(0.0)
            continue
        ok = th.count("<obj>") > 0 and th.count("<t>") > 0 and th.count("<box>") > 0
        if task in ("temporal QA", "temporal QA (MCQ)"):
            ok = th.count("<t>") >= 2
        if task == "visual QA" and re.search(r"<obj>(\w+)</obj><box>(\[.*?\])</box>", c):
            ok = True
        out.append(1.0 if ok or "General video QA" in task else 0.5)
    return out


def _ref_segment(contents, group, task):
    out = []
    for c, s in zip(contents, group):
        tm = re.search(r"<think>(.*?)</think>", c, re.DOTALL)
        if not tm or task not in ("temporal QA", "temporal QA (MCQ)"):
            out.append(0.0)
            continue
        gt = ast.literal_eval(s.answer.split("\n")[1] if task == "temporal QA (MCQ)" else s.answer)
        try:
            times = [float(x) for x in re.findall(r"<t>([\d.]+)</t>s", tm.group(1))]
        except ValueError:
            times = []
        out.append(sum(1.0 for t in times if gt[0] <= t <= gt[1]) / len(times) if times else 0.0)
    return out


def _ref_point(contents, group, task, p):
    out = []
    for c, s in zip(contents, group):
        tm = re.search(r"<think>(.*?)</think>", c, re.DOTALL)
        if not tm or task != "temporal-spatial free-form QA":
            out.append(0.0)
            continue
        try:
            times = [float(x) for x in re.findall(r"<t>([\d.]+)</t>s", tm.group(1))]
        except ValueError:
            times = []
        sigma = 4 * (1 - p) if p < 0.75 else 1
        gts = [kf.time for kf in s.key_frames]
        rs = [np.exp(-(min(abs(t - g) for g in gts) ** 2) / (2 * sigma**2)) for t in times]
        out.append(float(sum(rs) / len(rs)) if rs else 0.0)
    return out


def _ref_claims(think: str):
    claims = []
    for m in re.finditer(r"<obj>(.*?)</obj>((?:<box>\[.*?\]</box>)+)at<t>(.*?)</t>s", think, re.DOTALL):
        try:
            claims.append((m.group(1).strip(), float(m.group(3).strip()),
                           [json.loads(b) for b in re.findall(r"\[.*?\]", m.group(2))]))
        except (ValueError, IndexError):
            continue
    return claims


def _ref_spatial(contents, group, task):
    out = []
    for c, s in zip(contents, group):
        tm = re.search(r"<think>(.*?)</think>", c, re.DOTALL)
        am = re.search(r"<answer>(.*?)</answer>", c, re.DOTALL)
        if not tm or not am or task != "temporal-spatial free-form QA":
            out.append(0.0)
            continue
        claims = _ref_claims(tm.group(1))
        if not claims:
            out.append(0.0)
            continue
        w, h = s.frame_size
        total = 0.0
        for _, t, boxes in claims:
            near = [kf for kf in s.key_frames if kf.time - t < 1.0]  # the reference's signed gate
            if not near:
                continue
            kf = min(near, key=lambda k: abs(k.time - t))
            best = 0.0
            for gt_boxes in s.key_items[str(kf.idx)].values():
                per_gt = [max(_ref_iou([g[0] * w, g[1] * h, g[2] * w, g[3] * h], b) for b in boxes)
                          for g in gt_boxes]
                best = max(best, sum(per_gt) / len(per_gt))
            total += best
        out.append(total / len(claims))
    return out


def baseline_score(samples: list[ScoringSample], step: int, total_steps: int, group_size: int = 8) -> list[float]:
    """Totals along the reference's path: every reward function on every group of same-task samples."""
    p = (step + 1) / total_steps
    totals = []
    for i in range(0, len(samples), group_size):
        group = samples[i : i + group_size]
        task = _ref_task(group[0])
        contents = [s.completion for s in group]
        parts = [_ref_format(contents, group, task), _ref_accuracy(contents, group, task),
                 _ref_tiou(contents, group, task), _ref_viou(contents, group, task),
                 _ref_segment(contents, group, task), _ref_point(contents, group, task, p),
                 _ref_spatial(contents, group, task)]
        totals += [sum(x) for x in zip(*parts)]
    return totals


# ---------------------------------------------------------------------------------- measurement
def cpu_rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(samples per CPU-second, samples per wall-second), best of `repeats` (single-threaded code:
    CPU time is the time on one core, and is not inflated when other processes share the machine)."""
    best_cpu = best_wall = math.inf
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return n / best_cpu, n / best_wall


def measure_service(samples: list[ScoringSample], shards: int, cfg: RewardConfig, latency_requests: int) -> dict:
    from stgrl.reward_service.service import start_reward_service, stop_reward_service

    handles, client = start_reward_service(shards, cfg, num_cpus=0)
    try:
        client.score(samples[:256], 0, 100)  # warm-up
        t0 = time.perf_counter()
        client.score(samples, 1, 100)
        throughput = len(samples) / (time.perf_counter() - t0)
        lat = []
        for r in range(latency_requests):
            batch = samples[(r * 32) % len(samples) :][:32]
            t0 = time.perf_counter()
            client.score(batch, 2, 100)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        return {"shards": shards, "samples_per_s": throughput, "p50_ms": 1e3 * statistics.median(lat),
                "p99_ms": 1e3 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)], "requests": len(lat),
                "retries": client.retries}
    finally:
        stop_reward_service(handles, client)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # rouge_score logs once per scorer built
    cfg = RewardConfig(batch_size=32)
    samples = make_samples(args.n)

    def ours() -> None:
        reset_caches()  # every pass starts cold: no memoised numbers, tokens or stems from the previous pass
        score_batch(samples, 10, 100, cfg)

    base_cpu, base_wall = cpu_rate(lambda: baseline_score(samples, 10, 100), args.n, args.repeats)
    ours_cpu, ours_wall = cpu_rate(ours, args.n, args.repeats)
    results: dict = {"n": args.n, "baseline_samples_per_cpu_s": base_cpu, "ours_samples_per_cpu_s": ours_cpu,
                     "baseline_samples_per_wall_s": base_wall, "ours_samples_per_wall_s": ours_wall,
                     "ratio_per_core": ours_cpu / base_cpu, "per_task_us": {}, "service": []}
    for task in ("spatio_temporal", "temporal", "spatial", "general"):
        sub = [x for x in samples if x.task == task]
        b, _ = cpu_rate(lambda sub=sub: baseline_score(sub, 10, 100), len(sub), args.repeats)
        def ours_task(sub=sub) -> None:
            reset_caches()  # cold, like the whole-set pass
            score_batch(sub, 10, 100, cfg)

        o, _ = cpu_rate(ours_task, len(sub), args.repeats)
        results["per_task_us"][task] = {"baseline": 1e6 / b, "ours": 1e6 / o}

    if args.shards:
        import ray

        base = Path(tempfile.mkdtemp(prefix="stgrl-bench-", dir="/tmp"))
        os.environ["HOME"] = str(base)  # Ray's token and state stay in the temp dir
        ray.init(num_cpus=max(args.shards) + 1, resources={"reward": max(args.shards)}, include_dashboard=False,
                 _temp_dir=str(base / "ray"), log_to_driver=False)
        try:
            for s in args.shards:
                results["service"].append(measure_service(samples, s, cfg, args.latency_requests))
        finally:
            ray.shutdown()

    console = Console()
    t = Table(title=f"reward scoring, {args.n} synthetic completions (all four tasks)")
    for col in ("path", "samples / CPU-s (per core)", "samples / wall-s"):
        t.add_column(col, justify="right")
    t.add_row("baseline (reference code path)", f"{base_cpu:,.0f}", f"{base_wall:,.0f}")
    t.add_row("ours (score_batch)", f"{ours_cpu:,.0f}", f"{ours_wall:,.0f}")
    t.add_row("ratio", f"{results['ratio_per_core']:.1f}x", f"{ours_wall / base_wall:.1f}x")
    console.print(t)
    pt = Table(title="CPU time per sample by task (µs)")
    for col in ("task", "baseline", "ours", "ratio"):
        pt.add_column(col, justify="right")
    for task, r in results["per_task_us"].items():
        pt.add_row(task, f"{r['baseline']:.0f}", f"{r['ours']:.0f}", f"{r['baseline'] / r['ours']:.1f}x")
    console.print(pt)
    if results["service"]:
        st = Table(title="reward service (client side, batches of 32)")
        for col in ("shards", "samples/s", "p50 ms", "p99 ms", "requests", "retries"):
            st.add_column(col, justify="right")
        for r in results["service"]:
            st.add_row(str(r["shards"]), f"{r['samples_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                       str(r["requests"]), str(r["retries"]))
        console.print(st)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
