"""The eviction policies the replay compares, as :class:`~cachewise.runtime.policy.ReusePredictor` s.

Every policy but ``lru`` and ``infinite`` runs inside vLLM through the runtime's
:class:`~cachewise.runtime.block_pool.ScoredBlockPool` (installed with
the :class:`~cachewise.runtime.hooks.PolicyBinding` the engine is built with); a prediction ``(reuse_at, expire_at)`` is made
once per finished request, on the replay's simulated clock. "Ended" below means
``(inf, now)``: never reused, evicted before anything else.

``lru``            vLLM's own ``BlockPool`` (its free-queue order), no predictor.
``lru_arrival``    The runtime's pool with no opinion on any request (so vLLM's LRU order),
                   plus its arrival rule: the cached prefix of a request waiting in the queue
                   is evicted last. The honest baseline for what predictions add.
``per_tool_mean``  CacheWise-hint style: ``reuse_at = now + mean idle time`` of the
                   response's primary command class (class of its first tool call) in the
                   fitting sessions; a response with no tool call ended its session.
``ttl``            Continuum-style pinning: during a tool call the prefix is kept
                   (``reuse_at = now``) until ``now + TTL``, TTL = the ``ttl_quantile`` of the
                   class's idle times; then it expires and goes first.
``heuristic``      Ended sessions first; then the prefix whose predicted return
                   ``now + median idle(class)`` is latest; a prefix idle past the class's
                   p99 counts as ended (``expire_at = now + p99``).
``recorded_gap``   Hand-written with knowledge of the trace: ``reuse_at = now + recorded gap``
                   to the thread's next call (the recorded tool time; in the closed loop the
                   call may come later, e.g. after a sub-agent), a thread's last call ended.
                   Not a bound: other policies can beat it.
``learned``        The exported LightGBM scorer through the runtime's
                   :class:`~cachewise.runtime.learned.LearnedPredictor`; it sees each call as
                   the served runtime would, through the client hint
                   (:mod:`cachewise.runtime.request_calls`) the replay attaches to every request
                   (session, thread, sub-agent flag, tool calls); with the runtime's online
                   guard (:mod:`cachewise.runtime.guard`), as served.
``learned_unguarded``  The same scorer with the guard off (every other policy runs unguarded).
``learned_nohints`` The same model given only what a server sees without client cooperation:
                   no session / thread / sub-agent hint (threads inferred from prefix chains,
                   sessions = threads), tool calls as a parser finds them in the response text;
                   guarded as ``learned``.
``infinite``       vLLM's ``BlockPool`` with room for every block of the workload (no eviction).

Both learned variants see each call's *recorded* model name and token counts (the replay's
token ids are scaled stand-ins, ``token_scale`` trace tokens each): the feature values are
those training computed for the same call, except the clock-derived ones, which are on the
replay clock as a served engine's would be on its own.

The bound for harmful evictions is not a policy: Belady's MIN over each run's own access
sequence (:mod:`cachewise.replay.belady`) is computed for every run.

Policies are looked up by name in :data:`REGISTRY`; :func:`register_policy` adds one.

Idle times ("gaps") are seconds from a response to the next request of its thread, as the
training labels define them (:func:`cachewise.features.label.reuse_labels`), fitted on the
sessions *not* replayed when a split is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from vllm.v1.request import Request

from cachewise.features.label import reuse_labels
from cachewise.features.record import FinishedCall
from cachewise.runtime.policy import ReusePrediction, ReusePredictor
from cachewise.replay.workload import Workload
from cachewise.runtime.request_calls import CallBuilder

NO_TOOL = "<none>"
_INF = math.inf


def primary_class(tool_calls) -> str:
    """Command class of the first tool call of an events row's ``tool_calls``; NO_TOOL if none."""
    if tool_calls is None or len(tool_calls) == 0:
        return NO_TOOL
    return str(tool_calls[0]["command_class"] or "other")


def ended(now: float) -> ReusePrediction:
    """The prediction for a prefix that will not be reused: evict it first."""
    return ReusePrediction(_INF, now)


@dataclass(frozen=True)
class IdleStats:
    """Sorted recorded idle gaps (s) per primary command class, and over all classes."""

    by_class: dict[str, np.ndarray]
    overall: np.ndarray

    @classmethod
    def fit(cls, events: pd.DataFrame) -> IdleStats:
        """Gaps of every call of ``events`` that has a next call in its thread.

        Raises ``ValueError`` when no call has one (nothing to fit).
        """
        labels = reuse_labels(events, horizon_s=math.inf).frame
        reused = labels["next_use_time"].notna().to_numpy()
        if not reused.any():
            raise ValueError("cannot fit idle-time statistics: no call in the events has a next call")
        gaps = labels["idle_s"].to_numpy()[reused]
        classes = np.array([primary_class(t) for t in events["tool_calls"].to_numpy()[reused]])
        by_class = {str(c): np.sort(gaps[classes == c]) for c in np.unique(classes)}
        return cls(by_class, np.sort(gaps))

    def _gaps(self, klass: str) -> np.ndarray:
        return self.by_class.get(klass, self.overall)

    def mean(self, klass: str) -> float:
        return float(self._gaps(klass).mean())

    def quantile(self, klass: str, q: float) -> float:
        return float(np.quantile(self._gaps(klass), q))


