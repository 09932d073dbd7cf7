"""The one feature definition, computed online as responses finish.

:class:`FeatureState` turns each :class:`~cachewise.features.record.FinishedCall` into the
feature vector of :data:`cachewise.features.spec.FEATURE_NAMES` and then records the call in
its history. Training (:mod:`cachewise.features.featurize`) and serving (the vLLM runtime)
feed calls through this same class in finish order, so there is no train/serve skew.

Invariants:

* ``observe`` reads only the call and the history of calls observed before it; the gap of a
  thread's previous call becomes known (and enters the history) when the thread's next call
  finishes.
* Memory is bounded: at most ``max_threads`` thread histories and ``max_sessions`` session
  histories are kept, the least recently observed dropped first (a dropped thread that comes
  back starts a fresh history); per-session signature statistics hold at most
  ``MAX_SIGNATURES`` entries, oldest dropped first.
* Deterministic: equal call sequences give equal vectors.

Identities: the per-thread and per-session tables here are *feature histories* keyed by the
call's ``thread_key`` / ``session_key``, never identities of their own. Offline those keys come
from the transcripts (ingest), online from the engine's session view
(:class:`~cachewise.runtime.sessions.SessionView`, through the runtime's call builder), which
alone decides which thread and session a request belongs to. They stay separate from the view
because this class is the one feature computer shared with training (which has no engine and
no view), and because their lifetimes differ: a history outlives a session the view has
dropped (gaps of a session that comes back are still features), and the view's state
(blocks, hashes, live requests, forecasts) is none of the features'.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from cachewise.data.commands import ARGUMENT_FACT_KEYS, COMMAND_CLASSES, CommandInfo, classify
from cachewise.features.record import FinishedCall
from cachewise.features.spec import (
    CODE_NONE,
    CODE_OTHER,
    EDC_TAUS_S,
    GAP_EWMA_ALPHA,
    MODEL_FAMILIES,
    N_RECENT_GAPS,
    VOCABULARIES,
)

MAX_SIGNATURES = 256
NAN = math.nan
_CLASS_CODE = VOCABULARIES["command_class"]
_FAMILY_CODE = VOCABULARIES["model_family"]
_CLASS_INDEX = {c: i for i, c in enumerate(COMMAND_CLASSES)}
_OTHER_INDEX = _CLASS_INDEX["other"]
_NAN_GAPS = (NAN,) * N_RECENT_GAPS
_NO_FACTS = (0.0,) * len(ARGUMENT_FACT_KEYS)
_NO_CLASSES = (CODE_NONE, CODE_NONE, 0, 0, *(0,) * len(COMMAND_CLASSES))
#: class -> (class_first, class_last, n_tool_calls, n_distinct_classes, n_class_*) of a one-call response
_ONE_CALL_CLASSES = {
    c: (_CLASS_CODE[c], _CLASS_CODE[c], 1, 1, *(int(c == other) for other in COMMAND_CLASSES)) for c in COMMAND_CLASSES
}


@lru_cache(maxsize=1024)
def model_family_code(model: str) -> int:
    """Code of the first :data:`~cachewise.features.spec.MODEL_FAMILIES` entry in ``model``."""
    if not model:
        return CODE_NONE
    lowered = model.lower()
    for family in MODEL_FAMILIES:
        if family in lowered:
            return _FAMILY_CODE[family]
    return CODE_OTHER


def _class_features(classes: list[str]) -> tuple[int, ...]:
    """class_first, class_last, n_tool_calls, n_distinct_classes and n_class_* of a response."""
    if not classes:
        return _NO_CLASSES
    if len(classes) == 1 and classes[0] in _ONE_CALL_CLASSES:
        return _ONE_CALL_CLASSES[classes[0]]
    class_counts = [0] * len(COMMAND_CLASSES)
    for cls in classes:
        class_counts[_CLASS_INDEX.get(cls, _OTHER_INDEX)] += 1
    first_code = _CLASS_CODE.get(classes[0], CODE_OTHER)
    return (first_code, _CLASS_CODE.get(classes[-1], CODE_OTHER), len(classes), len(set(classes)), *class_counts)


def _max_facts(infos: list[CommandInfo]) -> tuple[float, ...]:
    """Per-key maximum of the tool calls' argument facts, as floats (all 0.0 without a call).

    Argument facts are never negative, so 0.0 is the neutral start.
    """
    if not infos:
        return _NO_FACTS
    facts = infos[0].facts
    for info in infos[1:]:
        facts = tuple(map(max, facts, info.facts))
    return tuple(map(float, facts))


class _GapStats:
    """Last gap, mean gap and count of gaps per key (a command class or a call signature).

    Keys are kept in the order they were first added (``by_key`` is insertion ordered), so
    the first key is the oldest.
    """

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[object, list] = {}  # key -> [last gap, gap total, number of gaps]

    def add(self, key: object, gap: float) -> None:
        stats = self.by_key.get(key)
        if stats is None:
            self.by_key[key] = [gap, 0.0 + gap, 1]  # the total is a sum started at 0.0
        else:
            stats[0] = gap
            stats[1] += gap
            stats[2] += 1

    def last_mean_count(self, key: object) -> tuple[float, float, int]:
        """Last and mean gap of ``key`` and their number (NaN, NaN, 0 for a key never added)."""
        stats = self.by_key.get(key)
        if stats is None:
            return NAN, NAN, 0
        return stats[0], stats[1] / stats[2], stats[2]

    def drop_oldest(self) -> None:
        """Forget the key added first."""
        del self.by_key[next(iter(self.by_key))]


class _Thread:
    """History of one thread (one growing prompt)."""

    __slots__ = (
        "first_request", "calls", "tool_calls", "last_finish", "last_prompt", "last_class", "last_sig",
        "gaps", "gap_total", "gap_max", "gap_ewma", "class_gaps", "class_calls", "edc", "edc_time",
    )

    def __init__(self, request_time: float) -> None:
        self.first_request = request_time
        self.calls = 0
        self.tool_calls = 0  # calls whose response emitted a tool call
        self.last_finish = NAN
        self.last_prompt = 0
        self.last_class = ""
        self.last_sig: tuple = ()
        self.gaps: list[float] = []  # newest first, at most N_RECENT_GAPS
        self.gap_total = 0.0
        self.gap_max = NAN
        self.gap_ewma = NAN
        self.class_gaps = _GapStats()
        self.class_calls: dict[str, int] = {}
        self.edc = [0.0] * len(EDC_TAUS_S)
        self.edc_time = request_time


class _Session:
    """History of one session, across its threads."""

    __slots__ = ("first_request", "calls", "class_gaps", "sig_gaps")

    def __init__(self, request_time: float) -> None:
        self.first_request = request_time
        self.calls = 0
        self.class_gaps = _GapStats()
        self.sig_gaps = _GapStats()


def _touch(table: OrderedDict, key: str, cap: int, make: type, request_time: float):
    """Get ``table[key]`` (``make(request_time)`` if absent) as most recent; drop the oldest over ``cap``."""
    item = table.get(key)
    if item is None:
        item = table[key] = make(request_time)
        if len(table) > cap:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return item


class FeatureState:
    """Bounded per-thread and per-session history; :meth:`observe` gives feature vectors."""

    def __init__(self, max_threads: int = 65536, max_sessions: int = 16384) -> None:
        if max_threads < 1 or max_sessions < 1:
            raise ValueError("max_threads and max_sessions must be positive")
        self.max_threads = max_threads
        self.max_sessions = max_sessions
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        """Number of threads currently tracked."""
        return len(self._threads)

    def observe(self, call: FinishedCall) -> np.ndarray:
        """Feature vector (float64, :data:`FEATURE_NAMES` order) of ``call``; then record it."""
        req, fin = call.request_time, call.finish_time
        th = _touch(self._threads, call.thread_key, self.max_threads, _Thread, req)
        se = _touch(self._sessions, call.session_key, self.max_sessions, _Session, req)
        if req < se.first_request:
            se.first_request = req
        if th.calls:
            self._record_gap(th, se, max(req - th.last_finish, 0.0))

        infos = [tc.input if isinstance(tc.input, CommandInfo) else classify(tc.name, tc.input) for tc in call.tool_calls]
        classes = [info.command_class for info in infos]
        facts = _max_facts(infos)
        first = classes[0] if classes else ""
        sig = (first, *facts)

        gaps = th.gaps
        n_gaps = th.calls  # gaps observed so far: one per earlier call, the last just recorded
        has_history = th.calls > 0
        class_gap_last, class_gap_mean, _ = th.class_gaps.last_mean_count(first)
        sess_gap_last, sess_gap_mean, _ = se.class_gaps.last_mean_count(first)
        sig_gap_last, _, sig_count = se.sig_gaps.last_mean_count(sig)
        since_edc = fin - th.edc_time
        # Positional, in FEATURE_NAMES order (spec sections: response, thread, session).
        values = [
            *_class_features(classes),
            *facts,
            call.ended_turn,
            call.is_sidechain,
            model_family_code(call.model),
            call.prompt_tokens,
            call.prompt_tokens - th.last_prompt if has_history else NAN,
            call.output_tokens,
            fin - req,
            th.calls,
            fin - th.first_request,
            (th.tool_calls + bool(call.tool_calls)) / (th.calls + 1),
            *gaps,
            *_NAN_GAPS[len(gaps):],
            th.gap_total / n_gaps if n_gaps > 0 else NAN,
            th.gap_max,
            th.gap_ewma,
            class_gap_last,
            class_gap_mean,
            th.class_calls.get(first, 0),
            *[count * math.exp(-since_edc / tau) for tau, count in zip(EDC_TAUS_S, th.edc)],
            se.calls,
            fin - se.first_request,
            sess_gap_last,
            sess_gap_mean,
            sig_gap_last,
            sig_count,
        ]
        self._record_call(th, se, call, first, sig)
        return np.array(values, dtype=np.float64)

    @staticmethod
    def _record_gap(th: _Thread, se: _Session, gap: float) -> None:
        """The previous call of ``th`` turned out to be idle for ``gap`` seconds."""
        th.gaps.insert(0, gap)
        del th.gaps[N_RECENT_GAPS:]
        th.gap_total += gap
        if math.isnan(th.gap_max) or gap > th.gap_max:
            th.gap_max = gap
        th.gap_ewma = gap if math.isnan(th.gap_ewma) else GAP_EWMA_ALPHA * gap + (1 - GAP_EWMA_ALPHA) * th.gap_ewma
        th.class_gaps.add(th.last_class, gap)
        se.class_gaps.add(th.last_class, gap)
        se.sig_gaps.add(th.last_sig, gap)
        if len(se.sig_gaps.by_key) > MAX_SIGNATURES:
            se.sig_gaps.drop_oldest()

    @staticmethod
    def _record_call(th: _Thread, se: _Session, call: FinishedCall, first: str, sig: tuple) -> None:
        """Append ``call`` to its thread's and session's history."""
        th.calls += 1
        th.tool_calls += bool(call.tool_calls)
        se.calls += 1
        th.last_finish = call.finish_time
        th.last_prompt = call.prompt_tokens
        th.last_class = first
        th.last_sig = sig
        th.class_calls[first] = th.class_calls.get(first, 0) + 1
        decay_from = th.edc_time
        for i, tau in enumerate(EDC_TAUS_S):
            th.edc[i] = th.edc[i] * math.exp(-(call.request_time - decay_from) / tau) + 1.0
        th.edc_time = call.request_time
