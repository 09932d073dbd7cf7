"""The eviction policies the replay compares, as :class:`~cachewise.runtime.policy.ReusePredictor` s.

Every policy but ``lru`` and ``infinite`` runs inside vLLM through the runtime's
:class:`~cachewise.runtime.block_pool.ScoredBlockPool` (installed with
:func:`cachewise.runtime.hooks.use_policy`); a prediction ``(reuse_at, expire_at)`` is made
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
``learned``        The exported LightGBM scorer through the runtime's
                   :class:`~cachewise.runtime.learned.LearnedPredictor`; it sees each call as
                   the served runtime would, through the client hint
                   (:mod:`cachewise.runtime.request_calls`) the replay attaches to every request;
                   with the runtime's online guard (:mod:`cachewise.runtime.guard`), as served.
``learned_unguarded``  The same scorer with the guard off (every other policy runs unguarded).
``belady``         Oracle: ``reuse_at`` = the true time of the thread's next request *assuming
                   the recorded tool time*, i.e. ``now + recorded gap`` (exact for a call that
                   waits on one predecessor; a main-thread call that also waits for a
                   sub-agent may come later). A thread's last call is ended.
``infinite``       vLLM's ``BlockPool`` with room for every block of the workload (no eviction).

Idle times ("gaps") are seconds from a response to the next request of its thread, as the
training labels define them (:func:`cachewise.features.label.reuse_labels`), fitted on the
sessions *not* replayed when a split is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from vllm.v1.request import Request

from cachewise.features.label import reuse_labels
from cachewise.features.record import FinishedCall
from cachewise.runtime.policy import ReusePrediction, ReusePredictor
from cachewise.runtime.replay.workload import Workload
from cachewise.runtime.request_calls import CallBuilder

POLICIES = ("lru", "lru_arrival", "per_tool_mean", "ttl", "heuristic", "learned", "learned_unguarded", "belady", "infinite")
LEARNED = ("learned", "learned_unguarded")
HAND_WRITTEN = ("lru_arrival", "per_tool_mean", "ttl", "heuristic")
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


class BeladyOracle:
    """``reuse_at = now + recorded gap to the thread's next call``; a thread's last call is ended."""

    def __init__(self, facts: _CallFacts):
        self.facts = facts

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        rid = request.request_id
        if rid not in self.facts.next_gap:
            return None
        gap = self.facts.next_gap[rid]
        return ended(now) if gap is None else ReusePrediction(now + gap, _INF)


class _RecordedModelCalls(CallBuilder):
    """The runtime's :class:`CallBuilder`, with each call's model name as recorded in the trace.

    A served engine has one model; the replay overlays sessions of several recorded agents
    on one engine, and the model family is a feature, so it is taken from the trace.
    """

    def __init__(self, models: dict[str, str], **kwargs: object):
        super().__init__(model="", **kwargs)  # type: ignore[arg-type]
        self._models = models

    def build(self, request: Request, now: float) -> FinishedCall:
        call = super().build(request, now)
        return replace(call, model=self._models.get(request.request_id, call.model))


def learned_factory(model: str, workload: Workload, block_size: int) -> Callable[[Callable[[], float]], ReusePredictor]:
    """Loads the exported model at ``model`` (folder or MLflow URI) once; the returned function
    builds a fresh :class:`~cachewise.runtime.learned.LearnedPredictor` (empty feature history)
    for one run on a given clock. Tool calls reach it through the client hint, as in serving.

    Raises :class:`~cachewise.train.exported.ModelLoadError` when the model cannot be loaded.
    """
    from cachewise.runtime.learned import LearnedPredictor
    from cachewise.runtime.tool_calls import get_parser
    from cachewise.train.exported import load_exported

    exported = load_exported(model)
    models = {c.request_id: str(workload.events.at[c.row, "model"] or "") for c in workload.calls}

    def make(clock: Callable[[], float]) -> ReusePredictor:
        calls = _RecordedModelCalls(
            models, hash_block_size=block_size, parser=get_parser("none"), tokenizer=None, arrival_clock=clock
        )
        return LearnedPredictor(exported, calls)

    return make


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy may need.

    ``learned``: builds the learned predictor for a run (given the run's clock); None when
    no model was given, which makes ``learned`` unavailable.
    """

    workload: Workload
    stats: IdleStats
    ttl_quantile: float = 0.9
    learned: Callable[[Callable[[], float]], ReusePredictor] | None = None


@dataclass(frozen=True)
class Policy:
    """A policy ready for one run: ``predictor`` None means vLLM's own ``BlockPool``;
    ``guarded``: the pool runs the runtime's online guard."""

    name: str
    predictor: ReusePredictor | None
    guarded: bool = False


def build_policy(name: str, ctx: PolicyContext, clock: Callable[[], float]) -> Policy:
    """A fresh policy ``name`` (see :data:`POLICIES`) for one run on ``clock``.

    Raises ``ValueError`` for an unknown name, or ``learned`` without a model.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    if name in ("lru", "infinite"):
        return Policy(name, None)
    if name in LEARNED:
        if ctx.learned is None:
            raise ValueError(f"policy {name!r} needs a model: pass --model DIR_OR_URI (or replay.model)")
        return Policy(name, ctx.learned(clock), guarded=name == "learned")
    facts = _CallFacts(ctx.workload)
    predictors: dict[str, Callable[[], ReusePredictor]] = {
        "lru_arrival": NoOpinion,
        "per_tool_mean": lambda: PerToolMean(facts, ctx.stats),
        "ttl": lambda: TtlPin(facts, ctx.stats, ctx.ttl_quantile),
        "heuristic": lambda: Heuristic(facts, ctx.stats),
        "belady": lambda: BeladyOracle(facts),
    }
    return Policy(name, predictors[name]())
