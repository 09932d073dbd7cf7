"""Let a prefix's predicted idle time evolve while it stays idle.

A predictor gives, at finish time, a log idle time ``mu = log1p(predicted seconds)``. Its
errors ``r = label - mu`` on held-out validation rows have an empirical distribution,
stored as quantiles at the levels :data:`LEVELS`. When a prefix has already been idle
``e`` seconds, its gap ``g`` is known to exceed ``e``; the conditioned estimate is the
median of ``g`` given ``g > e``:

    F = P(r <= log1p(e) - mu)        (from the residual quantiles, linear interpolation)
    g(e) = expm1(mu + Q((1 + F) / 2))

At ``e = 0`` this is ``expm1(mu + median residual)``. A prefix idle past the whole residual
range (``F = 1``) gets ``g(e) = e + overdue_remaining(e)``, the one overdue rule of
:mod:`cachewise.scoring.overdue` (idle as long again, at least 1 s more), so an overdue
prefix sinks steadily in priority instead of keeping a stale, already passed next-use
time. ``g(e) >= e`` always.

The evictor ranks an idle prefix by its predicted next-use time ``last_use + g(e)``.
:meth:`IdleConditioner.expected_gap` is vectorised (metrics); :meth:`expected_gap_one` is
the scalar form for the runtime (bisect over the quantiles, no numpy).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from cachewise.scoring.overdue import overdue_remaining

N_LEVELS = 101
LEVELS = np.linspace(0.0, 1.0, N_LEVELS)
_LEVELS_LIST = LEVELS.tolist()


@dataclass(frozen=True)
class IdleConditioner:
    """Residual quantiles (log scale) of one predictor at :data:`LEVELS`; non-decreasing."""

    residual_quantiles: tuple[float, ...]

    def __post_init__(self) -> None:
        q = self.residual_quantiles
        if len(q) != N_LEVELS or any(b < a for a, b in zip(q, q[1:])):
            raise ValueError(f"need {N_LEVELS} non-decreasing residual quantiles, got {len(q)}")

    @classmethod
    def from_residuals(cls, residuals: np.ndarray) -> IdleConditioner:
        """Fit from validation residuals ``label - prediction``."""
        residuals = np.asarray(residuals, dtype="float64")
        if residuals.size == 0:
            raise ValueError("no residuals to fit the idle conditioner on")
        return cls(tuple(float(x) for x in np.quantile(residuals, LEVELS)))

    def to_list(self) -> list[float]:
        """JSON-ready form."""
        return list(self.residual_quantiles)

    def expected_gap(self, pred_label: np.ndarray, elapsed_s: np.ndarray) -> np.ndarray:
        """Conditioned idle seconds ``g(e)`` (module doc) for arrays of predictions and elapsed times."""
        q = np.asarray(self.residual_quantiles)
        mu = np.asarray(pred_label, dtype="float64")
        e = np.maximum(np.asarray(elapsed_s, dtype="float64"), 0.0)
        f = np.interp(np.log1p(e) - mu, q, LEVELS, left=0.0, right=1.0)
        g = np.array(np.maximum(np.expm1(mu + np.interp((1.0 + f) / 2.0, LEVELS, q)), e))
        tail = f >= 1.0
        if tail.any():
            e = np.broadcast_to(e, g.shape)
            g[tail] = [x + overdue_remaining(x) for x in e[tail].tolist()]
        return g

    def expected_gap_one(self, pred_label: float, elapsed_s: float) -> float:
        """Scalar :meth:`expected_gap` (same result up to float rounding)."""
        q = self.residual_quantiles
        e = elapsed_s if elapsed_s > 0.0 else 0.0
        x = math.log1p(e) - pred_label
        f = _interp(x, q, _LEVELS_LIST)
        if f >= 1.0:
            return e + overdue_remaining(e)
        g = math.expm1(pred_label + _interp((1.0 + f) / 2.0, _LEVELS_LIST, q))
        return g if g > e else e


def _interp(x: float, xs: tuple[float, ...] | list[float], ys: tuple[float, ...] | list[float]) -> float:
    """``np.interp(x, xs, ys)`` for non-decreasing ``xs`` (clamped at both ends)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
