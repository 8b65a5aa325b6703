"""The one progress display every stage uses: base pretraining, SFT, RL and held-out evaluation.

Each stage is summarised in one :class:`ProgressState` (stage, step i/N, trailing train reward, loss,
tokens/s, weight version lag, elapsed, ETA), computed by the pure :func:`summarize` from the stage's
metric rows. The rows come either from the running stage itself (:func:`track`, the callback the
SFT/RL loops and the pretraining call every step) or from the run directory's metrics files
(:class:`RunWatcher`: `stgrl watch`, and the demo following its Ray jobs and evaluation workers), so
a person sees the same display in both places.

:class:`ProgressDisplay` shows the states: on a terminal a rich live table; anywhere else (CI, a
KubeRay job's log, a pipe) plain lines with no escape codes, at most one per stage every
`interval_s` seconds plus the final one, so a log shows the run's course, not only its end.

Thread safety: `ProgressDisplay.show` may be called from several threads (the demo's watcher thread
and its main thread); a lock serialises them.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

WINDOW = 10
"""Steps in the trailing means (reward, loss, tokens/s) and in the ETA's step rate: one step's train
reward averages only prompts x group size samples, too few to read a trend from."""


class StageKeys(msgspec.Struct, frozen=True):
    """Which metric of a stage's rows feeds which column (None: the stage has no such column)."""

    reward: str | None = None
    loss: str | None = None
    held_out_loss: str | None = None
    tokens_per_s: str | None = None
    tokens: str | None = None
    """Tokens of one step; with `seconds` gives tokens/s where the stage logs no rate itself."""
    seconds: str | None = None
    version_lag: str | None = None


STAGE_KEYS: dict[str, StageKeys] = {
    "pretrain": StageKeys(loss="loss"),
    "sft": StageKeys(loss="sft/sft_loss", held_out_loss="sft/eval_loss", tokens="sft/target_tokens",
                     seconds="sft/step_time_s"),
    "rl": StageKeys(reward="train/reward_mean", tokens_per_s="rollout/tokens_per_s",
                    version_lag="weights/version_lag"),
    "eval": StageKeys(reward="eval/reward_total", tokens_per_s="eval/tokens_per_s"),
}


class ProgressState(msgspec.Struct, frozen=True):
    """What a person needs to see of one stage at a glance."""

    stage: str
    kind: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None = None
    reward: float | None = None
    loss: float | None = None
    held_out_loss: float | None = None
    tokens_per_s: float | None = None
    version_lag: float | None = None
    finished: bool = False


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _trailing(rows: list[dict], key: str | None) -> float | None:
    if key is None:
        return None
    vals = [x for x in (_number(r.get(key)) for r in rows) if x is not None][-WINDOW:]
    return sum(vals) / len(vals) if vals else None


def _latest(rows: list[dict], key: str | None) -> float | None:
    if key is None:
        return None
    for r in reversed(rows):
        v = _number(r.get(key))
        if v is not None:
            return v
    return None


