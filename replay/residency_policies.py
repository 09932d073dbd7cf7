"""Replay policies that decide which sessions are served, not only what is evicted.

``capN``               learned eviction (:class:`~cachewise.runtime.learned.LearnedPredictor`)
                       and a fixed admission cap: at most N sessions are served at once, the
                       rest wait (the driver's session limit becomes ``min(concurrency, N)``;
                       JCT still counts from submission). ``--admission-caps 4,8,12`` adds
                       ``cap4,cap8,cap12``.
``cachewise``          learned eviction + the residency controller
                       (:mod:`cachewise.runtime.residency`) in vLLM's scheduler
                       (:class:`~cachewise.runtime.scheduler.ResidencyScheduler`), forecasts
                       from the model's residual quantiles; guarded as ``learned``, and the
                       controller passes through (vLLM's scheduling) while the guard serves
                       vLLM's order (:mod:`cachewise.runtime.residency` rule 5).
``cachewise_nomodel``  the same controller and scheduler with no model: eviction by the
                       per-tool median idle time (``heuristic``), forecasts = the per-tool
                       empirical gap distribution of the fitting sessions.
``continuum``          Continuum / CacheTTL (Li et al., arXiv 2511.02230): "for requests that
                       generate tool calls, CacheTTL selectively pins the KV cache in GPU
                       memory with a time-to-live value determined by the reload cost and
                       potential queueing delay induced by eviction. When the TTL expires,
                       the KV cache can be automatically evicted ... combined with
                       program-level first-come-first-serve". Re-implemented here as: a
                       request that ends in a tool call of class ``k`` with a prefix of ``W``
                       tokens is pinned for ``TTL = argmax_τ F_k(τ) · reload(W) − τ · W / C``
                       over ``τ ∈ {0} ∪ quantiles of k's tool durations`` (``F_k`` their CDF,
                       ``reload`` the measured prefill time of ``W`` tokens, ``W / C`` the share
                       of the KV cache the pin holds, i.e. the queueing delay it imposes per
                       second); a request with no tool call is not pinned. Pinned prefixes
                       rank last in eviction (``reuse_at = now``, expire at ``now + TTL``);
                       pinned sessions count as resident in admission (program-level FCFS,
                       admitted when the resident working sets fit, as the controller above)
                       and are released only when their TTL expires (never demoted early).
                       Our reading of the paper's rule: its queueing-delay term is the
                       ``τ · W / C`` holding cost; no CPU offloading (reload = recompute).

The three named policies are registered in the replay's policy
:data:`~cachewise.replay.policies.REGISTRY` when this module is imported; ``capN``
when named (:func:`register_caps`; :func:`cap_policies` for ``--admission-caps``). They
report through the replay's usual metrics (JCT from submission included).

Every residency policy reports each finished call's (session, thread, forecast) to the
engine's :class:`~cachewise.runtime.sessions.SessionView` through the predictor's
``sessions`` attribute (set by the plugin's wiring), as the served runtime's learned predictor does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.policy import ReusePrediction
from cachewise.replay.costmodel import CostModel
from cachewise.replay.policies import (
    NO_TOOL,
    REGISTRY,
    Heuristic,
    IdleStats,
    PolicyContext,
    PolicySpec,
    Serving,
    _CallFacts,
    ended,
    learned_predictor,
    register_policy,
)
from cachewise.runtime.residency import ResidencyController, prefill_seconds
from cachewise.runtime.scheduler import ResidencyScheduler
from cachewise.runtime.sessions import Forecast, SessionState, SessionView

_CAP = re.compile(r"^cap([1-9][0-9]*)$")


def cap_of(name: str) -> int | None:
    """N of a ``capN`` policy name, else None."""
    m = _CAP.match(name)
    return int(m.group(1)) if m else None


def cap_policies(caps: str) -> tuple[str, ...]:
    """``"4,8,12"`` -> ``("cap4", "cap8", "cap12")``, registered (:func:`register_caps`);
    raises ValueError on a non-positive or non-integer cap."""
    out = []
    for part in caps.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--admission-caps: {part!r} is not a positive integer")
        out.append(f"cap{int(part)}")
    register_caps(out)
    return tuple(out)


def register_caps(names: Iterable[str]) -> None:
    """Register each ``capN`` among ``names`` in the replay's policy registry (others ignored)."""
    for name in names:
        cap = cap_of(name)
        if cap is not None and name not in REGISTRY:
            register_policy(name, PolicySpec(_capped(cap), guarded=True, needs_model=True))


def replay_settings(cost: CostModel, token_scale: int, base: ResidencySettings | None = None) -> ResidencySettings:
    """Residency settings whose prefill and decode cost models are ``cost`` in replay tokens
    (``token_scale`` trace tokens each): ``a_tok`` and ``b_ctx`` scale by ``s``, ``a_ctx`` by ``s²``."""
    s = token_scale
    return replace(
        base or ResidencySettings(),
        prefill_a0=cost.a0, prefill_a_tok=cost.a_tok * s, prefill_a_ctx=cost.a_ctx * s * s,
        decode_b0=cost.b0, decode_b_seq=cost.b_seq, decode_b_ctx=cost.b_ctx * s,
    )  # fmt: skip


def _scheduler(name: str, settings: ResidencySettings, controller: type[ResidencyController]) -> type[Scheduler]:
    return type(f"Replay{name.title()}Scheduler", (ResidencyScheduler,), {"residency_settings": settings, "controller_cls": controller})


