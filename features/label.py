"""The training target: how long a call's cached prefix stays idle before it is reused.

For every call ``c`` the *idle time* is ``next_request_time - c.response_time``, where the
next request is the first later request that reuses ``c``'s prefix:

* agent traces (``hash_ids`` null): the next call of the same thread (same
  ``source, session_id, thread_id``; a sub-agent's prefix is reused by that sub-agent's
  next call, the main thread's by the next main-thread call);
* block-hash traces (``hash_ids`` present): the first later request of the same source
  whose ``hash_ids`` contain this request's chain except possibly its last (partial)
  block; as ids are prefix-chained, that is the first later request containing the id
  ``hash_ids[m - 1]`` with ``m = max(len(hash_ids) - 1, 1)``.

Idle times below zero (a parallel tool call sent the next request before this response
was recorded) are clamped to 0 and counted. A prefix not reused within ``horizon_s``
is *censored*: its label is ``log1p(2 * horizon_s)``, the rule LRB uses for objects
beyond its memory window. The model is trained on ``label = log1p(idle seconds)``.

The second target, :func:`remaining_seconds`, is how much longer a call's session runs after the
call finishes: ``max(response_time of the session) - c.response_time`` (0 for its last call),
per ``source, session_id``; the remaining-work model (:mod:`cachewise.train.remaining`) learns
``log1p`` of it. O(n log n) in the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def censored_label(horizon_s: float) -> float:
    """The label of a prefix not reused within ``horizon_s`` seconds."""
    return math.log1p(2.0 * horizon_s)


def label_to_seconds(label: np.ndarray | float) -> np.ndarray | float:
    """Invert :data:`cachewise.features.spec.LABEL_TRANSFORM`: seconds of idle time from a (predicted) label."""
    return np.expm1(label)


@dataclass(frozen=True)
class ReuseLabels:
    """Labels aligned with the events frame they were computed from (same index).

    ``frame`` columns: ``next_use_time`` (NaN when never reused), ``idle_s`` (clamped
    idle seconds, NaN when never reused; may exceed the horizon), ``censored`` (bool),
    ``label`` (float64).
    """

    frame: pd.DataFrame
    n_negative_clamped: int
    n_censored: int


def _next_use_in_thread(events: pd.DataFrame) -> pd.Series:
    """Request time of the next call of the same thread, NaN for a thread's last call."""
    keys = ["source", "session_id", "thread_id"]
    ordered = events.sort_values(keys + ["call_index"], kind="stable")
    nxt = ordered.groupby(keys, sort=False)["request_time"].shift(-1)
    return nxt.reindex(events.index)


def _next_use_by_hash_chain(events: pd.DataFrame) -> pd.Series:
    """Request time of the next request extending each row's block chain (see module doc)."""
    out = pd.Series(np.nan, index=events.index, dtype="float64")
    for _, part in events.groupby("source", sort=False):
        ordered = part.sort_values("request_time", kind="stable")
        first_use_after: dict[int, float] = {}
        times = ordered["request_time"].to_numpy()
        chains = ordered["hash_ids"].to_numpy()
        result = np.full(len(ordered), np.nan)
        for pos in range(len(ordered) - 1, -1, -1):
            chain = chains[pos]
            if len(chain) == 0:
                continue
            key = int(chain[max(len(chain) - 1, 1) - 1])
            result[pos] = first_use_after.get(key, np.nan)
            t = float(times[pos])
            for block in chain:
                first_use_after[int(block)] = t
        out.loc[ordered.index] = result
    return out


def reuse_labels(events: pd.DataFrame, horizon_s: float) -> ReuseLabels:
    """Compute the reuse label of every row of an events table (see module doc)."""
    if horizon_s <= 0:
        raise ValueError(f"horizon_s must be positive, got {horizon_s}")
    has_hash = events["hash_ids"].notna().to_numpy()
    next_use = pd.Series(np.nan, index=events.index, dtype="float64")
    if (~has_hash).any():
        next_use[~has_hash] = _next_use_in_thread(events.loc[~has_hash])
    if has_hash.any():
        next_use[has_hash] = _next_use_by_hash_chain(events.loc[has_hash])

    raw_gap = next_use.to_numpy() - events["response_time"].to_numpy(dtype="float64")
    negative = raw_gap < 0  # NaN compares False
    idle = np.where(negative, 0.0, raw_gap)
    censored = ~(idle <= horizon_s)  # also true where never reused (NaN)
    label = np.where(censored, censored_label(horizon_s), np.log1p(np.where(censored, 0.0, idle)))
    frame = pd.DataFrame(
        {"next_use_time": next_use.to_numpy(), "idle_s": idle, "censored": censored, "label": label},
        index=events.index,
    )
    return ReuseLabels(frame, int(negative.sum()), int(censored.sum()))


def remaining_seconds(events: pd.DataFrame) -> np.ndarray:
    """Seconds each row's session runs after the row's response (module doc), aligned with ``events``."""
    end = events.groupby(["source", "session_id"], sort=False)["response_time"].transform("max")
    return np.maximum(end.to_numpy(dtype="float64") - events["response_time"].to_numpy(dtype="float64"), 0.0)
