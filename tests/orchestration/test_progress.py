"""The progress display and the quiet console (pure parts and real streams; no training)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from stgrl.orchestration.console_log import OUTPUT_LOGGER, LineToLog, QuietFilter, strip_ansi
from stgrl.orchestration.progress import ProgressDisplay, ProgressState, plain_line, summarize, track

ESC = re.compile(r"\x1b")


def _rl_rows(n: int, t0: float = 1000.0, dt: float = 2.0) -> list[dict]:
    return [{"done": i + 1, "time": t0 + dt * (i + 1), "train/reward_mean": float(i),
             "rollout/tokens_per_s": 100.0 * (i + 1), "weights/version_lag": 1.0 if i % 2 else 0.0}
            for i in range(n)]


def test_summarize_uses_trailing_window_and_recent_step_rate():
    rows = _rl_rows(20)  # one step every 2 s after a 2 s start-up
    s = summarize("RL (async)", "rl", 50, rows, started=1000.0, now=rows[-1]["time"])
    assert s.done == 20 and s.total == 50 and not s.finished
    assert s.reward == pytest.approx(sum(range(10, 20)) / 10)  # mean of the last 10 steps, not all 20
    assert s.tokens_per_s == pytest.approx(100.0 * sum(range(11, 21)) / 10)
    assert s.version_lag == pytest.approx(0.5)
    assert s.eta_s == pytest.approx(30 * 2.0)
    assert s.elapsed_s == pytest.approx(40.0)
    # 5 s after the last step the ETA counts down, the elapsed time goes on
    later = summarize("RL (async)", "rl", 50, rows, started=1000.0, now=rows[-1]["time"] + 5)
    assert later.eta_s == pytest.approx(55.0) and later.elapsed_s == pytest.approx(45.0)


def test_summarize_sft_tokens_per_s_and_held_out_loss_and_finish():
    rows = [{"done": i, "time": 10.0 + i, "sft/sft_loss": 1.0 / i, "sft/target_tokens": 300.0,
             "sft/step_time_s": 0.5} for i in range(1, 5)]
    rows[-1]["sft/eval_loss"] = 0.25
    s = summarize("SFT", "sft", 4, rows, started=10.0, now=100.0)
    assert s.finished and s.eta_s == 0.0 and s.elapsed_s == pytest.approx(4.0)  # ends at the last step
    assert s.tokens_per_s == pytest.approx(600.0) and s.held_out_loss == 0.25
    assert s.reward is None and s.version_lag is None
    line = plain_line(s)
    assert line.startswith("SFT step 4/4 (100%)") and "held-out loss 0.2500" in line and line.endswith("done")


def test_no_rate_yet_means_unknown_eta():
    s = summarize("SFT", "sft", 10, [], started=0.0, now=3.0)
    assert s.done == 0 and s.eta_s is None and "ETA ?" in plain_line(s)
    # one step after a long start-up: its time is no step rate, so no made-up 10-minute ETA
    one = summarize("SFT", "sft", 10, [{"done": 1, "time": 60.0}], started=0.0, now=61.0)
    assert one.eta_s is None and one.elapsed_s == pytest.approx(61.0)


def test_plain_display_prints_first_periodic_and_final_lines_only():
    out = io.StringIO()
    with ProgressDisplay(out, live=False, interval_s=3600) as display, track(display, "RL (sync)", "rl", 5) as update:
        for step in range(5):
            update(step, {"train/reward_mean": 0.5 + step, "rollout/tokens_per_s": 10.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # the first step, then the last (finished); nothing in between
    assert "step 1/5" in lines[0] and "ETA" in lines[0]
    assert "step 5/5" in lines[1] and lines[1].endswith("done")
    assert not ESC.search(out.getvalue())


def test_plain_display_every_step_with_zero_interval():
    out = io.StringIO()
    with ProgressDisplay(out, live=False, interval_s=0) as display, track(display, "SFT", "sft", 3) as update:
        for step in range(3):
            update(step, {"sft/sft_loss": 1.0})
    assert [re.search(r"step (\d)/3", ln).group(1) for ln in out.getvalue().splitlines()] == ["1", "2", "3"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_the_rich_live_table():
    out = _Terminal()
    display = ProgressDisplay(out, interval_s=0)
    assert display.live
    display.show(ProgressState(stage="RL (async)", kind="rl", done=3, total=8, elapsed_s=12.0, eta_s=20.0,
                               reward=1.25, tokens_per_s=321.0, version_lag=0.5))
    display.close()
    text = strip_ansi(out.getvalue())
    assert "RL (async)" in text and "3/8" in text and "1.250" in text and "0:20" in text


def test_track_records_rows_for_the_watcher(tmp_path):
    from stgrl.orchestration.progress import RunWatcher

    path = tmp_path / "eval" / "after_RL" / "progress.jsonl"
    silent = ProgressDisplay(io.StringIO(), live=False)
    with track(silent, "after_RL", "eval", 4, record_to=path) as update:
        for i in range(2):
            update(i, {"eval/reward_total": 1.0 + i, "eval/tokens_per_s": 50.0})
    (state,) = RunWatcher(tmp_path).states()
    assert state.stage == "eval after RL" and state.done == 2 and state.total == 4
    assert state.reward == pytest.approx(1.5) and not state.finished


def test_line_to_log_keeps_last_bar_state_and_strips_ansi(caplog):
    stream = LineToLog()
    with caplog.at_level(logging.INFO, logger=OUTPUT_LOGGER):
        stream.write("Loading weights:   0%|  | 0/81\rLoading weights: 100%|██| 81/81\n")
        stream.write("\x1b[36m(LearnerRank pid=12)\x1b[0m rank 0 up")
        assert len(caplog.records) == 1  # the partial line waits for its newline
        stream.write("\n\n")
    assert [r.getMessage() for r in caplog.records] == ["Loading weights: 100%|██| 81/81",
                                                        "(LearnerRank pid=12) rank 0 up"]


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_quiet_filter_keeps_narrative_and_warnings_once():
    f = QuietFilter()
    assert f.filter(_record("stgrl.orchestration.demo", logging.INFO, "held-out evaluation after RL"))
    assert not f.filter(_record("stgrl.transport.weight_channel", logging.INFO, "published weight version 3"))
    assert not f.filter(_record(OUTPUT_LOGGER, logging.INFO, "(RolloutWorkerImpl pid=1) Loading weights"))
    assert not f.filter(_record("py.warnings", logging.WARNING, "FutureWarning: all_gather_into_tensor"))
    assert not f.filter(_record("transformers.generation", logging.WARNING, "flags ['top_k'] not valid"))
    assert f.filter(_record("ray", logging.ERROR, "a library error still shows"))
    died = _record("stgrl.orchestration.rl_loop", logging.WARNING, "rollout worker 1 died during step 4")
    assert f.filter(died)
    assert not f.filter(_record("stgrl.orchestration.rl_loop", logging.WARNING, "rollout worker 1 died during step 4"))
    assert f.filter(_record("stgrl.orchestration.rl_loop", logging.WARNING, "rollout worker 0 died during step 9"))
    resumed = _record("stgrl.orchestration.rl_loop", logging.INFO, "resumed from checkpoint: next step 3")
    assert not f.filter(resumed)  # a chatty module's INFO ...
    resumed.console = True
    assert f.filter(resumed)  # ... unless it is marked for the console


def test_job_lines_lose_their_timestamp_and_ray_lines_go_to_the_file(caplog):
    from stgrl.orchestration.jobs import forward_job_line

    with caplog.at_level(logging.INFO):
        forward_job_line("stgrl-sft", "05:40:12 WARNING wandb disabled: no module")
        forward_job_line("stgrl-sft", "2026-12-02 05:40:01,123\tINFO job_manager.py:581 -- Runtime env is setting up.")
        forward_job_line("stgrl-sft", "05:40:13 SFT step 3/300 (1%) | loss 2.1 | elapsed 0:03 | ETA 4:00")
    by_logger = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert by_logger[0] == ("stgrl.orchestration.jobs", "WARNING", "[stgrl-sft] wandb disabled: no module")
    assert all(name == "stgrl.orchestration.jobs.output" for name, _, _ in by_logger[1:])
    assert not QuietFilter().filter(caplog.records[1]) and not QuietFilter().filter(caplog.records[2])


def test_watcher_skips_a_torn_line_and_old_stages(tmp_path):
    import os
    import time

    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.progress import RunWatcher
    from stgrl.orchestration.stage_support import prepare_run_dir

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", ["sft.steps=4"])
    prepare_run_dir(cfg, tmp_path, "sft")
    now = time.time()
    (tmp_path / "metrics_sft.jsonl").write_text(
        f'{{"step": 0, "time": {now}}}\n{{"step": 1, "time": {now + 1}, "sft/sft_loss": 2.0}}\n{{"step": 2, "ti')
    (state,) = RunWatcher(tmp_path).states(now=now + 2)
    assert state.stage == "SFT" and state.done == 1 and state.loss == 2.0  # the torn step-2 line is skipped
    # a demo started after this SFT does not show it
    old = now - 3600
    os.utime(tmp_path / "config_sft.yaml", (old, old))
    assert RunWatcher(tmp_path, since=now - 10).states(now=now + 2) == []
    assert len(RunWatcher(tmp_path).states(now=now + 2)) == 1


def test_live_table_clocks_keep_running_between_steps():
    import time

    from rich.console import Console

    display = ProgressDisplay(_Terminal(), live=False, interval_s=3600)  # render by hand, no live thread
    display.show(ProgressState(stage="RL (sync)", kind="rl", done=2, total=8, elapsed_s=10.0, eta_s=30.0))
    time.sleep(2.1)
    out = io.StringIO()
    Console(file=out, width=100).print(display)
    assert "0:12" in out.getvalue() and "0:28" in out.getvalue(), out.getvalue()  # elapsed up, ETA down
