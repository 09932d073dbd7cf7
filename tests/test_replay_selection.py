"""Which sessions the replay serves: the held-out split by task and the ``sources`` filter."""

from __future__ import annotations

import pandas as pd
import pytest

from cachewise.replay.selection import select_sessions


def _events() -> pd.DataFrame:
    """Two agent and two chat tasks of one session each."""
    rows = []
    for i, source in enumerate(["claude_code", "claude_code", "blockhash", "blockhash"] * 5):
        rows.append({"source": source, "session_id": f"s{i}", "task_id": f"t{i}"})
    return pd.DataFrame(rows)


def test_sources_limit_what_is_replayed_not_what_policies_fit_on() -> None:
    events = _events()
    chosen = select_sessions(events, "all", None, seed=0, sources=("claude_code",))
    replayed = set(events.loc[events["session_id"].isin(chosen.sessions), "source"])
    assert replayed == {"claude_code"} and len(chosen.sessions) == 10
    assert set(chosen.fit_events["source"]) == {"claude_code", "blockhash"}


def test_held_out_split_and_sources_share_no_task() -> None:
    events = _events()
    chosen = select_sessions(events, "test", None, seed=3, test_fraction=0.5, valid_fraction=0.2, sources=("blockhash",))
    replayed_tasks = set(events.loc[events["session_id"].isin(chosen.sessions), "task_id"])
    assert replayed_tasks and not replayed_tasks & set(chosen.fit_events["task_id"])
    assert set(events.loc[events["session_id"].isin(chosen.sessions), "source"]) == {"blockhash"}


def test_a_source_with_no_session_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"replay.sources \['swe_agent'\].*events have \['blockhash', 'claude_code'\]"):
        select_sessions(_events(), "all", None, seed=0, sources=("swe_agent",))
