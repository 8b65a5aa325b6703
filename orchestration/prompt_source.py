"""Which prompts each training step gets: a pure function of (seed, step), so a resumed run sees
exactly the prompts an uninterrupted run would have (the data cursor is the step)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(n)`` for one epoch, deterministic in (seed, epoch)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def prompts_for_step(records: Sequence[T], step: int, per_step: int, seed: int) -> list[T]:
    """The ``per_step`` records of training step ``step``: epochs of seeded permutations, cut in order.

    A step that straddles an epoch boundary takes the rest of one epoch and the start of the next; a
    record never appears twice within a step unless ``per_step`` exceeds the dataset size.
    """
    n = len(records)
    if n == 0:
        raise ValueError("the training set is empty")
    out: list[T] = []
    orders: dict[int, list[int]] = {}
    start = step * per_step
    for pos in range(start, start + per_step):
        epoch, k = divmod(pos, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(records[orders[epoch][k]])
    return out
