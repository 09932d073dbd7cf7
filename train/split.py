"""Train / validation / test split by task, never by row.

All rows of a task (every attempt, every thread) land on one side, so the held-out
metrics measure generalisation to unseen tasks, not to unseen calls of seen sessions.
The test part is ``test_fraction`` of the tasks; the validation part (used only for
early stopping and for the residual quantiles in the spec) is ``valid_fraction`` of
the remaining tasks. Both draws are seeded, so a split is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit


@dataclass(frozen=True)
class TaskSplit:
    """Positional row indices of each part; the three parts partition the rows."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _hold_out(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(groups)-1`` into (kept, held-out) by group."""
    if len(np.unique(groups)) < 2:
        raise ValueError(f"cannot hold out {fraction:.0%} of tasks: only one task present")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return kept, held


def split_by_task(
    task_ids: pd.Series, test_fraction: float, valid_fraction: float, seed: int
) -> TaskSplit:
    """Split rows by ``task_ids`` into train / valid / test (see module doc)."""
    groups = task_ids.to_numpy()
    rest, test = _hold_out(groups, test_fraction, seed)
    inner_train, inner_valid = _hold_out(groups[rest], valid_fraction, seed + 1)
    return TaskSplit(train=np.sort(rest[inner_train]), valid=np.sort(rest[inner_valid]), test=np.sort(test))
