"""The shared session view: what the engine knows about each agent session, in one place.

One :class:`SessionView` per engine, created by the plugin's wiring
(:func:`cachewise.runtime.plugin.wired`) for every engine it builds and handed to the GPU
pool (``ScoredBlockPool.sessions``), the predictor (``sessions`` attribute, and through it
the :class:`~cachewise.runtime.request_calls.CallBuilder`), the schedulers (which read it
from their pool) and the CPU-tier policy (attached at construction). Nothing else keeps a
copy of sessions, their threads, the block-hash -> thread index or which host-tier chunks
belong to which session.

Writers (each event has one writer):

* the plugin's scheduler hooks (:mod:`cachewise.runtime.hooks`), in every engine:
  :meth:`on_arrival`, :meth:`on_scheduled`, :meth:`on_finished`, :meth:`on_aborted`;
* the :class:`~cachewise.runtime.request_calls.CallBuilder` (thread inference):
  :meth:`on_call` (names a finished call's thread and registers its tip hashes);
* the predictor: :meth:`on_forecast`;
* the residency controller and the prefetcher: :meth:`set_residency`; the residency
  scheduler: :meth:`forget`;
* the CPU-tier policy: the host-tier working sets, ``host``
  (:class:`~cachewise.runtime.host_sets.HostSets`: ``stored`` / ``dropped`` / ``cleared``).

The view also owns the engine's one memory-shortage test (``shortage``,
:class:`~cachewise.runtime.memory_shortage.MemoryShortage`): :meth:`on_scheduled` feeds it; the
residency controller and the GPU pool's guard read its one latch.

Readers (queries only): the residency controller, the prefetcher, the CPU-tier policy, the
hooks' arrival keys (:func:`~cachewise.runtime.request_calls.arrival_keys`, through
:meth:`known_thread`).

Model:

* a *session* (program) has a key: the client's ``session_id`` (vLLM's
  ``Request.session_id`` or the hint ``extra_args["cachewise"]["session_id"]``), else the
  session of the thread the request's block hashes extend (the *thread index* below);
  a request whose session is not known at arrival gets a *provisional* session
  (``"?" + request_id``) that is merged into the real one when the predictor names it;
* the *thread index* maps a block hash to the (thread, session) of the call that registered
  it: every finished call registers its last full prompt block and its last full block
  (:meth:`on_call`); a call belongs to the thread of the latest registered hash of its own
  prompt chain (searched from the end), else to a new thread ``"t<n>"``; at most
  ``max_hashes`` entries, least recently used dropped (entries outlive :meth:`forget`, so
  a session that comes back after its expiry keeps its thread keys);
* a session has *threads* (the growing prompts of the main agent and its sub-agents), each
  with the blocks of its latest request (prompt + output) and its last growth in blocks,
  and the full-block hashes of that request;
* *live* requests (arrived, not finished), of which *waiting* ones were never scheduled;
* when no request is live the session is *idle since* its last finish, with the
  :class:`Forecast` of its return made at that finish (None: no prediction);
* its *remaining work*: the remaining-work model's label (``log1p`` seconds the session runs
  after its last finished call; :mod:`cachewise.train.remaining`) made at its last finish, None
  before its first finished call or without that model; for a session with none,
  :meth:`remaining_of` answers with the model's ``new_session_label`` (the residency
  controller's admission order, rule 2);
* ``resident`` / ``demoted`` flags are written by the residency controller and the prefetcher only;
  ``resident`` means *admitted* (:mod:`cachewise.runtime.residency`): without a host tier its
  working set is counted in the GPU's room, with one (residency rule 6) an idle admitted
  session's blocks may live on the host only;
* the *host-tier working set* of a session: the CPU-tier chunks it last stored, read or
  touched, per CPU policy (tier), kept in ``host`` (:mod:`cachewise.runtime.host_sets`, its
  invariants there); a session the view drops (:meth:`forget`, the idle cap) hands its host
  chunks to "no known session" (they stay cached, first to go), a provisional session
  merged into its real one hands them to it;
* the *traffic families*: the trace families the arrived requests declared (the client hint
  ``family``, e.g. ``claude_code``; None: a request that declared none), since start-up and never
  forgotten (at most :data:`MAX_FAMILIES` names; later new ones count as undeclared); the
  guard's certified start asks :meth:`traffic_within` (:mod:`cachewise.runtime.guard`,
  "Certified traffic");
* :attr:`SessionView.trusted`: whether the model's forecasts may be acted on now -- the
  online guard's verdict (:mod:`cachewise.runtime.guard`), read live from the ``verdict``
  the GPU pool gave the view (:meth:`follow`: its
  :attr:`~cachewise.runtime.block_pool.ScoredBlockPool.serves_learned`), never copied;
  every reader of forecasts (residency controller, host-tier policy) asks it;
* :attr:`SessionView.forecasts_trusted`: the forecast judge's verdict
  (:mod:`cachewise.runtime.forecast_judge`, set as ``judge`` once by the residency scheduler):
  whether the model's return forecasts score better than the no-model *reference* forecasts
  (reported with them, :meth:`on_forecast`) on the returns seen; the view scores both at
  each return of an idle session (its next arrival; for a session known only at its finish,
  when its provisional session is merged into it);
* :attr:`SessionView.pressure`: the GPU pool's eviction pressure, read live from the
  ``pressure`` reader the view was built with or the pool gave it (:meth:`follow`:
  :meth:`~cachewise.runtime.block_pool.ScoredBlockPool.eviction_pressure`: cumulative evicted
  blocks, demoted free blocks), None without a pool; the residency controller prices demotions by it.

Write events: :meth:`on_arrival`, :meth:`on_scheduled`, :meth:`on_call`, :meth:`on_forecast`,
:meth:`on_finished`, :meth:`on_aborted`, :meth:`set_residency`, :meth:`forget` (and
:meth:`follow`, once, by the pool), and ``host``'s events. Everything else is a read-only query.

Invariants (checked by the property tests):

* every live request belongs to exactly one session, and ``waiting ⊆ live``;
* ``idle_since`` is None iff the session has a live request; the idle sessions are kept in
  the order they went idle; at most ``max(max_sessions, sessions with a live request)``
  sessions are known: past ``max_sessions`` the longest idle are dropped (live sessions never);
* ``working_set(s) = Σ_threads (blocks + growth - shared)``, plus what live requests need
  beyond that (``grown`` false: without ``growth``, the session's present KV); ``shared`` = ``Σ_h (1 - 1/refs[h])`` over the thread's hashes as of its last
  finish, so a prefix held by ``n`` threads (a common system prompt) counts ``1/n`` in each
  and the sum over sessions approximates the distinct blocks they hold;
* ``hash_refs[h]`` = the number of threads (over all sessions) whose latest hashes hold
  ``h``; a hash is *exclusive* to a session when all its references come from it;
* the thread index holds at most ``max_hashes`` entries, each naming a thread whose id was
  issued by :meth:`on_call` or given by the client; :meth:`known_thread` never changes it.

Complexity: arrival, scheduling and abort O(1); a finish O(hashes of the request) (like
vLLM's own free); :meth:`on_call` and :meth:`known_thread` O(prompt blocks) at worst (the
chain searched from its end); :meth:`exclusive_hashes` O(hashes of the session); a host-tier
event O(1) per chunk, dropping or merging a session O(its host chunks) more. Memory:
O(sessions + their latest hashes + max_hashes + host chunks); :meth:`forget` drops sessions idle past
their forecast's expiry, ``max_sessions`` bounds the idle ones in every engine (the residency
controller's engine forgets by expiry as well). The defaults hold two index entries for each of
the 65536 threads :class:`~cachewise.features.online.FeatureState` keeps.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cachewise.runtime.host_sets import HostSets
from cachewise.runtime.memory_shortage import MemoryShortage
from cachewise.scoring.overdue import overdue_remaining

if TYPE_CHECKING:
    from cachewise.runtime.forecast_judge import ForecastJudge

FORECAST_LEVELS: tuple[float, ...] = tuple(i / 20 for i in range(21))
"""Quantile levels a :class:`Forecast` is stored at (0, 0.05, ..., 1)."""

EXPIRY_LEVEL = 1.0
"""The level of a session's :attr:`Forecast.expiry`: the forecast's top stored quantile, so a session
counts as ended once idle longer than every gap its forecast allows (the learned predictor's prefix
expiry is at 0.99 of its 101 residual levels instead: :mod:`cachewise.runtime.learned`)."""
MAX_FAMILIES = 64  # distinct declared traffic families counted; further names count as undeclared
PROVISIONAL = "?"


@dataclass(frozen=True)
class Forecast:
    """Distribution of a session's idle gap (seconds from its finish to its next request).

    ``gaps``: quantiles at :data:`FORECAST_LEVELS`, non-decreasing, >= 0; ``math.inf`` at a
    level means "does not come back" with at least that probability.
    """

    gaps: tuple[float, ...]

    def __post_init__(self) -> None:
        g = self.gaps
        if len(g) != len(FORECAST_LEVELS) or any(math.isnan(x) or x < 0 for x in g) or any(b < a for a, b in zip(g, g[1:])):
            raise ValueError(f"a forecast needs {len(FORECAST_LEVELS)} non-decreasing gaps >= 0, got {g}")

    @classmethod
    def from_log_model(cls, mu: float, residual_quantiles: Sequence[float]) -> Forecast:
        """Gaps ``expm1(mu + Q(level))`` from a log-scale prediction and its residual quantiles
        (``residual_quantiles`` at evenly spaced levels 0..1, as :mod:`cachewise.scoring.idle` exports)."""
        q = list(residual_quantiles)
        n = len(q) - 1
        gaps = []
        for level in FORECAST_LEVELS:
            x = level * n
            i = min(int(x), n - 1)
            r = q[i] + (q[i + 1] - q[i]) * (x - i)
            gaps.append(max(math.expm1(mu + r), 0.0))
        return cls(tuple(_monotone(gaps)))

    @classmethod
    def from_samples(cls, sorted_gaps: Sequence[float]) -> Forecast:
        """Empirical quantiles (linear interpolation) of observed gaps, sorted ascending."""
        if not len(sorted_gaps):
            raise ValueError("no gaps to build a forecast from")
        n = len(sorted_gaps) - 1
        gaps = []
        for level in FORECAST_LEVELS:
            x = level * n
            i = min(int(x), max(n - 1, 0))
            hi = sorted_gaps[min(i + 1, n)]
            gaps.append(float(sorted_gaps[i] + (hi - sorted_gaps[i]) * (x - i)))
        return cls(tuple(_monotone(gaps)))

    @classmethod
    def never(cls) -> Forecast:
        """A session that will not come back."""
        return cls((math.inf,) * len(FORECAST_LEVELS))

    @property
    def median(self) -> float:
        """Point estimate: the median gap."""
        return self.gaps[len(self.gaps) // 2]

    @property
    def expiry(self) -> float:
        """Gap after which the session counts as ended (the :data:`EXPIRY_LEVEL` quantile, the top one)."""
        return self.gaps[int(round(EXPIRY_LEVEL * (len(self.gaps) - 1)))]

    def cdf(self, gap: float) -> float:
        """``P(G <= gap)`` under the piecewise-linear quantile function through the stored
        quantiles (mass spread evenly between neighbouring levels; a tie is an atom)."""
        g, u = self.gaps, FORECAST_LEVELS
        if gap < g[0]:
            return 0.0
        i = bisect.bisect_right(g, gap)  # g[i - 1] <= gap < g[i]
        if i >= len(g):
            return 1.0
        if math.isinf(g[i]):
            return u[i - 1]
        return u[i - 1] + (u[i] - u[i - 1]) * (gap - g[i - 1]) / (g[i] - g[i - 1])

    def quantile(self, level: float) -> float:
        """``Q(level)``: the inverse of :meth:`cdf` (linear between the stored levels; ``inf`` inside
        a segment that reaches a "does not come back" level)."""
        g = self.gaps
        n = len(g) - 1
        x = min(max(level, 0.0), 1.0) * n
        i = min(int(x), n - 1)
        t = x - i
        if t == 0.0:
            return g[i]
        if math.isinf(g[i + 1]):
            return math.inf
        return g[i] + (g[i + 1] - g[i]) * t

    def _past(self, elapsed: float) -> float | None:
        """``F(elapsed)``; None when the whole distribution has passed (the tail rule applies)."""
        p0 = self.cdf(elapsed)
        return None if p0 >= 1.0 else p0

    def remaining_quantile(self, elapsed: float, level: float) -> float:
        """``level`` quantile of the *remaining* gap given the session stayed idle ``elapsed`` s:
        ``Q(F(e) + level (1 - F(e))) - e``; ``overdue_remaining(e)`` (the one overdue rule,
        :mod:`cachewise.scoring.overdue`) when every quantile has passed."""
        p0 = self._past(elapsed)
        if p0 is None:
            return overdue_remaining(elapsed)
        return max(self.quantile(p0 + level * (1.0 - p0)) - elapsed, 0.0)

    def remaining_points(self, elapsed: float, k: int) -> list[float]:
        """``k`` equal-mass points of the remaining gap given ``elapsed`` s idle: its quantiles at the
        levels ``(i + 1/2) / k`` (midpoints of ``k`` bins of probability ``1/k``), for expectations
        ``E[f(R)] ≈ mean f(points)``; ``k`` copies of ``overdue_remaining(e)`` when every quantile
        has passed. O(k + log levels)."""
        p0 = self._past(elapsed)
        if p0 is None:
            return [overdue_remaining(elapsed)] * k
        # :meth:`quantile` inlined, the same arithmetic (the controller prices every idle candidate this way each step)
        g = self.gaps
        n = len(g) - 1
        rest = 1.0 - p0
        out = []
        for j in range(k):
            x = min(max(p0 + (j + 0.5) / k * rest, 0.0), 1.0) * n
            i = min(int(x), n - 1)
            t = x - i
            q = g[i] if t == 0.0 else (math.inf if g[i + 1] == math.inf else g[i] + (g[i + 1] - g[i]) * t)
            out.append(q - elapsed if q > elapsed else 0.0)
        return out

    def p_back_within(self, elapsed: float, window: float) -> float:
        """P(next request within ``window`` s | idle ``elapsed`` s so far) = ``(F(e + w) - F(e)) / (1 - F(e))``."""
        p0 = self._past(elapsed)
        if p0 is None:
            return 1.0 if overdue_remaining(elapsed) <= window else 0.0
        return (self.cdf(elapsed + window) - p0) / (1.0 - p0)

    def expected_hold(self, elapsed: float, cap: float) -> float:
        """E[min(remaining gap, cap) | idle ``elapsed``]: seconds its room stays blocked, at most ``cap``;
        the exact integral ``∫ min(Q(u) - e, cap) du / (1 - F(e))`` over ``u > F(e)`` (each
        quantile segment linear in ``u``), so the extreme stored quantiles (levels 0 and 1) weigh
        only their share of the distribution, not one sample's worth each."""
        p0 = self._past(elapsed)
        if p0 is None:
            return min(overdue_remaining(elapsed), cap)
        g, u = self.gaps, FORECAST_LEVELS
        total = 0.0
        for i in range(len(g) - 1):
            lo, hi = max(u[i], p0), u[i + 1]
            if lo >= hi:
                continue
            span = hi - lo
            if math.isinf(g[i + 1]):
                total += span * cap
                continue
            ya, yb = max(self.quantile(lo) - elapsed, 0.0), max(g[i + 1] - elapsed, 0.0)
            if yb <= cap:
                total += span * (ya + yb) / 2
            elif ya >= cap:
                total += span * cap
            else:
                t = (cap - ya) / (yb - ya)
                total += span * (t * (ya + cap) / 2 + (1.0 - t) * cap)
        return total / (1.0 - p0)