class _Reporting:
    """Mixin for replay predictors: report (session, thread, forecast) of each finished call."""

    sessions: SessionView | None = None

    def report(self, request: Request, forecast: Forecast | None) -> None:
        if self.sessions is not None and request.session_id:
            hint = (request.sampling_params.extra_args or {}).get("cachewise", {})
            self.sessions.on_forecast(request.request_id, request.session_id, str(hint.get("thread_id", "")), forecast)


def _class_forecasts(stats: IdleStats) -> dict[str, Forecast]:
    return {k: Forecast.from_samples(v) for k, v in stats.by_class.items() if len(v)}


class NoModelPredictor(_Reporting):
    """``heuristic`` eviction; forecasts from the per-tool empirical gap distribution."""

    def __init__(self, facts: _CallFacts, stats: IdleStats) -> None:
        self._evict = Heuristic(facts, stats)
        self._facts = facts
        self._forecasts = _class_forecasts(stats)
        self._overall = Forecast.from_samples(stats.overall)

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        rid = request.request_id
        klass = NO_TOOL if self._facts.ended.get(rid, False) else self._facts.klass.get(rid)
        if klass is not None:
            self.report(request, self._forecasts.get(klass, self._overall if klass != NO_TOOL else Forecast.never()))
        return self._evict.on_request_finished(request, now)


@dataclass
class ContinuumPins:
    """TTL pins per session: ``session -> (pinned at, TTL seconds)``."""

    pins: dict[str, tuple[float, float]] = field(default_factory=dict)


class ContinuumPredictor(_Reporting):
    """The Continuum TTL rule (module doc) as the eviction prediction, and its pins."""

    def __init__(
        self, facts: _CallFacts, stats: IdleStats, settings: ResidencySettings, capacity_tokens: Callable[[], int], pins: ContinuumPins
    ) -> None:
        self._facts = facts
        self._gaps = stats.by_class
        self._overall = stats.overall
        self._settings = settings
        self._capacity_tokens = capacity_tokens
        self.pins = pins

    def ttl(self, klass: str, prefix_tokens: int) -> float:
        """``argmax_τ F(τ) reload(W) − τ W / C`` over τ in {0} and the class's duration quantiles."""
        gaps = self._gaps.get(klass, self._overall)
        reload = prefill_seconds(self._settings, prefix_tokens)
        share = prefix_tokens / max(self._capacity_tokens(), 1)
        taus = np.concatenate([[0.0], np.quantile(gaps, np.linspace(0.05, 1.0, 20))])
        cdf = np.searchsorted(gaps, taus, side="right") / len(gaps)
        value = cdf * reload - taus * share
        return float(taus[int(np.argmax(value))])

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        rid = request.request_id
        if rid not in self._facts.klass:
            return None
        self.report(request, None)
        if self._facts.ended[rid]:
            self.pins.pins.pop(request.session_id or "", None)
            return ended(now)
        ttl = self.ttl(self._facts.klass[rid], request.num_tokens)
        if request.session_id:
            self.pins.pins[request.session_id] = (now, ttl)
        return ReusePrediction(now, now + ttl)


def continuum_controller(pins: ContinuumPins) -> type[ResidencyController]:
    """A controller whose resident idle sessions are exactly the pinned ones (TTL not expired)."""

    class ContinuumController(ResidencyController):
        def plan(
            self, view: SessionView, now: float, running: int, loading: Collection[str] = (), cached: Mapping[str, float] | None = None
        ) -> Any:
            for state in view:
                if state.resident and not state.live:
                    pinned_at, ttl = pins.pins.get(state.key, (-math.inf, 0.0))
                    if state.idle_since is None or now >= max(pinned_at, state.idle_since) + ttl:
                        view.set_residency(state.key, False)
            return super().plan(view, now, running, loading, cached)

        def _candidates(self, idle: list[tuple[SessionState, float]], now: float, served: int, incoming: float) -> list:
            return []  # pins are released by their TTL only

    return ContinuumController


def _settings(ctx: PolicyContext) -> ResidencySettings:
    return ctx.residency if ctx.residency is not None else ResidencySettings()


def _capped(cap: int) -> Callable[[PolicyContext, Callable[[], float]], Serving]:
    def build(ctx: PolicyContext, clock: Callable[[], float]) -> Serving:
        return Serving(learned_predictor(ctx, clock), max_sessions=cap)

    return build


def _cachewise(ctx: PolicyContext, clock: Callable[[], float]) -> Serving:
    return Serving(learned_predictor(ctx, clock), _scheduler("cachewise", _settings(ctx), ResidencyController))


def _cachewise_nomodel(ctx: PolicyContext, clock: Callable[[], float]) -> Serving:
    predictor = NoModelPredictor(_CallFacts(ctx.workload), ctx.stats)
    return Serving(predictor, _scheduler("cachewise_nomodel", _settings(ctx), ResidencyController))


def _continuum(ctx: PolicyContext, clock: Callable[[], float]) -> Serving:
    # the published admission order, pinning from the start (no standing aside: CacheWise's rule)
    pins, settings = ContinuumPins(), replace(_settings(ctx), readmit_cached=0.0, thrash_share=None)
    predictor = ContinuumPredictor(_CallFacts(ctx.workload), ctx.stats, settings, lambda: ctx.capacity_tokens, pins)
    return Serving(predictor, _scheduler("continuum", settings, continuum_controller(pins)))


register_policy("cachewise", PolicySpec(_cachewise, guarded=True, needs_model=True))
register_policy("cachewise_nomodel", PolicySpec(_cachewise_nomodel, hand_written=True))
register_policy("continuum", PolicySpec(_continuum, hand_written=True))
