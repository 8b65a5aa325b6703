"""Which learner rank trains which group (issue 20 #2): fixed per step before generation, balanced,
the same for a re-queued group, and cut to equal shards when a worker skipped a record. Hand-computed."""

from __future__ import annotations

import pytest

from stgrl.learner.batch import arrived_shards, destinations, plan_ranks

IDS = ["3/e", "3/a", "3/d", "3/b", "3/h", "3/c", "3/g", "3/f"]  # any order: the plan sorts


def test_two_ranks_two_minibatches_by_hand():
    # sorted a..h; minibatch 0 = a b c d (rank 0: a b, rank 1: c d), minibatch 1 = e f g h
    plan = plan_ranks(IDS, 2, 2)
    assert plan == [["3/a", "3/b", "3/e", "3/f"], ["3/c", "3/d", "3/g", "3/h"]]
    assert destinations(plan) == {"3/a": 0, "3/b": 0, "3/e": 0, "3/f": 0, "3/c": 1, "3/d": 1, "3/g": 1, "3/h": 1}


def test_one_rank_gets_everything_in_order_and_the_plan_ignores_input_order():
    assert plan_ranks(IDS, 1, 4) == [sorted(IDS)]
    assert plan_ranks(list(reversed(IDS)), 2, 2) == plan_ranks(IDS, 2, 2)
    assert plan_ranks([*IDS, "3/a"], 2, 2) == plan_ranks(IDS, 2, 2)  # a re-sent id changes nothing


def test_a_remainder_is_left_out_and_too_few_groups_fail():
    plan = plan_ranks(["1/a", "1/b", "1/c"], 2, 1)
    assert plan == [["1/a"], ["1/b"]]
    assert "1/c" not in destinations(plan)
    with pytest.raises(ValueError, match="1 groups cannot feed 2 learner ranks"):
        plan_ranks(["1/a"], 2, 1)


def test_arrived_shards_keep_plan_order_and_equal_counts():
    plan = [["3/a", "3/b", "3/e", "3/f"], ["3/c", "3/d", "3/g", "3/h"]]
    assert arrived_shards(plan, IDS) == plan
    # "3/b" was skipped (bad media): rank 0 has 3, so rank 1 is cut to its first 3 as well
    assert arrived_shards(plan, [g for g in IDS if g != "3/b"]) == [["3/a", "3/e", "3/f"], ["3/c", "3/d", "3/g"]]
    with pytest.raises(ValueError, match="a learner rank has no arrived group"):
        arrived_shards(plan, ["3/a", "3/b", "3/e", "3/f"])