class _CallFacts:
    """Per request id of the workload: primary class, whether the turn ended, next recorded gap."""

    def __init__(self, workload: Workload):
        tool_calls = workload.events["tool_calls"]
        ended_turn = workload.events["ended_turn"]
        self.klass: dict[str, str] = {}
        self.ended: dict[str, bool] = {}
        self.next_gap: dict[str, float | None] = {}
        for c in workload.calls:
            self.klass[c.request_id] = primary_class(tool_calls.at[c.row])
            self.ended[c.request_id] = bool(ended_turn.at[c.row])
            self.next_gap[c.request_id] = c.next_gap


class _ClassPolicy:
    """Base of the hand-written predictors: ended turns are ended, others go to :meth:`predict`."""

    def __init__(self, facts: _CallFacts, stats: IdleStats):
        self.facts = facts
        self.stats = stats

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        rid = request.request_id
        if rid not in self.facts.klass:
            return None
        if self.facts.ended[rid]:
            return ended(now)
        return self.predict(self.facts.klass[rid], now)

    def predict(self, klass: str, now: float) -> ReusePrediction:
        raise NotImplementedError


class PerToolMean(_ClassPolicy):
    """``reuse_at = now + mean idle(class)``; never expires early."""

    def predict(self, klass: str, now: float) -> ReusePrediction:
        return ReusePrediction(now + self.stats.mean(klass), _INF)


class TtlPin(_ClassPolicy):
    """Kept (``reuse_at = now``) until ``now + quantile(class, q)``, then first to go."""

    def __init__(self, facts: _CallFacts, stats: IdleStats, quantile: float):
        super().__init__(facts, stats)
        self.q = quantile

    def predict(self, klass: str, now: float) -> ReusePrediction:
        return ReusePrediction(now, now + self.stats.quantile(klass, self.q))


class Heuristic(_ClassPolicy):
    """``reuse_at = now + median idle(class)``; ended once idle past the class's p99."""

    def predict(self, klass: str, now: float) -> ReusePrediction:
        return ReusePrediction(now + self.stats.quantile(klass, 0.5), now + self.stats.quantile(klass, 0.99))


class NoOpinion:
    """No prediction for any request: the pool keeps vLLM's LRU order (and its arrival rule)."""

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        return None


class RecordedGap:
    """``reuse_at = now + recorded gap to the thread's next call``; a thread's last call is ended."""

    def __init__(self, facts: _CallFacts):
        self.facts = facts

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        rid = request.request_id
        if rid not in self.facts.next_gap:
            return None
        gap = self.facts.next_gap[rid]
        return ended(now) if gap is None else ReusePrediction(now + gap, _INF)


class RecordedCalls(CallBuilder):
    """The runtime's :class:`CallBuilder`, with each call's model name and token counts as recorded.

    A served engine has one model; the replay overlays sessions of several recorded agents
    on one engine, and the model family is a feature, so it is taken from the trace. The
    replay's prompts and outputs are ``token_scale`` times shorter than recorded; the served
    runtime would count the real tokens, so the recorded counts are used.
    """

    def __init__(self, recorded: dict[str, tuple[str, int, int]], **kwargs: Any):
        super().__init__(**kwargs)
        self._recorded = recorded

    def build(self, request: Request, now: float) -> FinishedCall:
        call = super().build(request, now)
        found = self._recorded.get(request.request_id)
        if found is None:
            return call
        model, prompt, output = found
        return replace(call, model=model, prompt_tokens=prompt, output_tokens=output)


def recorded_calls(workload: Workload) -> dict[str, tuple[str, int, int]]:
    """Request id -> (model, prompt tokens, output tokens) as recorded in the trace."""
    ev = workload.events
    return {
        c.request_id: (str(ev.at[c.row, "model"] or ""), int(ev.at[c.row, "prompt_tokens"]), int(ev.at[c.row, "output_tokens"]))
        for c in workload.calls
    }


LearnedFactory = Callable[[Workload, Callable[[], float]], ReusePredictor]


