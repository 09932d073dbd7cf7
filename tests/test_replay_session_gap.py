"""The per-session split of a policy's JCT above the infinite cache's (:mod:`cachewise.replay.session_gap`)."""

from __future__ import annotations

import pandas as pd
import pytest

from cachewise.replay.session_gap import gap_table, sessions_table


def _results() -> pd.DataFrame:
    runs = [  # seed, policy, per-session JCTs in the seed's session order
        (0, "infinite", (10.0, 100.0, 20.0, 200.0)),
        (0, "held", (10.0, 160.0, 20.0, 260.0)),  # only the two longer sessions are slowed, by 60 s each
        (1, "infinite", (30.0, 300.0, 40.0, 400.0)),
        (1, "held", (32.0, 340.0, 42.0, 440.0)),
        (2, "held", (1.0, 2.0, 3.0, 4.0)),  # no infinite-cache run of its seed: left out
    ]
    return pd.DataFrame(
        [{"seed": s, "concurrency": 4, "capacity_frac": 0.5, "policy": p, "session_jct_s": j, "jct_s_mean": sum(j) / len(j)}
         for s, p, j in runs]
    )


def test_each_session_is_compared_with_itself_under_the_infinite_cache() -> None:
    results = _results()
    sessions = sessions_table(results)
    assert set(sessions["seed"]) == {0, 1} and len(sessions) == 4 * 4
    held = sessions[(sessions["policy"] == "held") & (sessions["seed"] == 0)]
    assert held["excess_s"].tolist() == [0.0, 60.0, 0.0, 60.0]
    assert held["infinite_jct_s"].tolist() == [10.0, 100.0, 20.0, 200.0]
    mine = results.set_index(["seed", "policy"])["jct_s_mean"]
    for seed in (0, 1):  # the invariant: mean excess = the run's mean JCT minus the infinite cache's
        run = sessions[(sessions["policy"] == "held") & (sessions["seed"] == seed)]
        assert run["excess_s"].mean() == pytest.approx(mine[seed, "held"] - mine[seed, "infinite"])


def test_the_excess_is_split_between_the_shorter_and_the_longer_half() -> None:
    table = gap_table(sessions_table(_results())).set_index("policy")
    assert list(table.index) == ["held"]  # the infinite cache is the reference, not a row
    row = table.loc["held"]
    assert row["seeds"] == 2
    assert row["shorter half, s"].startswith("1 ±")  # seed 0: 0 s, seed 1: 2 s per shorter session
    assert row["longer half, s"].startswith("50 ±")  # seed 0: 60 s, seed 1: 40 s
    assert row["longer half's share"] == "98%"  # (120 + 80) of (120 + 84) s


def test_results_without_per_session_times_give_an_empty_table() -> None:
    results = _results().drop(columns=["session_jct_s"])
    assert sessions_table(results).empty and gap_table(sessions_table(results)).empty
