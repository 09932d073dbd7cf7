"""The learned reuse predictor: the exported LightGBM scorer inside vLLM.

Per finished request: build its :class:`~cachewise.features.record.FinishedCall`
(:mod:`cachewise.runtime.request_calls`), turn it into the feature vector with the same
:class:`~cachewise.features.online.FeatureState` training used, and ask the exported model
(:func:`cachewise.scoring.exported.load_exported`) for ``mu = log1p(idle seconds)``. With the
model's validation residual quantiles ``Q`` (spec ``residual_quantiles.model``, see
:mod:`cachewise.scoring.idle`) the prediction is::

    reuse_at  = now + expm1(mu + Q(0.5))        # the conditioned gap at zero idle time
    expire_at = now + expm1(mu + Q(EXPIRY_LEVEL))

i.e. the prefix is expected back after the median gap of its kind, and counts as ended
once it has been idle longer than ``EXPIRY_LEVEL`` of such prefixes ever were. Between
the two the pool re-keys an overdue prefix to "idle as long again" (the tail rule of
:mod:`cachewise.scoring.idle`; :mod:`cachewise.runtime.eviction_order`), and caps
``expire_at`` at ``now + max_idle_s``. A NaN / inf model output raises
:class:`~cachewise.runtime.policy.InvalidPrediction`, which the pool counts as an invalid
score (no prediction for that request). Each prediction is also reported to the engine's
session view (``sessions``, the call builder's: attached by the plugin's wiring) as the
call's (session, thread) and a :class:`~cachewise.runtime.sessions.Forecast` of the whole
gap distribution, with the *reference* forecast of the same call without the model (its tool
class's training mean and the per-class baseline's residual quantiles,
:meth:`~cachewise.scoring.exported.ExportedModel.reference_label`), which the forecast judge
(:mod:`cachewise.runtime.forecast_judge`) scores it against, and, where the export has a
remaining-work model (:attr:`~cachewise.scoring.exported.ExportedModel.remaining`), its label
for the call's session (one more single-row prediction per finished request).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vllm.v1.request import Request

from cachewise.features.online import FeatureState
from cachewise.features.record import FinishedCall
from cachewise.runtime.policy import InvalidPrediction, ReusePrediction
from cachewise.runtime.request_calls import CallBuilder
from cachewise.runtime.sessions import Forecast, SessionView
from cachewise.scoring.idle import LEVELS

EXPIRY_LEVEL = 0.99
_EXPIRY_INDEX = int(round(EXPIRY_LEVEL * (len(LEVELS) - 1)))


class LearnedPredictor:
    """:class:`~cachewise.runtime.policy.ReusePredictor` backed by an exported model.

    ``model`` is a :class:`cachewise.scoring.exported.ExportedModel` (``predict_one``,
    ``expected_gap_one``, ``conditioner``); ``calls`` builds the calls; ``features`` holds
    the per-thread history (one per engine); ``on_call`` (optional, e.g.
    :meth:`cachewise.runtime.serving_log.ServingLog.record`) sees every built call first.
    """

    def __init__(
        self,
        model: Any,
        calls: CallBuilder,
        features: FeatureState | None = None,
        on_call: Callable[[FinishedCall], None] | None = None,
    ) -> None:
        self.model = model
        self._calls = calls
        self._features = features or FeatureState()
        self._on_call = on_call
        self._expiry_residual = float(model.conditioner.residual_quantiles[_EXPIRY_INDEX])

    @property
    def calls(self) -> CallBuilder:
        return self._calls

    @property
    def certified_families(self) -> frozenset[str]:
        """The families the model's traffic certificate names (the guard's certified start; empty: none)."""
        return getattr(self.model, "certified_families", frozenset())

    @property
    def sessions(self) -> SessionView:
        """The session view calls are named in and forecasts reported to (the call builder's)."""
        return self._calls.sessions

    @sessions.setter
    def sessions(self, view: SessionView) -> None:
        self._calls.sessions = view

    def _reference(self, vec: Any) -> Forecast | None:
        """The no-model forecast of the same call for the forecast judge (None: no judge reads it -- no
        residency scheduler, or ``residency.judge`` off -- or the model has no baselines)."""
        reference = getattr(self.model, "reference", None)
        if reference is None or self._calls.sessions.judge is None:
            return None
        mu = self.model.reference_label(vec)
        return None if mu is None else Forecast.from_log_model(mu, reference[2].residual_quantiles)

    def _remaining(self, vec: Any) -> tuple[float, float] | None:
        """The remaining-work label of the call's session and the model's label of a new session
        (None: the export has no remaining-work model, or it answered a non-finite number)."""
        model = getattr(self.model, "remaining", None)
        if model is None:
            return None
        label = float(model.predict_one(vec))
        return (label, model.new_session_label) if math.isfinite(label) else None

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction:
        call = self._calls.build(request, now)
        if self._on_call is not None:
            self._on_call(call)
        vec = self._features.observe(call)
        label = float(self.model.predict_one(vec))
        if not math.isfinite(label):
            raise InvalidPrediction(f"model returned {label} for thread {call.thread_key}")
        forecast = Forecast.from_log_model(label, self.model.conditioner.residual_quantiles)
        self._calls.sessions.on_forecast(
            request.request_id, call.session_key, call.thread_key, forecast, self._reference(vec), self._remaining(vec)
        )
        gap = self.model.expected_gap_one(label, 0.0)
        horizon = math.expm1(label + self._expiry_residual)
        return ReusePrediction(now + gap, now + max(horizon, gap))
