"""What reaches the console, and what only the run directory's log files get.

Quiet by default: the console shows the progress display (:mod:`stgrl.orchestration.progress`), the
narrative of the run (what starts, what finished, where the results are) and each warning that
matters once, in words. Everything else — per-step chatter of the pools (weight publishes,
checkpoints, actors joining), third-party library messages and warnings, weight-loading bars, wandb
summaries, Ray's actor output with its `(Actor pid=…)` prefixes — goes to the stage's log file
(`<run-dir>/logs/<stage>.log`, :func:`stgrl.orchestration.stage_support.stage_log`). `-v` shows it all
live again.

How: one console handler on the real stderr with a filter (:class:`QuietFilter`); `sys.stderr` (and,
inside a stage, `sys.stdout`) replaced by a :class:`LineToLog` that turns whatever is written to them
(Ray's driver-side copies of actor output, tqdm bars, `print`s of libraries) into log records of
`stgrl.output`, which only the files get. On a terminal the console handler is rich; elsewhere it is
a plain `HH:MM:SS LEVEL message` line with no escape codes (and Ray is told not to colour actor
prefixes: `RAY_COLOR_PREFIX=0`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

OUTPUT_LOGGER = "stgrl.output"
"""Logger of captured stream output (actor lines, bars, library prints): files only unless -v."""

CHATTER = ("stgrl.actors", "stgrl.transport", "stgrl.learner", "stgrl.reward_service", "stgrl.rollout.hf_engine",
           "stgrl.rollout.vllm_engine", "stgrl.orchestration.rl_loop", "stgrl.orchestration.rollout_pool",
           "stgrl.orchestration.ray_setup", "stgrl.orchestration.report", "stgrl.orchestration.metrics",
           OUTPUT_LOGGER, "stgrl.orchestration.jobs.output")
"""Loggers whose INFO lines are per-step or per-actor chatter: log files only (warnings still show, and
so does a line logged with ``extra={"console": True}``)."""

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
PLAIN_DATEFMT = "%H:%M:%S"
PLAIN_LINE = re.compile(r"^(\d\d:\d\d:\d\d) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")
"""A line of the plain console format (how `stgrl run` recognises its jobs' own log lines)."""


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def _is_chatter(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in CHATTER)


class QuietFilter(logging.Filter):
    """The quiet console: INFO of stgrl's own narrative loggers, WARNING+ of stgrl, ERROR+ of anything;
    each distinct message once (a warning repeated every step is said once)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "stgrl" or record.name.startswith("stgrl.") or record.name == "__main__"
        if record.levelno >= logging.ERROR:
            keep = True
        elif record.levelno >= logging.WARNING:
            keep = ours
        elif record.levelno >= logging.INFO:
            # `extra={"console": True}`: a chatty module's line a user must see (a run resumed, ...)
            keep = ours and (getattr(record, "console", False) or not _is_chatter(record.name))
        else:
            keep = False
        if not keep:
            return False
        if record.levelno >= logging.WARNING:
            key = (record.name, record.getMessage())
            if key in self._seen:
                return False
            self._seen.add(key)
        return True


class LineToLog:
    """A text stream that turns each written line into a log record (ANSI codes removed; of a
    carriage-return-redrawn bar only the last state is kept). Partial lines wait for their newline."""

    def __init__(self, logger: str = OUTPUT_LOGGER, level: int = logging.INFO, original: IO[str] | None = None) -> None:
        self._log = logging.getLogger(logger)
        self._level = level
        self._buf = ""
        self.original = original

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            line = strip_ansi(line.rsplit("\r", 1)[-1]).rstrip()
            if line.strip():
                self._log.log(self._level, "%s", line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # libraries that ask for a file descriptor (faulthandler, subprocess) get the real one
        if self.original is None:
            raise OSError("no file descriptor")
        return self.original.fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


class ConsoleHandler(logging.Handler):
    """The console handler; knows whether it is quiet, and the real stream it writes to."""

    def __init__(self, stream: IO[str], verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.INFO)
        self.stream = stream
        self.verbose = verbose
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())
        self.rich_console: Any = None
        if self.is_tty:
            from rich.console import Console
            from rich.logging import RichHandler

            self.rich_console = Console(file=stream)
            self._inner: logging.Handler = RichHandler(console=self.rich_console, rich_tracebacks=True,
                                                       show_path=False)
        else:
            self._inner = logging.StreamHandler(stream)
            self._inner.setFormatter(logging.Formatter(PLAIN_FORMAT, PLAIN_DATEFMT))
        if not verbose:
            self.addFilter(QuietFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self._inner.handle(record)


def console_handler() -> ConsoleHandler | None:
    """The console handler `setup_console` installed (None in a process that did not call it)."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, ConsoleHandler)), None)


def is_quiet() -> bool:
    handler = console_handler()
    return handler is not None and not handler.verbose


def display_for_console(interval_s: float = 15.0):
    """A progress display on the console's real stream (sharing the rich console on a terminal, so
    log lines print above the live table)."""
    from stgrl.orchestration.progress import ProgressDisplay

    handler = console_handler()
    if handler is None:
        return ProgressDisplay(interval_s=interval_s)
    return ProgressDisplay(handler.stream, live=handler.is_tty, interval_s=interval_s,
                           console=handler.rich_console)


def setup_console(verbose: bool = False, stream: IO[str] | None = None) -> None:
    """Console logging for a `stgrl` command (replaces any earlier set-up). Quiet mode also routes
    `sys.stderr` into the logs (see the module docstring); `restore_streams` undoes that."""
    if stream is None:
        current = sys.stderr
        stream = current.original if isinstance(current, LineToLog) and current.original else current
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = ConsoleHandler(stream, verbose)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("stgrl").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    if not handler.is_tty:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not verbose:
        sys.stderr = LineToLog(original=stream)


def restore_streams() -> None:
    """Put the real `sys.stderr`/`sys.stdout` back (before a traceback is printed, at exit)."""
    for name in ("stderr", "stdout"):
        current = getattr(sys, name)
        if isinstance(current, LineToLog) and current.original is not None:
            setattr(sys, name, current.original)


def quiet_libraries() -> None:
    """transformers logs through its own handler on stderr, bypassing ours: let its records reach the
    root handlers (the log files; the console shows them only at ERROR) instead. Called where a
    stage starts, not at start-up: importing transformers costs seconds `stgrl config` need not pay."""
    if not is_quiet():
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


@contextlib.contextmanager
def capture_stdout() -> Iterator[None]:
    """Inside a stage in quiet mode, `sys.stdout` too goes to the logs (Ray prints actors' stdout
    there); elsewhere stdout is left alone, because commands print their results on it."""
    if not is_quiet():
        yield
        return
    quiet_libraries()
    saved = sys.stdout
    sys.stdout = LineToLog(original=saved)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = saved


def setup_worker_process(log_path: Any, verbose: bool = False) -> None:
    """Logging of a worker process the demo spawns (a held-out evaluation): everything into
    `log_path`, the stgrl warnings also on the console (plain, once each), stray output and bars
    into the file too. Spawned processes start with no logging set-up of their own."""
    from pathlib import Path

    stream = sys.__stderr__ or sys.stderr
    setup_console(verbose, stream)
    if not verbose:
        handler = console_handler()
        if handler is not None:
            handler.setLevel(logging.WARNING)
        sys.stdout = LineToLog(original=sys.__stdout__)  # type: ignore[assignment]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(log_path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(fh)
    quiet_libraries()
