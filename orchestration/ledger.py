"""The batch ledger: which prompts each step assigned, generated and trained.

It is the proof of "every prompt of every completed step trained exactly once, no trajectory
duplicated or dropped" that tests and the fault drills check after restarts and re-queues. Pure
Python; the orchestrator appends one JSON line per completed step to ``ledger.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from msgspec import Struct


class StepEntry(Struct, kw_only=True):
    """One training step: the prompts it was given and the groups that reached the learner."""

    step: int
    assigned: list[str]
    trained: list[str]
    policy_versions: list[int]
    requeued: list[str] = []
    skipped: list[str] = []
    """Prompts the rollout pool could not use (bad media): counted, never trained."""
    duplicates_dropped: int = 0


class LedgerError(AssertionError):
    """The ledger shows a prompt dropped or trained twice."""


def check_entry(entry: StepEntry) -> None:
    """Every assigned prompt trained exactly once (or skipped as bad input), nothing unassigned trained."""
    counts = Counter(entry.trained)
    twice = sorted(p for p, c in counts.items() if c > 1)
    missing = sorted(set(entry.assigned) - set(counts) - set(entry.skipped))
    extra = sorted(set(counts) - set(entry.assigned))
    if twice or missing or extra:
        raise LedgerError(
            f"step {entry.step}: trained twice {twice[:5]}, never trained {missing[:5]}, unassigned {extra[:5]}"
        )


class Ledger:
    """Appends checked step entries to ``ledger.jsonl``; a resumed run continues the same file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, entry: StepEntry) -> None:
        check_entry(entry)
        import msgspec

        with self.path.open("a") as fh:
            fh.write(msgspec.json.encode(entry).decode() + "\n")

    def entries(self) -> list[StepEntry]:
        import msgspec

        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                out.append(msgspec.json.decode(line, type=StepEntry))
        return out


def check_ledger(path: Path, expected_steps: int | None = None) -> list[StepEntry]:
    """Check a whole run: each step once, each step's prompts trained exactly once."""
    entries = Ledger(path).entries()
    steps = [e.step for e in entries]
    if len(steps) != len(set(steps)):
        raise LedgerError(f"a step was recorded twice: {sorted(s for s, c in Counter(steps).items() if c > 1)}")
    for e in entries:
        check_entry(e)
    if expected_steps is not None and sorted(steps) != list(range(expected_steps)):
        raise LedgerError(f"expected steps 0..{expected_steps - 1}, ledger has {sorted(steps)}")
    return entries


def dump_summary(entries: list[StepEntry]) -> str:
    return json.dumps({"steps": len(entries), "prompts": sum(len(e.assigned) for e in entries),
                       "requeued": sum(len(e.requeued) for e in entries),
                       "duplicates_dropped": sum(e.duplicates_dropped for e in entries)})