def _monotone(xs: list[float]) -> list[float]:
    out, top = [], 0.0
    for x in xs:
        top = max(top, x)
        out.append(top)
    return out


@dataclass
class ThreadState:
    """A thread's latest request: its blocks (prompt + output), growth since the previous one, hashes."""

    blocks: int = 0
    growth: int = 0
    hashes: tuple[Hashable, ...] = ()
    shared: float = 0.0


@dataclass
class LiveRequest:
    """A request that arrived and did not finish."""

    session: str
    thread: str | None
    prompt_blocks: int
    arrived: float
    waiting: bool = True
    forecast: Forecast | None = None
    reference: Forecast | None = None  # the no-model forecast made with it (the forecast judge's)
    named: tuple[str, str] | None = None  # (session, thread) named by the predictor
    remaining: float | None = None  # the remaining-work label made with it


@dataclass
class SessionState:
    """One session (module doc). ``first_arrival`` orders sessions program-level FCFS."""

    key: str
    first_arrival: float
    threads: dict[str, ThreadState] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    idle_since: float | None = None
    forecast: Forecast | None = None
    reference: Forecast | None = None
    finished_calls: int = 0
    remaining: float | None = None  # remaining-work label at its last finished call (module doc)
    resident: bool = False
    demoted: bool = False

    def expired(self, now: float) -> bool:
        """Idle past its forecast's expiry (ended as far as the forecast knows)."""
        if self.idle_since is None or self.forecast is None:
            return False
        return now - self.idle_since >= self.forecast.expiry