def summarize(stage: str, kind: str, total: int, rows: list[dict], started: float, now: float,
              finished: bool | None = None) -> ProgressState:
    """One stage's state from its rows (each with `done`: steps completed, and `time`: epoch seconds).

    Pure. `finished` None means "when every step is done". The ETA uses the step rate of the last
    WINDOW steps, minus the time since the last step; None (unknown) until two rows give a rate
    that excludes the start-up."""
    keys = STAGE_KEYS[kind]
    rows = [r for r in rows if _number(r.get("done")) is not None]
    done = int(max((r["done"] for r in rows), default=0))
    is_finished = done >= total if finished is None else finished
    last_t = _number(rows[-1].get("time")) if rows else None
    elapsed = ((last_t if is_finished and last_t is not None else now) - started)
    eta = None
    if is_finished:
        eta = 0.0
    elif rows and last_t is not None and done > 0:
        recent = rows[-(WINDOW + 1):]
        first_t, first_done = _number(recent[0].get("time")), int(recent[0]["done"])
        # one step alone gives no rate: its time includes the stage's start-up (actors, first eval)
        if len(recent) >= 2 and first_t is not None and done > first_done:
            per_step = (last_t - first_t) / (done - first_done)
            eta = max(0.0, per_step * (total - done) - (now - last_t))
    tokens_per_s = _trailing(rows, keys.tokens_per_s)
    if tokens_per_s is None and keys.tokens and keys.seconds:
        pairs = [(_number(r.get(keys.tokens)), _number(r.get(keys.seconds))) for r in rows]
        pairs = [(t, s) for t, s in pairs if t is not None and s][-WINDOW:]
        if pairs:
            tokens_per_s = sum(t for t, _ in pairs) / sum(s for _, s in pairs)
    return ProgressState(
        stage=stage, kind=kind, done=done, total=total, elapsed_s=max(0.0, elapsed), eta_s=eta,
        reward=_trailing(rows, keys.reward), loss=_trailing(rows, keys.loss),
        held_out_loss=_latest(rows, keys.held_out_loss), tokens_per_s=tokens_per_s,
        version_lag=_trailing(rows, keys.version_lag), finished=is_finished,
    )


