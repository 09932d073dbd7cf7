"""Replay policies that decide which sessions are served, not only what is evicted.

``capN``               learned eviction (:class:`~cachewise.runtime.learned.LearnedPredictor`)
                       and a fixed admission cap: at most N sessions are served at once, the
                       rest wait (the driver's session limit becomes ``min(concurrency, N)``;
                       JCT still counts from submission). ``--admission-caps 4,8,12`` adds
                       ``cap4,cap8,cap12``.
``cachewise``          learned eviction + the residency controller
                       (:mod:`cachewise.runtime.residency`) in vLLM's scheduler
                       (:class:`~cachewise.runtime.scheduler.ResidencyScheduler`), forecasts
                       from the model's residual quantiles.
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

Every residency policy reports each finished call's (session, thread, forecast) to the
scheduler's :class:`~cachewise.runtime.sessions.SessionView` through the predictor's
``sessions`` attribute, as the served runtime's learned predictor does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.policy import ReusePrediction, ReusePredictor
from cachewise.runtime.replay.costmodel import CostModel
from cachewise.runtime.replay.policies import NO_TOOL, Heuristic, IdleStats, PolicyContext, _CallFacts, ended
from cachewise.runtime.residency import ResidencyController, prefill_seconds
from cachewise.runtime.scheduler import ResidencyScheduler
from cachewise.runtime.sessions import Forecast, SessionState, SessionView

RESIDENCY_POLICIES = ("cachewise", "cachewise_nomodel", "continuum")
_CAP = re.compile(r"^cap([1-9][0-9]*)$")


def is_residency_policy(name: str) -> bool:
    """Whether ``name`` is one of this module's policies (``capN`` included)."""
    return name in RESIDENCY_POLICIES or _CAP.match(name) is not None


def cap_of(name: str) -> int | None:
    """N of a ``capN`` policy name, else None."""
    m = _CAP.match(name)
    return int(m.group(1)) if m else None


def cap_policies(caps: str) -> tuple[str, ...]:
    """``"4,8,12"`` -> ``("cap4", "cap8", "cap12")``; raises ValueError on a non-positive or non-integer cap."""
    out = []
    for part in caps.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--admission-caps: {part!r} is not a positive integer")
        out.append(f"cap{int(part)}")
    return tuple(out)


@dataclass
class ResidencyPolicy:
    """What a residency policy changes in a run: predictor, scheduler class, session limit."""

    name: str
    predictor: ReusePredictor | None
    scheduler_cls: type[Scheduler] = Scheduler
    max_sessions_served: int | None = None


def replay_settings(cost: CostModel, token_scale: int, base: ResidencySettings | None = None) -> ResidencySettings:
    """Residency settings whose prefill cost model is ``cost`` in replay tokens (``token_scale``
    trace tokens each): ``a_tok`` scales by ``s``, ``a_ctx`` by ``s²``."""
    s = token_scale
    return replace(base or ResidencySettings(), prefill_a0=cost.a0, prefill_a_tok=cost.a_tok * s, prefill_a_ctx=cost.a_ctx * s * s)


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
        def plan(self, view: SessionView, now: float, running: int) -> Any:
            for state in view:
                if state.resident and not state.live:
                    pinned_at, ttl = pins.pins.get(state.key, (-math.inf, 0.0))
                    if state.idle_since is None or now >= max(pinned_at, state.idle_since) + ttl:
                        view.set_residency(state.key, False)
            return super().plan(view, now, running)

        def _candidates(self, idle: list[tuple[SessionState, int]], now: float, running: int) -> list:
            return []  # pins are released by their TTL only

    return ContinuumController


def build_residency_policy(
    name: str,
    ctx: PolicyContext,
    clock: Callable[[], float],
    settings: ResidencySettings,
    capacity_tokens: Callable[[], int],
) -> ResidencyPolicy:
    """A fresh residency policy ``name`` for one run (see module doc).

    ``settings``: the controller's settings with the run's cost model (:func:`replay_settings`);
    ``capacity_tokens``: the run's KV capacity in tokens (read once the engine is built).
    Raises ValueError for an unknown name, or a learned policy without a model.
    """
    cap = cap_of(name)
    if name in ("cachewise", "cachewise_nomodel") or cap is not None:
        if name != "cachewise_nomodel" and ctx.learned is None:
            raise ValueError(f"policy {name!r} needs a model: pass --model DIR_OR_URI (or replay.model)")
    facts = _CallFacts(ctx.workload)
    if cap is not None:
        return ResidencyPolicy(name, ctx.learned(clock), max_sessions_served=cap)  # type: ignore[misc]
    if name == "cachewise":
        return ResidencyPolicy(name, ctx.learned(clock), _scheduler(name, settings, ResidencyController))  # type: ignore[misc]
    if name == "cachewise_nomodel":
        return ResidencyPolicy(name, NoModelPredictor(facts, ctx.stats), _scheduler(name, settings, ResidencyController))
    if name == "continuum":
        pins = ContinuumPins()
        predictor = ContinuumPredictor(facts, ctx.stats, settings, capacity_tokens, pins)
        return ResidencyPolicy(name, predictor, _scheduler(name, settings, continuum_controller(pins)))
    raise ValueError(f"unknown residency policy {name!r}; known: {', '.join(RESIDENCY_POLICIES)}, capN")


def jct_from_submission(session_times: dict[int, tuple[float, float]], submitted: dict[int, float]) -> dict[str, float]:
    """Job completion time (session end − its submission) mean and percentiles, in seconds."""
    jct = np.array([end - submitted.get(i, 0.0) for i, (_, end) in session_times.items()], dtype=float)
    if not jct.size:
        return {k: float("nan") for k in ("jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s")}
    return {
        "jct_mean_s": float(jct.mean()),
        "jct_p50_s": float(np.percentile(jct, 50)),
        "jct_p90_s": float(np.percentile(jct, 90)),
        "jct_p99_s": float(np.percentile(jct, 99)),
    }
