"""Test doubles shared by the residency tests on vLLM's real scheduler: a fixed-forecast predictor
and a pool configuration without the guard (the controller acts from the first step)."""

from __future__ import annotations

from cachewise.runtime.config import GuardConfig, PoolConfig
from cachewise.runtime.policy import ReusePrediction
from cachewise.runtime.sessions import Forecast, SessionView

NEAR = Forecast.from_samples([1.0, 2.0])
FAR = Forecast.from_samples([5000.0, 6000.0])
UNGUARDED = PoolConfig(guard=GuardConfig(enabled=False))


class Forecaster:
    """A predictor that reports a fixed forecast per session (by the request's session id)."""

    def __init__(self, forecasts: dict[str, Forecast], default: Forecast = NEAR) -> None:
        self.forecasts = forecasts
        self.default = default
        self.sessions: SessionView | None = None

    def on_request_finished(self, request, now: float) -> ReusePrediction:
        forecast = self.forecasts.get(request.session_id or "", self.default)
        if self.sessions is not None:
            self.sessions.on_forecast(request.request_id, request.session_id, request.session_id, forecast)
        return ReusePrediction(now + forecast.median, now + 1e6)
