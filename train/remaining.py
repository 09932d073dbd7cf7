"""The remaining-work model: how much longer a session runs after each of its calls.

Trained beside the next-reuse model on the same feature rows, split and LightGBM settings
(``train.lightgbm``, early stopping on the valid tasks), on the target
``log1p(remaining_s)`` (:func:`cachewise.features.label.remaining_seconds`). The residency
controller admits waiting sessions by the KV area it predicts they take (working set x the
predicted remaining seconds, smallest first; :mod:`cachewise.runtime.residency` rule 2).

Outputs: ``remaining.txt`` (LightGBM text, beside ``model.txt``; an MLflow extra file of the
logged model) and the spec section ``remaining`` (:func:`remaining_section`): the file name,
its ``model_sha256`` and ``probe`` (checked at every load, as the reuse model's), the label
transform, ``new_session_label`` (the training mean target at sessions' first finished call:
the forecast of a session with no finished call yet), ``best_iteration`` and held-out
``metrics`` (Spearman rank correlation of the prediction with the target, and of the
least-attained-service heuristic ``-session_calls``, the no-model order it must beat).
All O(rows) besides LightGBM itself.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from cachewise.features.spec import FEATURE_NAMES
from cachewise.scoring.exported import PROBE_KEY, REMAINING_FILE, SHA_KEY, model_sha256, probe_of
from cachewise.train.metrics import spearman

TARGET = "remaining_label"


def with_target(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the :data:`TARGET` column ``log1p(remaining_s)`` added."""
    return frame.assign(**{TARGET: np.log1p(frame["remaining_s"].to_numpy(dtype="float64"))})


def first_calls(frame: pd.DataFrame) -> pd.DataFrame:
    """The first finished call of each session in ``frame``."""
    return frame.loc[frame.groupby(["source", "session_id"], sort=False)["response_time"].idxmin()]


def remaining_section(booster: lgb.Booster, train: pd.DataFrame, test: pd.DataFrame) -> tuple[dict[str, Any], str]:
    """The spec's ``remaining`` section (module doc) and the model text it describes.

    ``train`` needs ``source``, ``session_id``, ``response_time``, ``remaining_s``; ``test`` the
    features too (an empty test part scores nothing and probes a zero row)."""
    cols = list(FEATURE_NAMES)
    text = booster.model_to_string()
    target = np.log1p(test["remaining_s"].to_numpy(dtype="float64"))
    pred = booster.predict(test[cols]) if len(test) else np.empty(0)
    if not np.isfinite(pred).all():
        raise ValueError("the remaining-work model predicts non-finite values")
    probe_row = test[cols].to_numpy()[0] if len(test) else np.zeros(len(cols))
    section = {
        "file": REMAINING_FILE,
        "label_transform": "log1p_seconds",
        SHA_KEY: model_sha256(text),
        PROBE_KEY: probe_of(booster, probe_row),
        "new_session_label": float(np.log1p(first_calls(train)["remaining_s"].to_numpy(dtype="float64")).mean()),
        "best_iteration": booster.current_iteration(),
        "metrics": {
            "spearman": spearman(pred, target),
            "spearman_fewest_calls_first": spearman(-test["session_calls"].to_numpy(dtype="float64"), target),
            "test_rows": int(len(test)),
        },
    }
    return section, text
