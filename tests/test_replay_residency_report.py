"""The residency comparison of a replay report, on a hand-made results table (no replay run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cachewise.replay.residency_report import best_cap, has_residency, plot_jct, residency_table, with_residency_columns

# mean JCT per (capacity, policy); seeds add -10 / 0 / +10 s (paired differences are then exact)
JCT = {
    0.25: {"lru": 1600, "lru_arrival": 1500, "learned": 1400, "cap4": 900, "cap8": 800, "continuum": 1000,
           "cachewise_nomodel": 850, "cachewise": 700, "infinite": 300},
    1.0: {"lru": 310, "lru_arrival": 305, "learned": 300, "cap4": 500, "cap8": 350, "continuum": 305,
          "cachewise_nomodel": 301, "cachewise": 300, "infinite": 300},
}  # fmt: skip


def _results() -> pd.DataFrame:
    rows = []
    for frac, by_policy in JCT.items():
        for policy, jct in by_policy.items():
            for seed, noise in enumerate((-10, 0, 10)):
                rows.append({
                    "seed": seed, "policy": policy, "capacity_frac": frac, "concurrency": 32,
                    "jct_s_mean": jct + noise, "jct_s_p50": jct, "jct_s_p90": 2 * jct, "jct_s_p99": 3 * jct + noise,
                    "makespan_s": 4 * jct, "output_tokens": 1000, "residency_cpu_s": 0.5, "residency_steps": 1000,
                    "busy_s": 100.0, "token_scale": 16, "longest_admission_wait_s": 12.0 if policy == "cachewise" else 0.0,
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_issue_columns_are_added_under_their_names() -> None:
    results = with_residency_columns(_results())
    assert (results["jct_mean_s"] == results["jct_s_mean"]).all() and (results["jct_p99_s"] == results["jct_s_p99"]).all()
    assert results["output_tokens_per_s"].iloc[0] == pytest.approx(1000 / results["makespan_s"].iloc[0])
    assert results["controller_us_per_step"].tolist() == pytest.approx([500.0] * len(results))
    # 0.5 s over 100 s of GPU time, each replay step standing for 16 engine steps that each call the controller
    assert results["controller_overhead_pct"].tolist() == pytest.approx([8.0] * len(results))


def test_best_cap_is_chosen_per_capacity_in_hindsight() -> None:
    results = _results()
    assert best_cap(results[results["capacity_frac"] == 0.25]) == "cap8"
    assert best_cap(results[results["capacity_frac"] == 1.0]) == "cap8"
    assert best_cap(results[results["policy"] == "lru"]) is None
    assert has_residency(results) and not has_residency(results[results["policy"].isin(["lru", "learned"])])


def test_table_gives_ratios_paired_difference_and_waits() -> None:
    table = residency_table(_results(), 32)
    low, full = table.loc["25%"], table.loc["100%"]
    assert low["best cap JCT s"].endswith("(cap8)")
    assert low["cachewise vs lru"] == "2.29x" and low["cachewise vs best cap"] == "1.14x" and low["cachewise vs continuum"] == "1.43x"
    assert low["cachewise - nomodel s"] == "-150 ± 0 (better)"  # identical noise per seed: zero-width interval
    assert full["cachewise - nomodel s"] == "-1 ± 0 (better)" and full["cachewise vs best cap"] == "1.17x"
    assert low["p99 JCT s: cachewise / lru"] == "2,100 / 4,800" and low["longest admission wait s"] == "12"


def test_plot_needs_two_capacities(tmp_path: Path) -> None:
    results = _results()
    assert plot_jct(results, 32, tmp_path / "a.png").stat().st_size > 0
    assert plot_jct(results[results["capacity_frac"] == 1.0], 32, tmp_path / "b.png") is None
