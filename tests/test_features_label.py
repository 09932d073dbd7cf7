"""Reuse labels: next call of the thread, censoring at the horizon, clamping, hash chains."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cachewise.data.schema import COLUMNS
from cachewise.features.label import censored_label, label_to_seconds, remaining_seconds, reuse_labels

H = 100.0


def events(rows: list[dict]) -> pd.DataFrame:
    base = {
        "source": "claude_code", "src_file": "f", "task_id": "t", "is_sidechain": False, "model": "",
        "time_basis": "wall", "prompt_tokens": 1, "cached_tokens": None, "output_tokens": 1,
        "hash_ids": None, "tool_calls": [], "ended_turn": False,
    }
    return pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)


def test_thread_labels_censoring_and_clamping_by_hand():
    df = events(
        [
            {"session_id": "s", "thread_id": "s", "call_index": 0, "request_time": 0.0, "response_time": 2.0},
            # sidechain rows interleave in time but only reuse their own thread's prefix
            {"session_id": "s", "thread_id": "s:a", "call_index": 0, "request_time": 3.0, "response_time": 4.0, "is_sidechain": True},
            {"session_id": "s", "thread_id": "s", "call_index": 1, "request_time": 12.0, "response_time": 13.0},
            {"session_id": "s", "thread_id": "s:a", "call_index": 1, "request_time": 3.5, "response_time": 5.0, "is_sidechain": True},
            {"session_id": "s", "thread_id": "s", "call_index": 2, "request_time": 213.0, "response_time": 214.0},
        ]
    )
    out = reuse_labels(df, H)
    f = out.frame
    # main thread: 12 - 2 = 10 s; 213 - 13 = 200 s > H -> censored; last call -> censored, never reused
    assert f.loc[0, "idle_s"] == 10.0 and not f.loc[0, "censored"] and f.loc[0, "label"] == pytest.approx(math.log1p(10.0))
    assert f.loc[2, "idle_s"] == 200.0 and f.loc[2, "censored"] and f.loc[2, "label"] == censored_label(H)
    assert math.isnan(f.loc[4, "idle_s"]) and f.loc[4, "censored"] and f.loc[4, "label"] == pytest.approx(math.log1p(200.0))
    # sidechain: next request 3.5 came before this response at 4.0 -> clamped to 0 and counted
    assert f.loc[1, "idle_s"] == 0.0 and f.loc[1, "label"] == 0.0 and not f.loc[1, "censored"]
    assert f.loc[1, "next_use_time"] == 3.5
    assert f.loc[3, "censored"]
    assert out.n_negative_clamped == 1
    assert out.n_censored == 3
    assert label_to_seconds(f.loc[0, "label"]) == pytest.approx(10.0)


def test_hash_chain_labels():
    df = events(
        [
            {"session_id": "r0", "thread_id": "r0", "call_index": 0, "request_time": 0.0, "response_time": 1.0, "hash_ids": [1, 2, 3]},
            # does not contain block 2 (chain [1, 2]): not a reuse of r0
            {"session_id": "r1", "thread_id": "r1", "call_index": 0, "request_time": 2.0, "response_time": 3.0, "hash_ids": [1, 9]},
            # extends r0's chain except its last (partial) block: reuse of r0 at t=5
            {"session_id": "r2", "thread_id": "r2", "call_index": 0, "request_time": 5.0, "response_time": 6.0, "hash_ids": [1, 2, 7, 8]},
            # extends r1 ([1] + partial) and r2 ([1, 2, 7])
            {"session_id": "r3", "thread_id": "r3", "call_index": 0, "request_time": 50.0, "response_time": 51.0, "hash_ids": [1, 2, 7, 4]},
        ]
    )
    f = reuse_labels(df, H).frame
    np.testing.assert_allclose(f["idle_s"].to_numpy()[:3], [4.0, 2.0, 44.0])
    assert list(f["censored"]) == [False, False, False, True]


def test_horizon_must_be_positive():
    with pytest.raises(ValueError):
        reuse_labels(events([]), 0.0)


def test_remaining_seconds_run_to_the_last_response_of_the_session():
    """Per (source, session): the session's last response minus the row's (0 for the last call);
    sessions of other sources or ids do not mix, and row order does not matter."""
    frame = pd.DataFrame(
        {
            "source": ["a", "a", "a", "b", "a"],
            "session_id": ["s", "s", "s", "s", "t"],
            "response_time": [10.0, 4.0, 25.0, 100.0, 7.0],
        }
    )
    np.testing.assert_array_equal(remaining_seconds(frame), [15.0, 21.0, 0.0, 0.0, 0.0])
