"""The split is by task: no task on two sides, parts partition the rows, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cachewise.train.split import split_by_task


def test_no_task_on_two_sides():
    rng = np.random.default_rng(0)
    tasks = pd.Series(rng.choice([f"task{i}" for i in range(40)], size=2000))
    s = split_by_task(tasks, test_fraction=0.25, valid_fraction=0.2, seed=42)
    sides = [set(tasks.iloc[rows]) for rows in (s.train, s.valid, s.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    all_rows = np.concatenate([s.train, s.valid, s.test])
    assert sorted(all_rows) == list(range(len(tasks)))
    assert len(sides[2]) == 10  # 25% of 40 tasks, not of rows
    again = split_by_task(tasks, 0.25, 0.2, 42)
    np.testing.assert_array_equal(again.test, s.test)
    other = split_by_task(tasks, 0.25, 0.2, 43)
    assert set(tasks.iloc[other.test]) != sides[2]


def test_one_task_cannot_be_split():
    with pytest.raises(ValueError, match="only one task"):
        split_by_task(pd.Series(["a"] * 10), 0.25, 0.2, 0)
