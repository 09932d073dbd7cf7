"""The forecast judge: whether the model's return forecasts beat the no-model ones on the returns seen.

The online guard (:mod:`cachewise.runtime.guard`) compares eviction *orders* by their hit rates.
That is the wrong evidence for the residency controller: once the cache thrashes every order
misses, the two hit rates meet, and the guard never trusts the model -- while what residency
acts on, *when each session is back*, stays observable whatever the cache does. The judge
compares what residency uses, on what it can see: at each return of an idle session (its next
request arrives ``gap`` seconds after its last finish), the forecast the model made at that
finish and a *reference* forecast made at the same finish without the model -- the training
traffic's mean log gap of the call's tool class with the per-class baseline's residual
quantiles (spec ``baselines.per_class_mean``, ``residual_quantiles.per_tool_mean``), the
forecast the replay's ``cachewise_nomodel`` is the empirical form of -- are scored by the
quantile (pinball) loss, a proper scoring rule for quantiles::

    L(F, g) = mean over levels u in (0, 1) of  rho_u(y - q_u),   rho_u(x) = x (u - 1{x < 0})
    y = log1p(min(g, cap)),  q_u = log1p(min(F^-1(u), cap))

over the forecast's interior levels (0.05, ..., 0.95), in log seconds (a 2 s error matters
at a 1 s gap, not at 10 minutes), with gaps and quantiles capped at ``cap`` (the residency
horizon: its cost rule charges nothing beyond it, so what lies past it is not what it acts on).

Decision, with ``d = L(model) - L(reference)`` per scored return, ``m`` its mean over an
exponentially decayed window (half-life ``half_life`` returns) and ``se`` the standard error of
that weighted mean: the judge starts in ``trusted`` (the residency default: trusting, for the
reason and the measurement in :mod:`cachewise.runtime.residency` rule 5) and, once
``min_returns`` returns are scored, *trusts* the model from the first return at which
``m + z se < 0`` (its forecasts are measurably better) and stops trusting it at the first at
which ``m - z se > 0`` (measurably worse); between the two it keeps its verdict (hysteresis: no
flapping on noise).

Guarantee (on the estimates, as the guard's): after its first ``min_returns`` returns, while
the judge trusts the model the model's forecasts did not score measurably worse than the
reference's over the window (``m <= z se`` at each check). Starting trusted, the first
``min_returns`` returns are taken on trust -- from the first scored one: the session view
(:attr:`~cachewise.runtime.sessions.SessionView.forecasts_trusted`) acts on no verdict before a
return has been scored, so a predictor that reports no reference forecast is never trusted. While
it has scored returns and does not trust the model, the controller acts on the reference forecasts
instead (:attr:`~cachewise.runtime.sessions.SessionView.reference_preferred`, residency rule 5,
"Reference forecasts"). What it does not see: a session that never comes back is never scored (no
return to score), so a forecast of "back soon" for sessions that have ended is not charged here
-- the controller's own rule for them is the forecast's expiry (residency rule 1), and the
guard's verdict still decides the eviction order. Returns of one session are treated as
independent (they are not quite: ``se`` is then somewhat optimistic).

Complexity: O(levels) per scored return, O(1) per verdict; memory O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachewise.runtime.sessions import FORECAST_LEVELS, Forecast

_INTERIOR = tuple(range(1, len(FORECAST_LEVELS) - 1))


def quantile_loss(forecast: Forecast, gap: float, cap: float) -> float:
    """``L(forecast, gap)`` of the module doc: mean pinball loss over the interior levels, in log1p seconds."""
    y = math.log1p(min(gap, cap))
    total = 0.0
    for i in _INTERIOR:
        u = FORECAST_LEVELS[i]
        x = y - math.log1p(min(forecast.gaps[i], cap))
        total += x * (u - (1.0 if x < 0 else 0.0))
    return total / len(_INTERIOR)


@dataclass
class ForecastJudge:
    """Scores the model's forecasts against the reference's on realized returns (module doc)."""

    cap: float
    z: float = 2.0
    min_returns: int = 32
    half_life: float = 256.0
    trusted: bool = False
    scored: int = 0
    switches: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.cap < math.inf) or not (0 <= self.z < math.inf) or self.min_returns < 0 or not self.half_life > 0:
            raise ValueError(f"invalid forecast judge settings {self}")
        self._decay = 0.5 ** (1.0 / self.half_life)
        self._w = self._wd = self._w2 = self._w2d = self._w2d2 = 0.0

    def score(self, model: Forecast, reference: Forecast, gap: float) -> None:
        """One return ``gap`` seconds after the finish both forecasts were made at. O(levels)."""
        d = quantile_loss(model, gap, self.cap) - quantile_loss(reference, gap, self.cap)
        k, k2 = self._decay, self._decay * self._decay
        self._w = self._w * k + 1.0
        self._wd = self._wd * k + d
        self._w2 = self._w2 * k2 + 1.0
        self._w2d = self._w2d * k2 + d
        self._w2d2 = self._w2d2 * k2 + d * d
        self.scored += 1
        if self.scored < self.min_returns:
            return
        m, se = self.mean_difference, self.standard_error
        verdict = m + self.z * se < 0.0 if not self.trusted else not (m - self.z * se > 0.0)
        if verdict != self.trusted:
            self.trusted = verdict
            self.switches += 1

    @property
    def mean_difference(self) -> float:
        """``m``: the window's mean of ``L(model) - L(reference)`` (negative: the model forecasts better); 0 before any."""
        return self._wd / self._w if self._w else 0.0

    @property
    def standard_error(self) -> float:
        """``se`` of :attr:`mean_difference`: ``sqrt(Σ w² (d - m)²) / Σ w`` (inf before two returns)."""
        if self.scored < 2:
            return math.inf
        m = self.mean_difference
        var = self._w2d2 - 2.0 * m * self._w2d + m * m * self._w2
        return math.sqrt(max(var, 0.0)) / self._w
