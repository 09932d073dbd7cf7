"""The replay report's arithmetic: intervals, paired differences, and the targets' pass/fail from results.

Hand-made result tables with known answers (a t quantile from its table, gaps closed by
construction), so a sign, a baseline or a threshold that slips fails here rather than in a
report nobody re-derives.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cachewise.replay.stats import fmt_interval, interval, paired, verdict
from cachewise.replay.targets import best_hand_written, check_targets, gap_closed, ratios


def test_interval_is_the_student_t_95_percent_half_width() -> None:
    mean, half = interval(np.array([1.0, 2.0, 3.0]))
    # sd = 1, n = 3, t(0.975, 2) = 4.3027 (tables)
    assert mean == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert interval([5.0]) == (5.0, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(interval([math.nan, math.nan])[0])
    assert interval([4.0, math.nan, 6.0])[0] == 5.0  # NaN seeds are dropped, not counted


def _rows(values: dict[str, list[float]], metric: str = "jct_s_mean") -> pd.DataFrame:
    """One row per (seed, policy) at one point."""
    return pd.DataFrame(
        [
            {"concurrency": 8, "capacity_frac": 0.5, "seed": seed, "policy": policy, metric: v}
            for policy, vs in values.items()
            for seed, v in enumerate(vs)
        ]
    )


def test_paired_differences_are_per_seed_and_say_when_they_are_measurable() -> None:
    # b is a + 10 on every seed, though the seeds themselves vary by hundreds: paired, it is exact.
    rows = _rows({"a": [100.0, 400.0, 900.0], "b": [110.0, 410.0, 910.0], "c": [90.0, 420.0, 880.0]})
    d = paired(rows, "jct_s_mean", "a").set_index("policy")
    assert d.at["b", "mean"] == pytest.approx(10.0) and d.at["b", "half"] == pytest.approx(0.0)
    assert bool(d.at["b", "measurable"]) and not bool(d.at["a", "measurable"])
    assert d.at["c", "mean"] == pytest.approx(-10 / 3) and not bool(d.at["c", "measurable"])  # -10, +20, -20
    assert verdict(d.at["b", "mean"], d.at["b", "half"]) == "worse"
    assert verdict(-5.0, 1.0) == "better" and verdict(-5.0, 1.0, lower_is_better=False) == "worse"
    assert verdict(d.at["c", "mean"], d.at["c", "half"]) == "no measurable difference"
    assert verdict(3.0, math.nan) == "no measurable difference"
    assert paired(rows, "jct_s_mean", "absent").empty


def test_fmt_interval() -> None:
    assert fmt_interval(1234.4, 56.0) == "1,234 ± 56"
    assert fmt_interval(-12.34, 0.5) == "-12.3 ± 0.5"
    assert fmt_interval(0.5, math.nan) == "0.5"
    assert fmt_interval(math.nan, math.nan) == "n/a"


def _point(**policies: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(policies, orient="index")


def test_gap_closed_is_measured_from_lru_arrival_to_its_own_min() -> None:
    point = _point(
        lru={"harmful_evictions": 200.0},
        lru_arrival={"harmful_evictions": 100.0, "min_harmful_evictions": 20.0, "jct_s_mean": 50.0},
        learned={"harmful_evictions": 40.0, "jct_s_mean": 30.0},
        infinite={"harmful_evictions": 0.0, "jct_s_mean": 25.0},
    )
    assert gap_closed(point, "learned", "harmful_evictions") == pytest.approx(0.75)  # (100-40)/(100-20)
    assert gap_closed(point, "learned", "jct_s_mean") == pytest.approx(0.8)  # (50-30)/(50-25): the infinite cache
    assert gap_closed(point, "lru", "harmful_evictions") == pytest.approx(-1.25)  # worse than the baseline
    assert gap_closed(point, "heuristic", "harmful_evictions") is None  # not run
    no_gap = point.copy()
    no_gap.at["lru_arrival", "min_harmful_evictions"] = 100.0
    assert math.isnan(gap_closed(no_gap, "learned", "harmful_evictions"))


def test_best_hand_written_and_ratios_against_the_references() -> None:
    point = _point(
        lru={"harmful_evictions": 300.0, "jct_s_mean": 90.0},
        lru_arrival={"harmful_evictions": 200.0, "jct_s_mean": 80.0, "min_harmful_evictions": 50.0},
        heuristic={"harmful_evictions": 150.0, "jct_s_mean": 70.0},
        learned={"harmful_evictions": 100.0, "jct_s_mean": 60.0},
        infinite={"harmful_evictions": 0.0, "jct_s_mean": 40.0},
    )
    assert best_hand_written(point) == "heuristic"
    assert best_hand_written(point.drop(index=["lru_arrival", "heuristic"])) is None
    r = ratios(point)
    assert "infinite" not in r.index
    assert r.at["learned", "harmful: lru / policy"] == pytest.approx(3.0)
    assert r.at["learned", "JCT: best hand-written (heuristic) / policy"] == pytest.approx(70.0 / 60.0)
    assert r.at["learned", "gap closed (harmful)"] == pytest.approx(100.0 / 150.0)


def _target_rows(learned_harmful: list[float], heuristic_harmful: list[float]) -> pd.DataFrame:
    """Three seeds of lru, lru_arrival, heuristic, learned and infinite at one point."""
    rows = []
    for seed in range(3):
        for policy, harmful, jct in (
            ("lru", 900.0, 100.0),
            ("lru_arrival", 400.0, 90.0),
            ("heuristic", heuristic_harmful[seed], 88.0),
            ("learned", learned_harmful[seed], 85.0),
            ("infinite", 0.0, 75.0),
        ):
            rows.append(
                {
                    "concurrency": 8, "capacity_frac": 0.5, "seed": seed, "policy": policy,
                    "harmful_evictions": harmful, "min_harmful_evictions": 100.0 if policy == "lru_arrival" else 0.0,
                    "recomputed_tokens": 10 * harmful, "min_recomputed_tokens": 1000.0 if policy == "lru_arrival" else 0.0,
                    "jct_s_mean": jct, "policy_overhead_pct": 0.2,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_targets_pass_and_fail_on_the_measured_values() -> None:
    met = {t.name: t for t in check_targets(_target_rows([140.0, 150.0, 160.0], [300.0, 310.0, 290.0]))}
    # gap: (400 - 150) / (400 - 100) = 0.833 < 0.85, 1.7 points short
    assert met["gap_harmful"].met is False and met["gap_harmful"].measured == pytest.approx(250 / 300)
    assert met["gap_harmful"].shortfall == "1.7 points short"
    assert met["beats_heuristics"].met is True  # -150 on every seed: interval below zero
    assert met["vs_lru"].met is True and met["vs_lru"].measured == pytest.approx(6.0)
    assert met["session_time"].met is False and met["session_time"].measured == pytest.approx(85 / 75)
    assert met["session_time"].shortfall == "13.3% above the infinite cache"
    assert met["overhead"].met is True

    # learned no better than the heuristic on one seed of three: the interval reaches above zero
    close = {t.name: t for t in check_targets(_target_rows([100.0, 100.0, 350.0], [300.0, 310.0, 290.0]))}
    assert close["beats_heuristics"].met is False and close["beats_heuristics"].measured > 0
    assert close["gap_harmful"].measured == pytest.approx((400 - 550 / 3) / 300)  # means over seeds first
    missing = {t.name: t for t in check_targets(_target_rows([150.0] * 3, [300.0] * 3).query("policy != 'infinite'"))}
    assert missing["session_time"].met is None and missing["session_time"].shortfall == "not run"
