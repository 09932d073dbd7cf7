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
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from cachewise.data.commands import ARGUMENT_FACT_KEYS, COMMAND_CLASSES, argument_facts, command_class
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


class _GapStats:
    """Last and mean observed gap per key (a command class or a call signature)."""

    __slots__ = ("last", "total", "count")

    def __init__(self) -> None:
        self.last: dict = {}
        self.total: dict = {}
        self.count: dict = {}

    def add(self, key: object, gap: float) -> None:
        self.last[key] = gap
        self.total[key] = self.total.get(key, 0.0) + gap
        self.count[key] = self.count.get(key, 0) + 1

    def last_and_mean(self, key: object) -> tuple[float, float]:
        n = self.count.get(key, 0)
        if n == 0:
            return NAN, NAN
        return self.last[key], self.total[key] / n


class _Thread:
    """History of one thread (one growing prompt)."""

    __slots__ = (
        "first_request", "calls", "last_finish", "last_prompt", "last_class", "last_sig",
        "gaps", "gap_total", "gap_max", "gap_ewma", "class_gaps", "class_calls", "edc", "edc_time",
    )

    def __init__(self, request_time: float) -> None:
        self.first_request = request_time
        self.calls = 0
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


def _touch(table: OrderedDict, key: str, cap: int, make):
    """Get ``table[key]`` (created by ``make()`` if absent) as most recent; drop the oldest over ``cap``."""
    item = table.get(key)
    if item is None:
        item = table[key] = make()
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
        th = _touch(self._threads, call.thread_key, self.max_threads, lambda: _Thread(req))
        se = _touch(self._sessions, call.session_key, self.max_sessions, lambda: _Session(req))
        if req < se.first_request:
            se.first_request = req
        if th.calls:
            self._record_gap(th, se, max(req - th.last_finish, 0.0))

        classes: list[str] = []
        class_counts = [0] * len(COMMAND_CLASSES)
        facts: list[float] = [0.0] * len(ARGUMENT_FACT_KEYS)
        for tc in call.tool_calls:
            cls = command_class(tc.name, tc.input)
            classes.append(cls)
            class_counts[_CLASS_INDEX.get(cls, _OTHER_INDEX)] += 1
            for i, value in enumerate(argument_facts(tc.name, tc.input).values()):
                if value > facts[i]:
                    facts[i] = float(value)
        first = classes[0] if classes else ""
        sig = (first, *facts)

        gaps = th.gaps
        n_gaps = th.calls  # gaps observed so far: one per earlier call, the last just recorded
        has_history = th.calls > 0
        class_gap_last, class_gap_mean = th.class_gaps.last_and_mean(first)
        sess_gap_last, sess_gap_mean = se.class_gaps.last_and_mean(first)
        sig_gap_last, _ = se.sig_gaps.last_and_mean(sig)
        since_edc = fin - th.edc_time
        # Positional, in FEATURE_NAMES order (spec sections: response, thread, session).
        values = [
            _CLASS_CODE.get(first, CODE_OTHER) if classes else CODE_NONE,
            _CLASS_CODE.get(classes[-1], CODE_OTHER) if classes else CODE_NONE,
            len(classes),
            len(set(classes)),
            *class_counts,
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
            se.sig_gaps.count.get(sig, 0),
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
        sig_last = se.sig_gaps.last
        if len(sig_last) > MAX_SIGNATURES:
            oldest = next(iter(sig_last))
            for table in (sig_last, se.sig_gaps.total, se.sig_gaps.count):
                del table[oldest]

    @staticmethod
    def _record_call(th: _Thread, se: _Session, call: FinishedCall, first: str, sig: tuple) -> None:
        """Append ``call`` to its thread's and session's history."""
        th.calls += 1
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
