"""Following a run from its run directory (`stgrl watch`): poll the files, show the display, stop
when the run is over."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from stgrl.orchestration.progress import ProgressDisplay, ProgressState, RunWatcher

log = logging.getLogger(__name__)


def run_is_over(states: list[ProgressState], run_dir: Path, quiet_for_s: float, settle_s: float) -> bool:
    """Whether nothing more will come: the demo wrote its report, or RL (the last stage) is done,
    or every stage there is done and nothing was written for `settle_s` (an SFT-only run)."""
    if (run_dir / "report.md").is_file() and states and all(s.finished for s in states):
        return True
    if any(s.kind == "rl" and s.finished for s in states):
        return True
    return bool(states) and all(s.finished for s in states) and quiet_for_s >= settle_s


def watch_run(run_dir: Path, display: ProgressDisplay, interval_s: float = 2.0, settle_s: float = 60.0,
              timeout_s: float | None = None, once: bool = False) -> list[ProgressState]:
    """Show the run's stages until the run is over (or `timeout_s`, or at once with `once`); returns
    the last states."""
    watcher = RunWatcher(run_dir)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    said_waiting = False
    while True:
        states = watcher.states()
        for state in states:
            display.show(state)
        if not states and not said_waiting:
            log.info("%s has no stage yet; waiting for one to start", run_dir)
            said_waiting = True
        quiet_for = time.time() - watcher.activity()
        if once or run_is_over(states, run_dir, quiet_for, settle_s):
            return states
        if deadline is not None and time.monotonic() >= deadline:
            log.info("stopped watching after %.0f s; the run is still going", timeout_s)
            return states
        time.sleep(interval_s)
