"""Where a policy's mean JCT above the infinite cache's comes from, session by session.

Input: the replay's results (one row per run, :mod:`cachewise.replay.sweep`) with the column
``session_jct_s``, every session's JCT in the seed's session order
(:meth:`~cachewise.replay.metrics.RunMetrics.summary`). The infinite-cache run of the same seed
and concurrency replays the same sessions in the same order, so a session's *excess* is its JCT
under the policy minus its JCT under the infinite cache.

* :func:`sessions_table`: one row per (seed, concurrency, capacity fraction, policy, session):
  ``jct_s``, ``infinite_jct_s``, ``excess_s`` (written as ``sessions.csv``); runs of a seed and
  concurrency without an infinite-cache run are left out.
* :func:`gap_table`: per concurrency, capacity and policy (not the infinite cache), the mean
  excess per session of the *shorter* and the *longer* half of the sessions (split per seed
  at the median infinite-cache JCT; the longer half holds the odd one out), each a mean ± 95%
  t interval over seeds, and the longer half's share of the summed excess. A policy that only
  reorders sessions moves excess between the halves; one that slows every session evenly does not.

Invariant: per run, the mean of ``excess_s`` over the sessions equals the run's ``jct_s_mean``
minus the infinite cache's (same seed and concurrency).

Complexity: O(runs x sessions) time and memory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cachewise.replay.stats import fmt_interval, interval

RUN = ["seed", "concurrency", "capacity_frac", "policy"]
COLUMNS = [*RUN, "session", "jct_s", "infinite_jct_s", "excess_s"]


def sessions_table(results: pd.DataFrame) -> pd.DataFrame:
    """The long per-session table of the module doc (empty, with its columns, without ``session_jct_s``)."""
    if "session_jct_s" not in results.columns or results.empty:
        return pd.DataFrame(columns=COLUMNS)
    infinite = {
        (row.seed, row.concurrency): row.session_jct_s
        for row in results[results["policy"] == "infinite"].itertuples(index=False)
    }
    frames = []
    for row in results.itertuples(index=False):
        reference = infinite.get((row.seed, row.concurrency))
        if reference is None or len(reference) != len(row.session_jct_s):
            continue
        jct, ref = np.asarray(row.session_jct_s, dtype=float), np.asarray(reference, dtype=float)
        frame = pd.DataFrame({"session": np.arange(len(jct)), "jct_s": jct, "infinite_jct_s": ref, "excess_s": jct - ref})
        for col in RUN:
            frame.insert(RUN.index(col), col, getattr(row, col))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def gap_table(sessions: pd.DataFrame) -> pd.DataFrame:
    """Per (concurrency, capacity, policy): the shorter and the longer half's mean excess (s per
    session, mean ± 95% over seeds) and the longer half's share of the summed excess (module doc)."""
    rows = []
    runs = sessions[sessions["policy"] != "infinite"]
    for (conc, frac, policy), part in runs.groupby(["concurrency", "capacity_frac", "policy"], sort=True):
        short, long, total, longer = [], [], 0.0, 0.0
        for _, run in part.groupby("seed"):
            order = run.sort_values(["infinite_jct_s", "session"])["excess_s"].to_numpy()
            half = len(order) // 2
            short.append(order[:half].mean() if half else np.nan)
            long.append(order[half:].mean())
            total += order.sum()
            longer += order[half:].sum()
        rows.append(
            {
                "concurrency": conc,
                "capacity": f"{frac:.0%}",
                "policy": policy,
                "seeds": part["seed"].nunique(),
                "shorter half, s": fmt_interval(*interval(short)),
                "longer half, s": fmt_interval(*interval(long)),
                "longer half's share": f"{longer / total:.0%}" if total > 0 else "n/a",
            }
        )
    return pd.DataFrame(rows)
