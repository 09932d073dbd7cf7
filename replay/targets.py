"""The issue's targets and the headline comparisons, from measured replay results (never constants).

At one point (concurrency, capacity fraction) of a results table with one row per
(seed, policy), on the means over seeds:

* ``gap_harmful`` / ``gap_recompute``: the learned policy closes >= 85% of the gap from
  ``lru_arrival`` (the runtime's arrival rule, no predictions: the strongest order without
  learning) to Belady's MIN of ``lru_arrival``'s own access sequence, in harmful evictions /
  recomputed tokens: ``(lru_arrival - learned) / (lru_arrival - MIN(lru_arrival))``;
* ``beats_heuristics``: learned has fewer harmful evictions than the best hand-written policy
  (lowest mean), with the paired 95% interval of the difference below zero;
* ``vs_lru``: vLLM's LRU has >= 2.6x the learned policy's harmful evictions;
* ``session_time``: learned mean JCT <= 1.1x the infinite cache's (the bound on session time);
* ``overhead``: the learned policy's pool CPU time < 1% of the replayed GPU time, at real scale
  (``policy_overhead_pct``, :mod:`cachewise.replay.metrics`: a replay block stands for ``token_scale`` vLLM blocks).

A target whose inputs are missing (policy not run) is reported as not evaluated; for each
target the shortfall is given in its own unit. :func:`ratios` gives every policy's harmful
evictions and JCT against vLLM LRU, ``lru_arrival`` and the best hand-written policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cachewise.replay.policies import hand_written
from cachewise.replay.stats import paired

GAP_CLOSED = 0.85
VS_LRU = 2.6
SESSION_SLACK = 1.10
OVERHEAD_PCT = 1.0
BASELINE = "lru_arrival"


@dataclass(frozen=True)
class Target:
    """One target: its goal in words, the measured value, and whether it is met (None: not evaluated)."""

    name: str
    goal: str
    measured: float | None
    met: bool | None
    shortfall: str


def at_point(results: pd.DataFrame, concurrency: int, capacity_frac: float) -> pd.DataFrame:
    """The rows (every seed) of one (concurrency, capacity fraction) point."""
    return results[(results["concurrency"] == concurrency) & (results["capacity_frac"].sub(capacity_frac).abs() < 1e-9)]


def headline(results: pd.DataFrame, concurrency: int, capacity_frac: float) -> pd.DataFrame:
    """Means over seeds of the numeric columns at one point, indexed by policy (run order kept)."""
    rows = at_point(results, concurrency, capacity_frac)
    means = rows.groupby("policy", sort=False).mean(numeric_only=True)
    return means


def _value(point: pd.DataFrame, policy: str, column: str) -> float | None:
    return float(point.at[policy, column]) if policy in point.index and column in point.columns else None


def best_hand_written(point: pd.DataFrame) -> str | None:
    """The hand-written policy with the fewest mean harmful evictions at ``point`` (None: none run)."""
    hand = [p for p in hand_written() if p in point.index]
    return min(hand, key=lambda p: point.at[p, "harmful_evictions"]) if hand else None


def gap_closed(point: pd.DataFrame, policy: str, column: str) -> float | None:
    """Fraction of the ``lru_arrival`` -> MIN(lru_arrival's sequence) gap that ``policy`` closes in
    ``column`` (harmful_evictions or recomputed_tokens); for ``jct_s_mean`` the bound is the
    infinite cache. NaN when there is no gap, None when an input was not run."""
    base = _value(point, BASELINE, column)
    mine = _value(point, policy, column)
    if column == "jct_s_mean":
        bound = _value(point, "infinite", column)
    else:
        bound = _value(point, BASELINE, f"min_{column}")
    if None in (base, mine, bound):
        return None
    if base == bound:
        return math.nan
    return (base - mine) / (base - bound)


def ratios(point: pd.DataFrame) -> pd.DataFrame:
    """Per policy: reference / policy for harmful evictions and mean JCT, against vLLM LRU,
    ``lru_arrival`` and the best hand-written policy (> 1: the policy is better), and gap closed."""
    best = best_hand_written(point)
    refs = {"lru": "lru", "lru_arrival": BASELINE, f"best hand-written ({best})": best}
    rows = {}
    for policy in point.index:
        if policy == "infinite":
            continue
        row = {}
        for label, ref in refs.items():
            for column, short in (("harmful_evictions", "harmful"), ("jct_s_mean", "JCT")):
                a, b = _value(point, ref, column) if ref else None, _value(point, policy, column)
                row[f"{short}: {label} / policy"] = math.nan if a is None or not b else a / b
        for column, short in (("harmful_evictions", "harmful"), ("jct_s_mean", "JCT")):
            closed = gap_closed(point, policy, column)
            row[f"gap closed ({short})"] = math.nan if closed is None else closed
        rows[policy] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("policy")


def _target(name: str, goal: str, measured: float | None, passes, shortfall) -> Target:
    """A :class:`Target` from a measured value (None: not run; NaN: undefined)."""
    if measured is None or math.isnan(measured):
        why = "not run" if measured is None else "undefined (no gap between lru_arrival and MIN)"
        return Target(name, goal, measured, None, why)
    met = bool(passes(measured))
    return Target(name, goal, measured, met, "" if met else shortfall(measured))


def check_targets(rows: pd.DataFrame) -> list[Target]:
    """The targets at one point; ``rows``: every seed's rows of that point (see module doc)."""
    point = rows.groupby("policy", sort=False).mean(numeric_only=True)
    out = [
        _target(
            name,
            f"learned closes >= {GAP_CLOSED:.0%} of the lru_arrival->MIN gap in {column}",
            gap_closed(point, "learned", column),
            lambda v: v >= GAP_CLOSED,
            lambda v: f"{100 * (GAP_CLOSED - v):.1f} points short",
        )
        for name, column in (("gap_harmful", "harmful_evictions"), ("gap_recompute", "recomputed_tokens"))
    ]
    best = best_hand_written(point)
    diff = None
    if best is not None and "learned" in point.index and "seed" in rows.columns:
        d = paired(rows, "harmful_evictions", best)
        d = d[d["policy"] == "learned"]
        if len(d):
            mean, half = float(d["mean"].iloc[0]), float(d["half"].iloc[0])
            diff = mean + (half if not math.isnan(half) else 0.0)  # the interval's upper end
    out.append(
        _target(
            "beats_heuristics",
            f"learned < best hand-written ({best}) in harmful evictions (upper end of the paired 95% interval)",
            diff,
            lambda v: v < 0,
            lambda v: f"interval reaches {v:+,.0f} harmful evictions vs {best}",
        )
    )
    learned, lru = _value(point, "learned", "harmful_evictions"), _value(point, "lru", "harmful_evictions")
    out.append(
        _target(
            "vs_lru",
            f">= {VS_LRU}x fewer harmful evictions than vLLM LRU",
            None if learned is None or lru is None else (lru / learned if learned else math.inf),
            lambda v: v >= VS_LRU,
            lambda v: f"{v:.2f}x instead of {VS_LRU}x",
        )
    )
    mine, bound = _value(point, "learned", "jct_s_mean"), _value(point, "infinite", "jct_s_mean")
    out.append(
        _target(
            "session_time",
            f"mean JCT within {SESSION_SLACK - 1:.0%} of the infinite cache's (ratio)",
            None if mine is None or bound is None else mine / bound,
            lambda v: v <= SESSION_SLACK,
            lambda v: f"{100 * (v - 1):.1f}% above the infinite cache",
        )
    )
    out.append(
        _target(
            "overhead",
            f"pool CPU < {OVERHEAD_PCT}% of the replayed GPU time, at real scale (%)",
            _value(point, "learned", "policy_overhead_pct"),
            lambda v: v < OVERHEAD_PCT,
            lambda v: f"{v:.2f}% instead of < {OVERHEAD_PCT}%",
        )
    )
    return out


def diagnose(point: pd.DataFrame) -> list[str]:
    """Measured facts that explain or bound the targets at this point (``point``: means by policy)."""
    notes = []
    finite = point.drop(index="infinite", errors="ignore")
    if "min_harmful_evictions" in finite.columns and len(finite):
        above = (finite["harmful_evictions"] >= finite["min_harmful_evictions"]).all()
        notes.append(
            "Belady's MIN of each run's own access sequence: "
            + ", ".join(f"{p} {v:,.0f}" for p, v in finite["min_harmful_evictions"].items())
            + " harmful evictions (mean over seeds); every policy is "
            + ("at or above" if above else "NOT always above (see the per-seed results)")
            + " the MIN of its own sequence. MIN differs between policies because in the closed loop each"
            " policy produces its own sequence."
        )
    inf_hit = _value(point, "infinite", "hit_rate")
    if inf_hit is not None and len(finite):
        notes.append(
            f"Prefix-cache hit rate: infinite cache {inf_hit:.1%}; policies {finite['hit_rate'].min():.1%}"
            f" to {finite['hit_rate'].max():.1%}."
        )
    inf_s = _value(point, "infinite", "jct_s_mean")
    if inf_s is not None and len(finite):
        best = finite["jct_s_mean"].idxmin()
        notes.append(
            f"Mean JCT: infinite cache {inf_s:.0f} s; the best policy here ({best}) {finite.at[best, 'jct_s_mean']:.0f} s,"
            f" {100 * (finite.at[best, 'jct_s_mean'] / inf_s - 1):.0f}% above it."
        )
    if "capacity_clamped" in point.columns and point["capacity_clamped"].any():
        notes.append("The capacity was raised to fit the longest request (capacity_clamped); the fraction is not exact.")
    for policy in ("learned", "learned_nohints"):
        if policy in point.index and point.at[policy, "predictor_fallbacks"] > 0:
            notes.append(f"The {policy} predictor fell back {point.at[policy, 'predictor_fallbacks']:.0f} times (mean).")
    return notes