def format_duration(seconds: float | None) -> str:
    """`1:02:03`, `4:05`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _columns(state: ProgressState) -> list[tuple[str, str]]:
    """(label, value) pairs shared by the plain line and the live table."""
    cols = []
    if state.reward is not None:
        cols.append(("reward", f"{state.reward:.3f}"))
    if state.loss is not None:
        cols.append(("loss", f"{state.loss:.4f}"))
    if state.held_out_loss is not None:
        cols.append(("held-out loss", f"{state.held_out_loss:.4f}"))
    if state.tokens_per_s is not None:
        cols.append(("tok/s", f"{state.tokens_per_s:,.0f}"))
    if state.version_lag is not None:
        cols.append(("lag", f"{state.version_lag:.2f}"))
    return cols


def plain_line(state: ProgressState) -> str:
    """One line of plain text for logs (no escape codes), e.g.
    `RL (async) step 12/80 (15%) | reward 1.234 | tok/s 310 | lag 0.50 | elapsed 0:40 | ETA 3:50`."""
    pct = 100.0 * state.done / max(1, state.total)
    parts = [f"{state.stage} step {state.done}/{state.total} ({pct:.0f}%)"]
    parts += [f"{label} {value}" for label, value in _columns(state)]
    parts.append(f"elapsed {format_duration(state.elapsed_s)}")
    parts.append("done" if state.finished else f"ETA {format_duration(state.eta_s)}")
    return " | ".join(parts)


class ProgressDisplay:
    """Shows the states of the stages that ran so far: rich live table on a terminal, plain
    periodic lines otherwise. Use as a context manager (closing prints each stage's last state)."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None, interval_s: float = 15.0,
                 console: Any = None) -> None:
        if stream is None:
            stream = console.file if console is not None else sys.stderr
            stream = getattr(stream, "original", None) or stream  # not into the logs (console_log.LineToLog)
        self.stream = stream
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) if live is None else live
        self.interval_s = interval_s
        self._console = console
        self._states: dict[str, ProgressState] = {}
        self._shown_at: dict[str, float] = {}
        self._printed: dict[str, tuple[float, int, bool]] = {}
        self._lock = threading.RLock()  # re-entered by the first live render inside show()
        self._live: Any = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def show(self, state: ProgressState) -> None:
        with self._lock:
            self._states[state.stage] = state
            self._shown_at[state.stage] = time.monotonic()
            if self.live:
                self._show_live()
            else:
                self._maybe_print(state, force=False)

    def states(self) -> list[ProgressState]:
        with self._lock:
            return list(self._states.values())

    def _maybe_print(self, state: ProgressState, force: bool) -> None:
        now = time.monotonic()
        last = self._printed.get(state.stage)
        if last is not None and last[1:] == (state.done, state.finished):
            return  # nothing new to say
        due = last is None or state.finished or now - last[0] >= self.interval_s
        if not (due or force):
            return
        self.stream.write(f"{time.strftime('%H:%M:%S')} {plain_line(state)}\n")
        self.stream.flush()
        self._printed[state.stage] = (now, state.done, state.finished)

    def _table(self) -> Any:
        """Fits 80 columns: only the columns some stage has are shown."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        rows = [(self._aged(s), dict(_columns(s))) for s in self._states.values()]
        optional = [c for c in ("reward", "loss", "held-out loss", "tok/s", "lag") if any(c in cols for _, cols in rows)]
        table = Table(box=None, padding=(0, 1), show_edge=False)
        table.add_column("stage", no_wrap=True, min_width=max(len(s.stage) for s, _ in rows))
        table.add_column("", width=10)
        table.add_column("step", no_wrap=True, justify="right")
        for col in optional:
            table.add_column("held-out" if col == "held-out loss" else col, no_wrap=True, justify="right")
        table.add_column("elapsed", no_wrap=True, justify="right")
        table.add_column("ETA", no_wrap=True, justify="right")
        for s, cols in rows:
            table.add_row(f"[bold]{s.stage}[/bold]", ProgressBar(total=max(1, s.total), completed=s.done, width=10),
                          f"{s.done}/{s.total}", *(cols.get(c, "–") for c in optional), format_duration(s.elapsed_s),
                          "[green]done[/green]" if s.finished else format_duration(s.eta_s))
        return table

    def _aged(self, state: ProgressState) -> ProgressState:
        """The state as of now: the live table redraws between steps, and its clocks must not stop."""
        if state.finished:
            return state
        age = time.monotonic() - self._shown_at.get(state.stage, time.monotonic())
        eta = None if state.eta_s is None else max(0.0, state.eta_s - age)
        return msgspec.structs.replace(state, elapsed_s=state.elapsed_s + age, eta_s=eta)

    def __rich__(self) -> Any:
        with self._lock:
            return self._table()

    def _show_live(self) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            console = self._console or Console(file=self.stream)
            # our own stream routing (stgrl.orchestration.console_log) already keeps stray output
            # away from the terminal; Live redirecting it again would fight that
            # the display itself is the renderable: each refresh (2 per second) redraws it as of now
            self._live = Live(self, console=console, refresh_per_second=2, redirect_stdout=False,
                              redirect_stderr=False, transient=False)
            self._live.start()

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, None
            if live is None and not self.live:
                for state in self._states.values():
                    self._maybe_print(state, force=True)
        if live is not None:
            # outside the lock: stopping joins the refresh thread, which takes the lock to render
            live.stop()


class NullDisplay(ProgressDisplay):
    """Shows nothing: for a process whose progress another one displays (an evaluation worker
    records its rows with `track(record_to=...)` and the demo shows them)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr, live=False)

    def show(self, state: ProgressState) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def track(display: ProgressDisplay | None, stage: str, kind: str, total: int,
          record_to: Path | None = None, started: float | None = None) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """Yields `update(step, metrics)` (step 0-based, called after each step) that feeds `display`.

    `record_to`: also append each step's row to this JSONL file (with `total` and `time`), the
    metrics file `RunWatcher` reads for stages that keep none of their own (held-out evaluation).
    A display of None gets a default one on the console for the stage's duration. `started`: when
    the stage began (epoch seconds; default now), so the elapsed time includes its start-up."""
    from stgrl.orchestration.console_log import display_for_console

    own = display is None
    shown = display or display_for_console()
    started = time.time() if started is None else started
    rows: list[dict] = []
    fh = None
    if record_to is not None:
        record_to.parent.mkdir(parents=True, exist_ok=True)
        fh = record_to.open("w")
        fh.write(json.dumps({"done": 0, "total": total, "time": started}) + "\n")
        fh.flush()

    def update(step: int, metrics: dict[str, float]) -> None:
        row = {"done": step + 1, "time": time.time(), **{k: v for k, v in metrics.items() if _number(v) is not None}}
        rows.append(row)
        if fh is not None:
            fh.write(json.dumps({"total": total, **row}) + "\n")
            fh.flush()
        shown.show(summarize(stage, kind, total, rows, started, row["time"]))

    try:
        yield update
    finally:
        if fh is not None:
            fh.close()
        if own:
            shown.close()


