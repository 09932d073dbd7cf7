"""The ``spec.json`` that travels with every trained model: all the runtime needs besides trees.

Fields (JSON object):

* feature set (:func:`cachewise.features.spec.spec_fields`): ``feature_set_version``,
  ``feature_names`` (model column order), ``categorical`` (feature -> vocabulary),
  ``vocabularies`` (value -> integer code), ``label_transform`` (``log1p_seconds``);
* ``horizon_s``: reuse horizon of the labels; a censored label is ``log1p(2 * horizon_s)``;
* ``training_data``: ``events_sha256`` (fingerprint of the events file), row / task counts,
  ``test_tasks`` (the held-out task ids: ``cachewise score --held-out`` scores only those);
* ``idle_quantiles``: per primary command class (``<none>`` = no tool call) and ``__all__``:
  ``n``, ``censored_fraction`` and ``p50`` / ``p90`` / ``p99`` of the observed idle seconds of
  the training rows, a censored row counted at ``2 * horizon_s``;
* ``residual_quantiles``: for ``model``, ``per_tool_mean`` and ``constant``, the 101 quantiles
  (levels 0, 0.01, ..., 1) of validation residuals ``label - prediction``: the input of
  :class:`cachewise.scoring.idle.IdleConditioner`;
* ``baselines``: ``constant`` and ``per_class_mean`` (:class:`cachewise.train.baselines.BaselineStats`);
* ``metrics``: held-out metrics of the model and baselines (:mod:`cachewise.train.evaluate`);
* ``lightgbm``: the training parameters and ``best_iteration``;
* ``model_sha256`` and ``probe`` (``features``, ``prediction``): the model text's hash and one
  row with its prediction, checked at every load (:mod:`cachewise.scoring.exported`);
* ``remaining``: the remaining-work model beside it (``remaining.txt``: its own hash, probe,
  new-session label and held-out metrics; :mod:`cachewise.train.remaining`).

Written as strict JSON (non-finite numbers as ``null``), atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cachewise.atomic_write import write_text
from cachewise.features.spec import spec_fields
from cachewise.train.baselines import BaselineStats
from cachewise.scoring.idle import IdleConditioner

ALL_CLASSES = "__all__"
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _quantile_row(idle: np.ndarray, censored: np.ndarray) -> dict[str, float]:
    row = {"n": int(len(idle)), "censored_fraction": float(censored.mean())}
    row.update({name: float(np.quantile(idle, q)) for name, q in QUANTILES.items()})
    return row


def idle_quantiles(primary_class: pd.Series, idle_s: pd.Series, censored: pd.Series, horizon_s: float) -> dict:
    """``idle_quantiles`` of the spec from training rows (module doc)."""
    cens = censored.to_numpy(dtype=bool)
    idle = np.where(cens, 2.0 * horizon_s, idle_s.to_numpy(dtype="float64"))
    classes = primary_class.to_numpy()
    table = {str(c): _quantile_row(idle[classes == c], cens[classes == c]) for c in sorted(set(classes))}
    table[ALL_CLASSES] = _quantile_row(idle, cens)
    return table


def build_spec(
    *,
    horizon_s: float,
    training_data: dict,
    idle_table: dict,
    conditioners: dict[str, IdleConditioner],
    baselines: BaselineStats,
    metrics: dict,
    lightgbm: dict,
) -> dict:
    """Assemble the spec (module doc)."""
    return {
        **spec_fields(),
        "horizon_s": float(horizon_s),
        "training_data": training_data,
        "idle_quantiles": idle_table,
        "residual_quantiles": {name: c.to_list() for name, c in conditioners.items()},
        "baselines": baselines.to_dict(),
        "metrics": metrics,
        "lightgbm": lightgbm,
    }


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON (creating the folder), atomically; NaN/inf become ``null``."""
    write_text(path, json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