def learned_factory(exported: Any, block_size: int) -> LearnedFactory:
    """For a loaded :class:`~cachewise.scoring.exported.ExportedModel`: a function that builds a
    fresh :class:`~cachewise.runtime.learned.LearnedPredictor` (empty feature history) for one
    run of a workload on a given clock, wired as the plugin wires it
    (:func:`cachewise.runtime.plugin.learned_predictor`) with no tool parser: tool calls reach
    it through the request's hint, as in serving.
    """
    from cachewise.runtime.config import CacheWiseSettings
    from cachewise.runtime.plugin import learned_predictor

    settings = CacheWiseSettings(model="(loaded by the replay)", tool_parser="none")

    def make(workload: Workload, clock: Callable[[], float]) -> ReusePredictor:
        return learned_predictor(
            exported,
            settings,
            model_name="",
            hash_block_size=block_size,
            calls_cls=RecordedCalls,
            recorded=recorded_calls(workload),
            arrival_clock=clock,
        )

    return make


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy may need.

    ``learned``: builds the learned predictor for a run (given the workload and the run's
    clock); None when no model was given, which makes the learned policies unavailable.
    ``residency``: the residency controller's settings on the replay's cost model and
    ``capacity_tokens`` the run's KV capacity (both set per run by the runner; used by the
    residency policies, :mod:`cachewise.replay.residency_policies`).
    """

    workload: Workload
    stats: IdleStats
    ttl_quantile: float = 0.9
    learned: LearnedFactory | None = None
    residency: Any = None
    capacity_tokens: int = 0


@dataclass(frozen=True)
class Serving:
    """What a policy that also decides which sessions are served builds for a run:
    its predictor, vLLM scheduler class (None: vLLM's own) and session limit (None: none)."""

    predictor: ReusePredictor | None
    scheduler_cls: type | None = None
    max_sessions: int | None = None


@dataclass(frozen=True)
class Policy:
    """A policy ready for one run: ``predictor`` None means vLLM's own ``BlockPool``;
    ``client_hints``: whether the replay client sends its session id and hints;
    ``guarded``: the pool runs the runtime's online guard; ``scheduler_cls`` None: vLLM's
    ``Scheduler``; ``max_sessions``: at most that many sessions served at once (None: the
    overlay's concurrency)."""

    name: str
    predictor: ReusePredictor | None
    client_hints: bool = True
    guarded: bool = False
    scheduler_cls: type | None = None
    max_sessions: int | None = None


@dataclass(frozen=True)
class PolicySpec:
    """How to build policy ``name`` for a run: ``build(ctx, clock)`` gives its predictor
    (None: vLLM's own ``BlockPool``), or a :class:`Serving`; ``hand_written``: a candidate for "best hand-written"
    (no model, no knowledge of the future); ``guarded``: run with the runtime's online guard;
    ``needs_model``: builds the learned predictor (``PolicyContext.learned``)."""

    build: Callable[[PolicyContext, Callable[[], float]], ReusePredictor | Serving | None]
    hand_written: bool = False
    client_hints: bool = True
    guarded: bool = False
    needs_model: bool = False


def learned_predictor(ctx: PolicyContext, clock: Callable[[], float]) -> ReusePredictor:
    """The learned predictor for one run on ``clock``; ValueError when no model was given."""
    if ctx.learned is None:
        raise ValueError("the learned policies need a model: pass --model DIR_OR_URI (or replay.model)")
    return ctx.learned(ctx.workload, clock)


REGISTRY: dict[str, PolicySpec] = {
    "lru": PolicySpec(lambda ctx, clock: None),
    "lru_arrival": PolicySpec(lambda ctx, clock: NoOpinion(), hand_written=True),
    "per_tool_mean": PolicySpec(lambda ctx, clock: PerToolMean(_CallFacts(ctx.workload), ctx.stats), hand_written=True),
    "ttl": PolicySpec(lambda ctx, clock: TtlPin(_CallFacts(ctx.workload), ctx.stats, ctx.ttl_quantile), hand_written=True),
    "heuristic": PolicySpec(lambda ctx, clock: Heuristic(_CallFacts(ctx.workload), ctx.stats), hand_written=True),
    "recorded_gap": PolicySpec(lambda ctx, clock: RecordedGap(_CallFacts(ctx.workload))),
    "learned": PolicySpec(learned_predictor, guarded=True, needs_model=True),
    "learned_unguarded": PolicySpec(learned_predictor, needs_model=True),
    "learned_nohints": PolicySpec(learned_predictor, client_hints=False, guarded=True, needs_model=True),
    "infinite": PolicySpec(lambda ctx, clock: None),
}


def register_policy(name: str, spec: PolicySpec) -> None:
    """Add (or replace) policy ``name`` in :data:`REGISTRY`."""
    REGISTRY[name] = spec


def known_policies() -> tuple[str, ...]:
    return tuple(REGISTRY)


def needs_model(names: Iterable[str]) -> bool:
    """Whether any of the registered policies ``names`` builds the learned predictor."""
    return any(REGISTRY[n].needs_model for n in names if n in REGISTRY)


def hand_written() -> tuple[str, ...]:
    """Policies of :data:`REGISTRY` that count as hand-written (``PolicySpec.hand_written``)."""
    return tuple(n for n, s in REGISTRY.items() if s.hand_written)


def build_policy(name: str, ctx: PolicyContext, clock: Callable[[], float]) -> Policy:
    """A fresh policy ``name`` (a key of :data:`REGISTRY`) for one run on ``clock``.

    Raises ``ValueError`` for an unknown name, or a learned policy without a model.
    """
    if name not in REGISTRY:
        hint = " (Belady's MIN is computed for every run: min_* columns)" if name == "belady" else ""
        raise ValueError(f"unknown policy {name!r}{hint}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    built = spec.build(ctx, clock)
    if isinstance(built, Serving):
        return Policy(name, built.predictor, spec.client_hints, spec.guarded, built.scheduler_cls, built.max_sessions)
    return Policy(name, built, spec.client_hints, spec.guarded)
