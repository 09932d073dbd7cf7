"""Eviction-centric quality metrics of a next-reuse predictor.

An evictor compares prefixes that are idle *at the same moment* and drops the one needed
furthest in the future. The headline metric therefore scores orderings of such pairs:

**Pairwise ordering accuracy** (exact procedure)

1. Each evaluated row ``r`` is a prefix idle over ``[t_r, end_r)``: ``t_r`` is its reference
   time (its response time on the chosen time base, see :func:`reference_times`),
   ``end_r = t_r + idle_r`` when it is reused within the horizon ``H``, else ``t_r + 2H``
   (the censored label's value). Rows with an empty interval (idle 0) are never idle and
   take part in no pair.
2. Candidate pairs are all unordered pairs whose intervals overlap
   (``max(t_a, t_b) < min(end_a, end_b)``). If there are at most ``max_pairs`` of them,
   all are used; otherwise ``max_pairs`` pairs are drawn uniformly with replacement
   (first row ``a`` with probability proportional to its number of overlapping later rows,
   then ``b`` uniformly among those), with a seeded generator.
3. A pair counts only when its true order is known: both reused within the horizon at
   different times ``t + idle``; or one censored (reused after ``t + H`` at the earliest)
   and the other reused before that bound. Two censored rows are never compared.
4. Each pair is judged at the moment ``m = max(t_a, t_b)`` when both first are idle. A
   predictor gives each row a predicted absolute next-use time; the pair is right when the
   row reused first has the smaller one; equal predictions score 1/2. The accuracy is the
   mean over counted pairs; every predictor is scored on the same pairs.

   * ``pairwise_accuracy`` (headline): what an evictor ranking at ``m`` sees. A gap predictor's
     next-use time is ``t + g(m - t)``, its prediction conditioned on the prefix having been
     idle ``m - t`` already (:class:`cachewise.scoring.idle.IdleConditioner`, fitted on the
     validation residuals of that predictor); LRU's is minus the last-use time.
   * ``pairwise_accuracy_static``: the unconditioned next-use time ``t + predicted idle``
     fixed at finish time (an overdue prefix keeps a next-use time already in the past).
     For LRU both are equal.

**Spearman**: rank correlation of predicted and true labels (``log1p`` idle seconds,
censored rows at the censored label) over all evaluated rows; ``None`` when a predictor
has no per-row gap prediction or predicts a constant.
**MAE on log label**: mean absolute error of predicted vs true label; ``None`` for LRU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from cachewise.scoring.idle import IdleConditioner

TIME_BASES = ("session", "wall")


def reference_times(frame: pd.DataFrame, time_base: str) -> np.ndarray:
    """Reference time of each row's idle interval on ``time_base``.

    ``wall``: the response time as recorded. ``session``: the response time minus the
    first request time of its session, i.e. all sessions overlaid to start together, as
    the replay benchmark serves them (the traced sessions ran one after another, so on
    the wall clock almost no two prefixes of different sessions are idle together).
    """
    response = frame["response_time"].to_numpy(dtype="float64")
    if time_base == "wall":
        return response
    if time_base == "session":
        start = frame.groupby(["source", "session_id"], sort=False)["request_time"].transform("min")
        return response - start.to_numpy(dtype="float64")
    raise ValueError(f"unknown time base {time_base!r}; choose one of {TIME_BASES}")


@dataclass(frozen=True)
class IdlePairs:
    """Comparable pairs of simultaneously idle prefixes (positions into the evaluated rows).

    ``a_first[k]`` is true when row ``a[k]`` is reused before row ``b[k]``.
    """

    a: np.ndarray
    b: np.ndarray
    a_first: np.ndarray
    moment: np.ndarray  # max(t_a, t_b): when both are first idle
    n_candidates: int
    n_drawn: int

    def __len__(self) -> int:
        return len(self.a)


def sample_idle_pairs(
    t: np.ndarray,
    idle_s: np.ndarray,
    censored: np.ndarray,
    horizon_s: float,
    max_pairs: int,
    seed: int,
) -> IdlePairs:
    """Draw the comparable pairs of prefixes idle at the same moment (module doc, steps 1-3)."""
    t = np.asarray(t, dtype="float64")
    censored = np.asarray(censored, dtype=bool)
    idle = np.where(censored, 2.0 * horizon_s, np.asarray(idle_s, dtype="float64"))
    end = t + idle
    live = np.flatnonzero(end > t)
    order = live[np.argsort(t[live], kind="stable")]
    ts, ends = t[order], end[order]
    hi = np.searchsorted(ts, ends, side="left")  # rows order[a+1 : hi[a]] overlap row order[a]
    counts = np.maximum(hi - np.arange(len(order)) - 1, 0)
    n_candidates = int(counts.sum())
    if n_candidates == 0:
        empty = np.zeros(0, dtype=np.int64)
        return IdlePairs(empty, empty, np.zeros(0, dtype=bool), np.zeros(0), 0, 0)
    if n_candidates <= max_pairs:
        pa = np.repeat(np.arange(len(order)), counts)
        offsets = np.arange(n_candidates) - np.repeat(np.cumsum(counts) - counts, counts)
        pb = pa + 1 + offsets
    else:
        rng = np.random.default_rng(seed)
        pa = rng.choice(len(order), size=max_pairs, p=counts / n_candidates)
        pb = pa + 1 + np.floor(rng.random(max_pairs) * counts[pa]).astype(np.int64)
    a, b = order[pa], order[pb]

    true_next = t + np.where(censored, horizon_s, idle)  # for censored rows: a lower bound
    ca, cb = censored[a], censored[b]
    na, nb = true_next[a], true_next[b]
    both = ~ca & ~cb & (na != nb)
    a_censored = ca & ~cb & (nb < na)  # b certainly first
    b_censored = ~ca & cb & (na < nb)  # a certainly first
    keep = both | a_censored | b_censored
    a_first = np.where(both, na < nb, b_censored)
    a, b = a[keep], b[keep]
    return IdlePairs(a, b, a_first[keep], np.maximum(t[a], t[b]), n_candidates, len(pa))


def pairwise_accuracy(pairs: IdlePairs, predicted_next_use: np.ndarray) -> float | None:
    """Share of ``pairs`` ordered right by ``predicted_next_use`` (ties score 1/2)."""
    if len(pairs) == 0:
        return None
    pa, pb = predicted_next_use[pairs.a], predicted_next_use[pairs.b]
    right = np.where(pairs.a_first, pa < pb, pb < pa)
    score = np.where(pa == pb, 0.5, right.astype("float64"))
    return float(score.mean())


def spearman(pred_label: np.ndarray, true_label: np.ndarray) -> float | None:
    """Spearman rank correlation, ``None`` when undefined (constant input)."""
    if len(pred_label) < 2 or np.ptp(pred_label) == 0 or np.ptp(true_label) == 0:
        return None
    return float(spearmanr(pred_label, true_label).statistic)


def mae_log(pred_label: np.ndarray, true_label: np.ndarray) -> float:
    """Mean absolute error on the log label."""
    return float(np.mean(np.abs(np.asarray(pred_label) - np.asarray(true_label))))


def idle_aware_accuracy(
    pairs: IdlePairs, t: np.ndarray, pred_label: np.ndarray, conditioner: IdleConditioner
) -> float | None:
    """``pairwise_accuracy`` of a gap predictor: next-use times conditioned on the idle time at ``m``."""
    if len(pairs) == 0:
        return None
    ends = []
    for rows in (pairs.a, pairs.b):
        ends.append(t[rows] + conditioner.expected_gap(pred_label[rows], pairs.moment - t[rows]))
    right = np.where(pairs.a_first, ends[0] < ends[1], ends[1] < ends[0])
    return float(np.where(ends[0] == ends[1], 0.5, right.astype("float64")).mean())


def gap_predictor_metrics(
    pairs: IdlePairs,
    t: np.ndarray,
    pred_label: np.ndarray,
    true_label: np.ndarray,
    conditioner: IdleConditioner,
) -> dict[str, float | None]:
    """All metrics of a predictor of the log idle time (model, per-tool mean, constant)."""
    t = np.asarray(t, dtype="float64")
    pred_label = np.asarray(pred_label, dtype="float64")
    return {
        "pairwise_accuracy": idle_aware_accuracy(pairs, t, pred_label, conditioner),
        "pairwise_accuracy_static": pairwise_accuracy(pairs, t + np.expm1(pred_label)),
        "spearman": spearman(pred_label, true_label),
        "mae_log": mae_log(pred_label, true_label),
    }


def lru_metrics(pairs: IdlePairs, t: np.ndarray) -> dict[str, float | None]:
    """Metrics of LRU: the prefix used more recently is predicted to be reused sooner."""
    accuracy = pairwise_accuracy(pairs, -np.asarray(t, dtype="float64"))
    return {"pairwise_accuracy": accuracy, "pairwise_accuracy_static": accuracy, "spearman": None, "mae_log": None}
