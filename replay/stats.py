"""Means, 95% intervals and paired differences over the seeds of a replay.

Each seed is one independent replay: its own sample of sessions, their order, and their token
ids (:func:`cachewise.replay.selection.select_sessions`). Every policy runs on the same
seeds, so policies are compared *paired*: per seed ``policy - baseline``, then the mean of
those differences with a Student-t 95% interval (n - 1 degrees of freedom). A difference
whose interval covers zero is reported as "no measurable difference". With one seed there
is no interval (NaN).

Complexity: O(rows) per call (pandas group-bys).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

POINT = ["concurrency", "capacity_frac"]
LEVEL = 0.95


def harmful_ratio(policy: float, lru: float) -> float:
    """``policy / lru`` harmful evictions of one seed: 1 where both are 0, infinite where only LRU's is."""
    return policy / lru if lru else (math.inf if policy else 1.0)


def interval(values: np.ndarray | pd.Series) -> tuple[float, float]:
    """``(mean, half-width of the 95% t interval)``; half-width NaN with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = scipy_stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def per_policy(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and half-width of ``metric`` per (concurrency, capacity_frac, policy)."""
    rows = []
    for key, part in results.groupby([*POINT, "policy"], sort=False):
        mean, half = interval(part[metric])
        rows.append({**dict(zip([*POINT, "policy"], key)), "mean": mean, "half": half, "n": len(part)})
    return pd.DataFrame(rows)


def paired(results: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """Per point and policy: mean and half-width of ``metric(policy) - metric(baseline)`` over seeds
    (only seeds where both ran); ``measurable`` False where the interval covers zero."""
    rows = []
    for key, part in results.groupby(POINT, sort=False):
        wide = part.pivot_table(index="seed", columns="policy", values=metric)
        if baseline not in wide.columns:
            continue
        for policy in wide.columns:
            diff = (wide[policy] - wide[baseline]).dropna()
            mean, half = interval(diff)
            measurable = bool(len(diff) > 1 and not math.isnan(half) and abs(mean) > half)
            rows.append(
                {**dict(zip(POINT, key)), "policy": policy, "mean": mean, "half": half, "measurable": measurable}
            )
    return pd.DataFrame(rows, columns=[*POINT, "policy", "mean", "half", "measurable"])


def verdict(mean: float, half: float, lower_is_better: bool = True) -> str:
    """Words for a paired difference: "no measurable difference" when its interval covers zero."""
    if math.isnan(half) or abs(mean) <= half:
        return "no measurable difference"
    better = (mean < 0) == lower_is_better
    return "better" if better else "worse"


def fmt_interval(mean: float, half: float) -> str:
    """``mean ± half`` with thousands separators (no ``±`` part when there is no interval)."""

    def num(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

    return num(mean) if math.isnan(half) else f"{num(mean)} ± {num(half)}"
