"""Which sessions the replay serves, and which ones the hand-written policies are fitted on.

``split="test"``: the tasks the training stage held out (the same seeded split by task as
:mod:`cachewise.train.split`, with the ``train`` section's ``seed``, ``test_fraction`` and
``valid_fraction``), so the learned model never saw a replayed session; the hand-written
policies are fitted on the other sessions. ``split="all"``: every session is replayed and
the hand-written policies are fitted on all of them (in-sample, which favours them).

``sources`` (the events' ``source`` values, e.g. ``claude_code``; None = every source) limits
which sessions are replayed, not what the policies are fitted on: a model trained on agent
transcripts and chat sessions together is replayed on the agent sessions, and the
hand-written policies are fitted on the same training sessions the model saw.

At most ``max_sessions`` sessions are replayed, drawn at random (seeded) so that agents of
different models mix; their replay order is that random order.

Invariant: with ``split="test"`` the replayed and fitting sessions share no task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cachewise.train.split import split_by_task


@dataclass(frozen=True)
class Selection:
    """Replayed session ids in replay order, and the events the policies are fitted on."""

    sessions: list[str]
    fit_events: pd.DataFrame


def select_sessions(
    events: pd.DataFrame,
    split: str,
    max_sessions: int | None,
    seed: int,
    test_fraction: float = 0.25,
    valid_fraction: float = 0.2,
    split_seed: int = 42,
    sources: tuple[str, ...] | None = None,
) -> Selection:
    """Choose the replayed sessions (module doc). Raises ``ValueError`` on a bad ``split`` or when
    ``sources`` leaves no session to replay."""
    if split == "test":
        parts = split_by_task(events["task_id"].reset_index(drop=True), test_fraction, valid_fraction, split_seed)
        test_rows = np.zeros(len(events), dtype=bool)
        test_rows[parts.test] = True
        replay_events, fit_events = events[test_rows], events[~test_rows]
    elif split == "all":
        replay_events, fit_events = events, events
    else:
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    if sources is not None:
        replay_events = replay_events[replay_events["source"].isin(sources)]
        if replay_events.empty:
            found = sorted(events["source"].unique())
            raise ValueError(f"replay.sources {list(sources)}: no {split} session of these sources (events have {found})")
    sessions = sorted(replay_events["session_id"].unique())
    order = np.random.default_rng(seed).permutation(len(sessions))
    chosen = [sessions[i] for i in order]
    if max_sessions is not None:
        chosen = chosen[:max_sessions]
    return Selection(chosen, fit_events)