class SessionView:
    """Sessions, threads, live requests and forecasts of one engine (module doc)."""

    def __init__(
        self,
        block_size: int,
        verdict: Callable[[], bool] | None = None,
        max_hashes: int = 131072,
        max_sessions: int = 16384,
        pressure: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if block_size < 1 or max_hashes < 1 or max_sessions < 1:
            raise ValueError("block_size, max_hashes and max_sessions must be >= 1")
        self.block_size = block_size
        self._verdict = verdict
        self._pressure = pressure
        self._max_hashes = max_hashes
        self._max_sessions = max_sessions
        self._sessions: dict[str, SessionState] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # sessions with no live request, longest idle first
        self._requests: dict[str, LiveRequest] = {}
        self._hash_refs: dict[Hashable, int] = {}
        self._tips: OrderedDict[Hashable, tuple[str, str]] = OrderedDict()  # hash -> (thread, session or "")
        self._next_thread = 0
        self.host = HostSets(self._sessions.__contains__)
        self.shortage = MemoryShortage()  # whether memory has proved short: fed by on_scheduled
        self.judge: ForecastJudge | None = None  # set once, by the residency scheduler
        self.new_session_remaining = 0.0  # the remaining-work model's label of a session with no finished call
        self._families: set[str | None] = set()  # traffic families the arrivals declared (None: undeclared)

    # ----------------------------------------------------------- write events
    def follow(self, verdict: Callable[[], bool], pressure: Callable[[], tuple[int, int]] | None = None) -> None:
        """Read :attr:`trusted` from ``verdict`` (the GPU pool's guard) and :attr:`pressure` from
        ``pressure`` (its eviction counts); set once, when the pool is built."""
        self._verdict = verdict
        self._pressure = pressure

    def on_call(
        self, hashes: Sequence[Hashable], prompt_blocks: int, thread: str | None, session: str | None
    ) -> tuple[str, str]:
        """A call finished with full-block ``hashes`` (the first ``prompt_blocks`` its prompt's):
        its (thread, session), registered in the thread index (module doc).

        ``thread``: the client's thread id (no index search), else the thread of the latest
        registered hash of the prompt chain, else a new one; ``session``: the client's session
        id, else the found thread's session, else the thread itself.
        """
        found = (thread, "") if thread is not None else self._search(hashes, prompt_blocks, touch=True)
        if found is None:
            self._next_thread += 1
            found = (f"t{self._next_thread}", "")
        name, owner = found
        key = session or owner or name
        tips = self._tips
        for idx in {prompt_blocks - 1, len(hashes) - 1}:
            if idx >= 0:
                tips[hashes[idx]] = (name, key)
                tips.move_to_end(hashes[idx])
                if len(tips) > self._max_hashes:
                    tips.popitem(last=False)
        return name, key

    def on_arrival(
        self, request_id: str, session: str | None, thread: str | None, num_tokens: int, now: float, family: str | None = None
    ) -> str:
        """A request of ``num_tokens`` prompt tokens entered the queue; returns its session key.

        ``session`` None: provisional session ``"?" + request_id`` until the predictor names it.
        ``family``: the traffic family the client declared (None: none). A request id already live
        is ignored (vLLM re-queues preempted requests itself).
        """
        if request_id in self._requests:
            return self._requests[request_id].session
        families = self._families
        if family not in families and len(families) >= MAX_FAMILIES:
            family = None  # past the bound every new name counts as undeclared (it is uncertified either way)
        families.add(family)
        key = session if session else PROVISIONAL + request_id
        state = self._sessions.get(key)
        if state is None:
            state = self._sessions[key] = SessionState(key, now)
            self._trim()
        self._requests[request_id] = LiveRequest(key, thread, -(-num_tokens // self.block_size), now)
        state.live.add(request_id)
        state.waiting.add(request_id)
        self._returned(state, now)
        state.idle_since = None
        self._idle.pop(key, None)
        return key

    def on_scheduled(self, request_id: str, computed_tokens: int | None = None) -> None:
        """The request got its first schedule (it is running now). Given ``computed_tokens``, the tokens of
        its prompt found cached (vLLM's ``num_computed_tokens`` at its first schedule), records its prefill,
        and as recomputed the full blocks its thread held after its last call that were not found, in
        :attr:`shortage`."""
        req = self._requests.get(request_id)
        if req is not None and req.waiting:
            req.waiting = False
            state = self._sessions[req.session]
            state.waiting.discard(request_id)
            if computed_tokens is None:
                return
            cached = computed_tokens // self.block_size
            thread = state.threads.get(req.thread or req.session)
            held = min(len(thread.hashes), req.prompt_blocks) if thread is not None else 0
            self.shortage.record(max(req.prompt_blocks - cached, 0), max(held - cached, 0))

    def on_forecast(
        self,
        request_id: str,
        session: str,
        thread: str,
        forecast: Forecast | None,
        reference: Forecast | None = None,
        remaining: tuple[float, float] | None = None,
    ) -> None:
        """The predictor's answer for a finishing request: its (session, thread), return forecast,
        the no-model ``reference`` forecast the judge scores it against and ``remaining``: the
        remaining-work label of its session and the model's ``new_session_label`` (module doc).
        Applied by the :meth:`on_finished` that follows; ignored for an unknown request."""
        req = self._requests.get(request_id)
        if req is not None:
            req.named = (session, thread)
            req.forecast = forecast
            req.reference = reference
            if remaining is not None:
                req.remaining, self.new_session_remaining = remaining

    def on_finished(self, request_id: str, num_tokens: int, hashes: Sequence[Hashable], now: float) -> str | None:
        """The request finished holding ``num_tokens`` tokens with full-block ``hashes``.

        Re-keys a provisional session to the predictor's name, updates the thread's blocks,
        growth and hashes, and makes the session idle (with the forecast) if nothing else
        of it is live. Returns the session's key; unknown request ids are ignored (None).
        """
        req = self._requests.pop(request_id, None)
        if req is None:
            return None
        key = req.session
        thread = req.thread
        self._sessions[key].live.discard(request_id)
        self._sessions[key].waiting.discard(request_id)
        if req.named is not None:
            named_session, thread = req.named
            if named_session != key and key.startswith(PROVISIONAL):
                key = self._merge(key, named_session)
        state = self._sessions[key]
        t = state.threads.setdefault(thread or key, ThreadState())
        blocks = -(-num_tokens // self.block_size)
        t.growth = max(blocks - t.blocks, 0) if t.blocks else 0
        t.blocks = blocks
        self._set_hashes(t, tuple(hashes))
        refs = self._hash_refs
        t.shared = sum(1.0 - 1.0 / refs[h] for h in t.hashes)
        state.finished_calls += 1
        if req.forecast is not None:
            state.forecast, state.reference = req.forecast, req.reference
        if req.remaining is not None:
            state.remaining = req.remaining
        if not state.live:
            self._went_idle(state, now)
        return key

    def on_aborted(self, request_id: str, now: float) -> None:
        """The request left without a result (aborted): it is no longer live."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        state = self._sessions[req.session]
        state.live.discard(request_id)
        state.waiting.discard(request_id)
        if not state.live:
            self._went_idle(state, now)

    def set_residency(self, key: str, resident: bool, demoted: bool = False) -> None:
        """Written by the residency controller only."""
        state = self._sessions[key]
        state.resident = resident
        state.demoted = demoted

    def forget(self, now: float) -> list[str]:
        """Drop sessions with no live request that are idle past their forecast's expiry; their keys."""
        gone = [k for k, s in self._sessions.items() if not s.live and s.expired(now)]
        for key in gone:
            self._drop(key)
        return gone

    # ---------------------------------------------------------------- queries
    def traffic_within(self, families: frozenset[str]) -> bool | None:
        """Whether every request that arrived declared a family in ``families``; None before any
        arrived. Once False, False for good (the declared families are never forgotten). O(families seen)."""
        seen = self._families
        return None if not seen else all(family is not None and family in families for family in seen)

    @property
    def trusted(self) -> bool:
        """Whether the model's forecasts may be acted on now: the guard's verdict (True without one)."""
        return self._verdict is None or self._verdict()

    @property
    def forecasts_trusted(self) -> bool:
        """Whether the model's return forecasts may be acted on by the forecast judge's verdict
        (:mod:`cachewise.runtime.forecast_judge`): False without a judge and before it scored a
        return (a predictor that reports no reference forecast is never judged, so never trusted)."""
        return self.judge is not None and self.judge.scored > 0 and self.judge.trusted

    @property
    def reference_preferred(self) -> bool:
        """Whether the forecast judge has scored returns and does not trust the model's return
        forecasts: the no-model reference forecasts are then the ones to act on (residency rule 5)."""
        return self.judge is not None and self.judge.scored > 0 and not self.judge.trusted

    @property
    def pressure(self) -> tuple[int, int] | None:
        """The pool's ``(evictions so far, demoted free blocks)`` now (module doc); None without a pool reader."""
        return None if self._pressure is None else self._pressure()

    def get(self, key: str) -> SessionState | None:
        return self._sessions.get(key)

    def session_of(self, request_id: str) -> str | None:
        """Session key of a live request."""
        req = self._requests.get(request_id)
        return None if req is None else req.session

    def live_request(self, request_id: str) -> LiveRequest | None:
        return self._requests.get(request_id)

    def __iter__(self) -> Iterator[SessionState]:
        return iter(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def waiting_since(self, key: str) -> float | None:
        """Arrival time of the session's oldest waiting request (None: nothing waits)."""
        state = self._sessions[key]
        return min((self._requests[r].arrived for r in state.waiting), default=None)

    def remaining_of(self, key: str) -> float:
        """The session's remaining-work label (module doc): its own, else the model's label for a
        session with no finished call, else 0 (no remaining-work model reported: every session ties)."""
        own = self._sessions[key].remaining
        return own if own is not None else self.new_session_remaining

    def working_set(self, key: str, grown: bool = True) -> float:
        """Blocks the session needs resident (module doc); ``grown`` false: without the predicted growth,
        the blocks it holds now or its live requests need (its *present* KV)."""
        state = self._sessions[key]
        total = sum(t.blocks + (t.growth if grown else 0) - t.shared for t in state.threads.values())
        known = state.threads
        for rid in state.live:
            req = self._requests[rid]
            t = known.get(req.thread or key)
            if t is None:
                total += req.prompt_blocks
            elif req.prompt_blocks > (have := t.blocks + (t.growth if grown else 0)):
                total += req.prompt_blocks - have
        return total

    def live_blocks(self) -> float:
        """The present KV (:meth:`working_set`, ``grown`` false) of the sessions with live requests, summed. O(sessions)."""
        return sum(self.working_set(state.key, grown=False) for state in self._sessions.values() if state.live)

    def exclusive_hashes(self, key: str) -> list[Hashable]:
        """Hashes of the session's threads that no other session's thread holds."""
        own: dict[Hashable, int] = {}
        for t in self._sessions[key].threads.values():
            for h in t.hashes:
                own[h] = own.get(h, 0) + 1
        refs = self._hash_refs
        return [h for h, n in own.items() if refs.get(h, 0) == n]

    def hash_refs(self, block_hash: Hashable) -> int:
        return self._hash_refs.get(block_hash, 0)

    def known_thread(
        self, hashes: Sequence[Hashable], prompt_blocks: int, thread: str | None, session: str | None
    ) -> tuple[str | None, str] | None:
        """(thread, session) :meth:`on_call` would give a call with this prompt now, when known
        without issuing a new thread (the client's ids, else the index); None otherwise. Read-only."""
        found = (thread, "") if thread is not None else self._search(hashes, prompt_blocks, touch=False)
        if session:
            return (found[0] if found else None), session
        if found is None:
            return None
        return found[0], found[1] or found[0]

    def indexed_hashes(self) -> int:
        """Entries of the thread index (at most ``max_hashes``)."""
        return len(self._tips)

    # --------------------------------------------------------------- internals
    def _went_idle(self, state: SessionState, now: float) -> None:
        """``state`` has no live request since ``now`` (it joins the idle order's end)."""
        state.idle_since = now
        self._idle[state.key] = None
        self._idle.move_to_end(state.key)
        self._trim()

    def _returned(self, state: SessionState, now: float) -> None:
        """An idle ``state`` is back at ``now``: the judge scores the forecasts made at its last finish."""
        if self.judge is not None and state.idle_since is not None and state.forecast is not None and state.reference is not None:
            self.judge.score(state.forecast, state.reference, max(now - state.idle_since, 0.0))

    def _trim(self) -> None:
        """Drop the longest idle sessions while more than ``max_sessions`` are known."""
        while len(self._sessions) > self._max_sessions and self._idle:
            self._drop(next(iter(self._idle)))

    def _drop(self, key: str) -> None:
        self._idle.pop(key, None)
        for t in self._sessions.pop(key).threads.values():
            self._set_hashes(t, ())
        self.host.forget(key)

    def _search(self, hashes: Sequence[Hashable], prompt_blocks: int, touch: bool) -> tuple[str, str] | None:
        """The index entry of the latest registered hash among the first ``prompt_blocks``."""
        tips = self._tips
        for i in range(min(prompt_blocks, len(hashes)) - 1, -1, -1):
            entry = tips.get(hashes[i])
            if entry is not None:
                if touch:
                    tips.move_to_end(hashes[i])
                return entry
        return None

    def _set_hashes(self, t: ThreadState, hashes: tuple[Hashable, ...]) -> None:
        """``t`` holds ``hashes`` now: ``hash_refs`` drop its old hashes and count the new ones
        (a grown prompt, whose old hashes are a prefix of the new, only counts its new suffix)."""
        refs = self._hash_refs
        old = t.hashes
        if old and hashes[: len(old)] == old:
            for h in hashes[len(old) :]:
                refs[h] = refs.get(h, 0) + 1
            t.hashes = hashes
            return
        for h in old:
            n = refs[h] - 1
            if n:
                refs[h] = n
            else:
                del refs[h]
        for h in hashes:
            refs[h] = refs.get(h, 0) + 1
        t.hashes = hashes

    def _merge(self, provisional: str, key: str) -> str:
        """Move provisional session ``provisional`` into ``key`` (created if new); returns ``key``."""
        src = self._sessions.pop(provisional)
        self._idle.pop(provisional, None)
        dst = self._sessions.get(key)
        if dst is None:
            src.key = key
            self._sessions[key] = src
            dst = src
        else:
            dst.first_arrival = min(dst.first_arrival, src.first_arrival)
            dst.live |= src.live
            dst.waiting |= src.waiting
            for name, t in src.threads.items():
                if name in dst.threads:
                    self._set_hashes(t, ())
                else:
                    dst.threads[name] = t
            dst.resident = dst.resident or src.resident
            if dst.idle_since is not None and src.first_arrival >= dst.idle_since:
                self._returned(dst, src.first_arrival)  # its provisional request was its return
            if dst.live:
                dst.idle_since = None
                self._idle.pop(key, None)
        for rid in dst.live:
            self._requests[rid].session = key
        self.host.merge(provisional, key)
        return key
