"""Pairwise ordering accuracy, pair sampling, baselines metrics and the idle conditioner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cachewise.scoring.idle import LEVELS, IdleConditioner
from cachewise.train.metrics import (
    gap_predictor_metrics,
    lru_metrics,
    mae_log,
    pairwise_accuracy,
    reference_times,
    sample_idle_pairs,
)

H = 100.0


def test_pairs_are_exactly_the_overlapping_comparable_ones():
    #           t    idle  censored
    rows = [(0.0, 10.0, False),  # 0: idle [0, 10)
            (2.0, 3.0, False),   # 1: [2, 5)      overlaps 0
            (4.0, 0.5, False),   # 2: [4, 4.5)    overlaps 0, 1
            (20.0, 5.0, False),  # 3: [20, 25)    overlaps 4 only
            (15.0, 0.0, True),   # 4: censored: [15, 215), reused after 115 at the earliest
            (30.0, 0.0, False)]  # 5: idle 0: never idle, in no pair
    t, idle, cens = (np.array(c) for c in zip(*rows))
    pairs = sample_idle_pairs(t, idle, cens, H, max_pairs=1000, seed=0)
    got = {(min(a, b), max(a, b)): (a if first else b) for a, b, first in zip(pairs.a, pairs.b, pairs.a_first)}
    assert got == {(0, 1): 1, (0, 2): 2, (1, 2): 2, (3, 4): 3}
    assert pairs.n_candidates == 4


def test_perfect_and_reversed_predictors():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 50, 200))
    idle = rng.exponential(5.0, 200)
    cens = np.zeros(200, dtype=bool)
    pairs = sample_idle_pairs(t, idle, cens, H, max_pairs=10_000, seed=1)
    assert len(pairs) > 100
    true_next = t + idle
    assert pairwise_accuracy(pairs, true_next) == 1.0
    assert pairwise_accuracy(pairs, -true_next) == 0.0
    assert pairwise_accuracy(pairs, np.zeros(200)) == 0.5  # all ties score 1/2
    label = np.log1p(idle)
    cond = IdleConditioner.from_residuals(np.zeros(50))  # a perfect predictor's residuals
    perfect = gap_predictor_metrics(pairs, t, label, label, cond)
    assert perfect["pairwise_accuracy"] == 1.0 and perfect["pairwise_accuracy_static"] == 1.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["mae_log"] == 0.0


def test_lru_orders_by_last_use():
    # two prefixes idle together: the older (t=0) returns at 10, the newer (t=1) at 2
    pairs = sample_idle_pairs(np.array([0.0, 1.0]), np.array([10.0, 1.0]), np.array([False, False]), H, 10, 0)
    assert lru_metrics(pairs, np.array([0.0, 1.0]))["pairwise_accuracy"] == 1.0
    # the newer one returns last: LRU is wrong
    pairs = sample_idle_pairs(np.array([0.0, 1.0]), np.array([3.0, 9.0]), np.array([False, False]), H, 10, 0)
    assert lru_metrics(pairs, np.array([0.0, 1.0]))["pairwise_accuracy"] == 0.0


def test_sampling_is_seeded_and_capped():
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 10, 300)
    idle = rng.exponential(20.0, 300)
    cens = rng.random(300) < 0.1
    a = sample_idle_pairs(t, idle, cens, H, max_pairs=500, seed=7)
    b = sample_idle_pairs(t, idle, cens, H, max_pairs=500, seed=7)
    assert a.n_drawn == 500 and a.n_candidates > 500
    np.testing.assert_array_equal(a.a, b.a)
    np.testing.assert_array_equal(a.b, b.b)


def test_session_time_base_overlays_sessions():
    frame = pd.DataFrame(
        {"source": ["x"] * 3, "session_id": ["a", "a", "b"], "request_time": [100.0, 105.0, 900.0], "response_time": [101.0, 106.0, 903.0]}
    )
    np.testing.assert_array_equal(reference_times(frame, "session"), [1.0, 6.0, 3.0])
    np.testing.assert_array_equal(reference_times(frame, "wall"), [101.0, 106.0, 903.0])
    with pytest.raises(ValueError):
        reference_times(frame, "moon")


def test_idle_conditioner_evolves_with_idle_time():
    rng = np.random.default_rng(3)
    cond = IdleConditioner.from_residuals(rng.normal(0.0, 0.5, 5000))
    mu = np.log1p(10.0)
    g0 = cond.expected_gap(np.array([mu]), np.array([0.0]))[0]
    assert g0 == pytest.approx(10.0, rel=0.05)  # median residual ~0: the prediction itself
    elapsed = np.array([0.0, 5.0, 20.0, 60.0, 1e4])
    g = cond.expected_gap(np.full(5, mu), elapsed)
    assert (g >= elapsed).all() and (np.diff(g) > 0).all()
    assert g[-1] == 2e4  # past every residual: expected to stay idle as long again
    for m, e in zip(np.full(5, mu), elapsed):
        assert cond.expected_gap_one(float(m), float(e)) == pytest.approx(cond.expected_gap(np.array([m]), np.array([e]))[0])
    assert len(cond.to_list()) == len(LEVELS)
    with pytest.raises(ValueError):
        IdleConditioner(tuple(range(10)))


def test_mae_log():
    assert mae_log(np.array([1.0, 2.0]), np.array([2.0, 2.0])) == 0.5
