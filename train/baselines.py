"""Baseline predictors the model is measured against (scored by :mod:`cachewise.train.metrics`).

* ``lru``: vLLM's default order; the prefix used most recently is reused soonest.
  It needs no fitting and predicts no gap.
* ``per_tool_mean``: the mean training label per primary command class of the response
  (the Continuum / CacheWise-hint idea: one expected idle time per tool), falling back to
  the overall mean for a class unseen in training.
* ``constant``: the overall mean training label.

The fitted statistics are plain numbers (:class:`BaselineStats`), stored in the exported
spec so ``cachewise score`` can score the baselines on new traces without the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BaselineStats:
    """Training statistics of the fitted baselines (log1p-second labels)."""

    constant: float
    per_class_mean: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaselineStats:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["constant"]), {str(k): float(v) for k, v in data["per_class_mean"].items()})


def fit_baselines(primary_class: pd.Series, label: pd.Series) -> BaselineStats:
    """Fit ``constant`` and ``per_tool_mean`` on training rows."""
    means = label.groupby(primary_class.to_numpy()).mean()
    return BaselineStats(float(label.mean()), {str(k): float(v) for k, v in means.items()})


def predict_constant(stats: BaselineStats, n: int) -> np.ndarray:
    """``constant`` predictions for ``n`` rows."""
    return np.full(n, stats.constant)


def predict_per_tool_mean(stats: BaselineStats, primary_class: pd.Series) -> np.ndarray:
    """``per_tool_mean`` predictions for rows of the given primary classes."""
    return primary_class.map(stats.per_class_mean).fillna(stats.constant).to_numpy(dtype="float64")
