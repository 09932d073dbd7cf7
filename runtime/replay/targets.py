"""The issue's targets, checked against measured replay results (never against constants).

At the headline point (one concurrency, one capacity fraction) of a results table:

* ``gap_harmful`` / ``gap_recompute``: the learned policy closes >= 85% of the LRU -> Belady
  gap in harmful evictions / recomputed prefill tokens: ``(lru - learned) / (lru - belady)``;
* ``beats_heuristics``: learned has fewer harmful evictions than the best hand-written policy;
* ``vs_lru``: LRU has >= 2.6x the learned policy's harmful evictions;
* ``session_time``: learned mean session completion <= 1.1x Belady's;
* ``overhead``: the learned policy's CPU time < 1% of the replayed (GPU) step time.

A target whose inputs are missing (policy not run) is reported as not evaluated. For each
target the shortfall is given in the target's own unit; :func:`diagnose` adds the facts
that bound what any eviction policy could reach (the Belady ceiling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cachewise.runtime.replay.policies import HAND_WRITTEN

GAP_CLOSED = 0.85
VS_LRU = 2.6
SESSION_SLACK = 1.10
OVERHEAD_PCT = 1.0


@dataclass(frozen=True)
class Target:
    """One target: its goal in words, the measured value, and whether it is met (None: not evaluated)."""

    name: str
    goal: str
    measured: float | None
    met: bool | None
    shortfall: str


def headline(results: pd.DataFrame, concurrency: int, capacity_frac: float) -> pd.DataFrame:
    """The rows of one (concurrency, capacity fraction) point, indexed by policy."""
    rows = results[(results["concurrency"] == concurrency) & (results["capacity_frac"].sub(capacity_frac).abs() < 1e-9)]
    return rows.set_index("policy")


def _value(point: pd.DataFrame, policy: str, column: str) -> float | None:
    return float(point.at[policy, column]) if policy in point.index else None


def _gap_closed(point: pd.DataFrame, column: str) -> float | None:
    lru, learned, belady = (_value(point, p, column) for p in ("lru", "learned", "belady"))
    if None in (lru, learned, belady):
        return None
    if lru == belady:
        return math.nan
    return (lru - learned) / (lru - belady)


def _target(name: str, goal: str, measured: float | None, passes, shortfall) -> Target:
    """A :class:`Target` from a measured value (None: not run; NaN: undefined)."""
    if measured is None or math.isnan(measured):
        why = "not run" if measured is None else "undefined (LRU and Belady tie: no gap to close)"
        return Target(name, goal, measured, None, why)
    met = bool(passes(measured))
    return Target(name, goal, measured, met, "" if met else shortfall(measured))


def check_targets(point: pd.DataFrame) -> list[Target]:
    """The targets at a headline point (see module doc)."""
    out = [
        _target(
            name,
            f"learned closes >= {GAP_CLOSED:.0%} of the LRU->Belady gap in {column}",
            _gap_closed(point, column),
            lambda v: v >= GAP_CLOSED,
            lambda v: f"{100 * (GAP_CLOSED - v):.1f} points short",
        )
        for name, column in (("gap_harmful", "harmful_evictions"), ("gap_recompute", "recomputed_tokens"))
    ]
    learned = _value(point, "learned", "harmful_evictions")
    hand = {p: _value(point, p, "harmful_evictions") for p in HAND_WRITTEN if p in point.index}
    best = min(hand, key=lambda p: hand[p]) if hand else None
    out.append(
        _target(
            "beats_heuristics",
            f"learned < best hand-written ({best}) in harmful evictions",
            None if best is None or learned is None else learned - hand[best],
            lambda v: v < 0,
            lambda v: f"{v:.0f} more harmful evictions than {best}",
        )
    )
    lru = _value(point, "lru", "harmful_evictions")
    out.append(
        _target(
            "vs_lru",
            f">= {VS_LRU}x fewer harmful evictions than vLLM LRU",
            None if learned is None or lru is None else (lru / learned if learned else math.inf),
            lambda v: v >= VS_LRU,
            lambda v: f"{v:.2f}x instead of {VS_LRU}x",
        )
    )
    mine, oracle = _value(point, "learned", "session_s_mean"), _value(point, "belady", "session_s_mean")
    out.append(
        _target(
            "session_time",
            f"mean session completion within {SESSION_SLACK - 1:.0%} of Belady's (ratio)",
            None if mine is None or oracle is None else mine / oracle,
            lambda v: v <= SESSION_SLACK,
            lambda v: f"{100 * (v - 1):.1f}% above Belady",
        )
    )
    out.append(
        _target(
            "overhead",
            f"policy CPU < {OVERHEAD_PCT}% of replayed step time (%)",
            _value(point, "learned", "policy_overhead_pct"),
            lambda v: v < OVERHEAD_PCT,
            lambda v: f"{v:.2f}% instead of < {OVERHEAD_PCT}%",
        )
    )
    return out


def diagnose(point: pd.DataFrame) -> list[str]:
    """Measured facts that explain or bound the targets at this point."""
    notes = []
    finite = point.drop(index="infinite", errors="ignore")
    lru = _value(point, "lru", "harmful_evictions")
    if lru is not None and len(finite) > 1:
        ratios = {p: lru / v if v else math.inf for p, v in finite["harmful_evictions"].items() if p != "lru"}
        best = max(ratios, key=lambda p: ratios[p])
        notes.append(
            "Fewer harmful evictions than LRU: "
            + ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items())
            + f". The best policy measured here reaches {ratios[best]:.2f}x ({best}); the {VS_LRU}x target is"
            + (" within" if ratios[best] >= VS_LRU else " beyond")
            + " what any policy measured reaches at this point."
        )
        belady = _value(point, "belady", "harmful_evictions")
        beaters = [p for p in finite.index if belady is not None and finite.at[p, "harmful_evictions"] < belady]
        if beaters:
            notes.append(
                f"{', '.join(beaters)} beat(s) the Belady oracle: Belady chooses by the recorded next-request time,"
                " which is not optimal in a closed loop (evictions change how long requests queue and when they come"
                " back), so 'gap closed' can exceed 100%."
            )
    inf_hit = _value(point, "infinite", "hit_rate")
    if inf_hit is not None and len(finite):
        notes.append(
            f"Prefix-cache hit rate: infinite cache {inf_hit:.1%}; policies {finite['hit_rate'].min():.1%}"
            f" to {finite['hit_rate'].max():.1%}."
        )
    inf_s, bel_s = _value(point, "infinite", "session_s_mean"), _value(point, "belady", "session_s_mean")
    if inf_s is not None and bel_s is not None:
        notes.append(
            f"Mean session time: infinite cache {inf_s:.0f} s, Belady {bel_s:.0f} s: at this capacity the replay"
            f" is {100 * (bel_s / inf_s - 1):.0f}% slower than with unlimited KV memory even with the oracle."
        )
    if "capacity_clamped" in point.columns and point["capacity_clamped"].any():
        notes.append(
            "The capacity was raised to fit the longest request (capacity_clamped); the fraction is not exact."
        )
    if "learned" in point.index and point.at["learned", "predictor_fallbacks"] > 0:
        notes.append(f"The learned predictor fell back {int(point.at['learned', 'predictor_fallbacks'])} times.")
    return notes