# ------------------------------------------------------------------ the run directory as the source
def read_rows(path: Path) -> list[dict]:
    """JSONL rows of a metrics file that may be being written (a torn last line is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _config_value(path: Path, dotted: str) -> Any:
    import yaml

    node: Any = yaml.safe_load(path.read_text()) or {}
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class RunWatcher:
    """The stages of a run directory, summarised from its files as the stages write them:

    - SFT: `config_sft.yaml` (its mtime: when the stage started; `sft.steps`) and `metrics_sft.jsonl`
      (row `step` = steps done; step 0 is the held-out loss before training);
    - RL: `config_rl.yaml` (`run.total_steps`, `run.mode`) and `metrics.jsonl` (row `step` 0-based);
    - evaluations: `eval/<phase>/progress.jsonl` (written by :func:`track`), finished once the
      phase's `metrics.json` is newer than its first row.

    `since`: ignore stages that started before this time (a reused run directory's old stages)."""

    def __init__(self, run_dir: Path, since: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.since = since

    def states(self, now: float | None = None) -> list[ProgressState]:
        now = time.time() if now is None else now
        found = [s for s in (self._sft(now), self._rl(now)) if s is not None] + self._evals(now)
        return [state for state, started in found if self.since is None or started >= self.since]

    def _sft(self, now: float) -> tuple[ProgressState, float] | None:
        cfg = self.run_dir / "config_sft.yaml"
        if not cfg.is_file():
            return None
        started = cfg.stat().st_mtime
        total = int(_config_value(cfg, "sft.steps") or 0)
        rows = [{**r, "done": r.get("step")} for r in read_rows(self.run_dir / "metrics_sft.jsonl")
                if (_number(r.get("time")) or 0.0) >= started - 1.0]
        return summarize("SFT", "sft", total, rows, started, now), started

    def _rl(self, now: float) -> tuple[ProgressState, float] | None:
        cfg = self.run_dir / "config_rl.yaml"
        if not cfg.is_file():
            return None
        started = cfg.stat().st_mtime
        total = int(_config_value(cfg, "run.total_steps") or 0)
        mode = _config_value(cfg, "run.mode") or "rl"
        rows = [{**r, "done": int(r["step"]) + 1} for r in read_rows(self.run_dir / "metrics.jsonl")
                if _number(r.get("step")) is not None]
        return summarize(f"RL ({mode})", "rl", total, rows, started, now), started

    def _evals(self, now: float) -> list[tuple[ProgressState, float]]:
        out = []
        for path in sorted((self.run_dir / "eval").glob("*/progress.jsonl")):
            rows = read_rows(path)
            if not rows:
                continue
            started = _number(rows[0].get("time")) or path.stat().st_mtime
            total = int(rows[0].get("total") or 0)
            metrics = path.parent / "metrics.json"
            finished = metrics.is_file() and metrics.stat().st_mtime >= started
            stage = f"eval {path.parent.name.replace('_', ' ')}"
            out.append((summarize(stage, "eval", total, rows, started, now, finished=finished or None), started))
        return out

    def activity(self) -> float:
        """The newest mtime among the files the watcher reads (0 when none): a run that has written
        nothing for a while is not running."""
        paths = [self.run_dir / n for n in ("config_sft.yaml", "metrics_sft.jsonl", "config_rl.yaml",
                                            "metrics.jsonl", "report.md")]
        paths += list((self.run_dir / "eval").glob("*/progress.jsonl"))
        return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


@contextlib.contextmanager
def follow(watcher: RunWatcher, display: ProgressDisplay, poll_s: float = 2.0) -> Iterator[None]:
    """Feed `display` from `watcher` in a background thread while the body runs (the demo following
    its Ray jobs and evaluation workers); one last poll at the end so final states are shown."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            for state in watcher.states():
                display.show(state)

    thread = threading.Thread(target=loop, name="stgrl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=poll_s + 5)
        for state in watcher.states():
            display.show(state)
