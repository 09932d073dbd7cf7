"""Which agent sessions keep their KV on the GPU: admission and demotion, from the session view.

Pure decision logic (no vLLM imports): :class:`ResidencyController` reads a
:class:`~cachewise.runtime.sessions.SessionView`, writes only the ``resident`` /
``demoted`` flags through it, and returns a :class:`Plan` the scheduler applies
(:mod:`cachewise.runtime.scheduler`). The measurements behind each rule and setting are in
``docs/results/residency.md`` (one section per rule, named below); the section "The controller's rules
with their measurements" keeps this docstring's earlier text, which carried them inline.

Rules, evaluated at each plan (:meth:`ResidencyController.plan`; the scheduler plans when the requests
changed and every ``replan_s``, :class:`~cachewise.runtime.scheduler.ResidencyMixin`):

1. *Residency.* A session whose request is admitted becomes *resident*; it stays resident while it has
   live requests and, when idle, until it is demoted or idle past its forecast's expiry. Waiting
   requests of resident sessions are never held (with a host tier, see rule 6).
2. *Admission.* Non-resident sessions with waiting requests are taken in the *admission order*
   (``admission_order``), first to last: sessions past the starvation bound (rule 4); with a host tier
   and ``area`` or ``smallest``, rule 6's returning admitted sessions; with ``readmit_cached`` > 0 and
   no tier, held sessions whose waiting request finds at least that share of its prompt in the GPU's
   prefix cache (the scheduler reads it at each plan, :meth:`ResidencyMixin._held_cached
   <cachewise.runtime.scheduler.ResidencyMixin._held_cached>`: a held session's blocks are the first
   evicted, so admitted now it recomputes nothing, held it may lose its prefix); then, for ``area``
   (default), the smallest predicted KV *area* -- :func:`area`, the working set times the seconds the
   remaining-work model predicts the session still runs (0 for all without that model, making ``area``
   ``smallest``) -- then the smallest working set (``smallest``: that alone), then first arrival, then
   key; ``fcfs`` is program-level FCFS (first arrival, then key). Smallest area first is
   shortest-job-first over room-time: a session holds its working set for as long as it runs, so its
   area is the room-time it takes from those behind it. The head is admitted when ``Σ resident working
   sets + its working set <= budget`` (below). Otherwise idle resident sessions whose demotion pays
   (the cost rule below) are *demoted*, best first, when and only when that makes the head fit; with
   ``area`` and a head not past the bound, *preemption by area* adds the idle residents whose area
   exceeds ``preempt_area_ratio`` times the head's, largest first (shortest-remaining-first with
   preemption; the ratio keeps it to clear cases, the areas being predictions). Else the head and every
   later session wait: a later session never overtakes. A held session's arrival is withheld from the
   pool's arrival rule until its session is admitted (:meth:`ResidencyMixin.withhold_arrival
   <cachewise.runtime.scheduler.ResidencyMixin.withhold_arrival>`), so its prefix is not kept as a
   queued request's at the residents' expense while it waits.
3. *Shedding.* Sessions are admitted at their working set of the moment, and an agent's prompt grows
   several-fold, so the residents outgrow the cache. While a session waits and ``Σ resident working
   sets > budget``, idle residents whose demotion pays are demoted, best first, until the rest fit or
   none is left. While they exceed the whole ``capacity`` (keeping them all is not an option: the pool
   would evict residents' blocks anyway), idle residents are demoted best first whether or not their
   demotion pays and whether or not a session waits, until the rest fit the capacity. A session with a
   live request is never demoted.
4. *Starvation bound.* A session whose oldest waiting request arrived ``max_wait_s`` ago, or that was
   held in ``max_passes`` plans, goes first and is admitted even if it does not fit (vLLM's own KV
   admission still applies); when no resident session has a live request the head is admitted anyway
   (the engine never idles on the controller). Both count as *forced*. The bound is checked once per
   step, so a wait can pass it by up to one step (more only where vLLM's KV admission holds it back).
5. *Acting or passing through.* The controller acts while the GPU pool's online guard
   (:mod:`cachewise.runtime.guard`, :attr:`SessionView.trusted
   <cachewise.runtime.sessions.SessionView.trusted>`) or the *forecast judge* (``judge``,
   :mod:`cachewise.runtime.forecast_judge`: the model's return forecasts scored at every return
   against the no-model *reference* forecast of the same call; from its first scored return, starting
   trusting, ``judge_start_trusted``, since a thrashing cache degrades the model's inputs) trusts the
   model.
   While neither does, with ``judge_fallback`` and a scored return it acts on the reference forecasts
   (:attr:`~ResidencyController.on_reference`); otherwise it *passes through*: every waiting session
   is admitted, nothing is held or demoted, and the step is vLLM's own ``schedule()`` on vLLM's order
   (holding itself is what can lose on traffic the model does not know). Each change is logged once
   and counted (:attr:`~ResidencyController.passthrough_steps`).
   *Which forecasts* (``forecasts``, default ``reference``): while acting, rules 1-3 read the reference
   forecasts whatever the verdict (the model's where a session has none; ``model``: the model's while
   a verdict trusts them); the verdicts still decide acting, the pool's order and the prefetcher's.
   *Restoring*: on resuming after passing through, the residents are whatever vLLM admitted, so until
   ``Σ resident working sets <= budget`` idle residents are demoted best first at every plan, whether
   or not a session waits or their demotion pays.
   *Thrashing* (``act_when_thrashing``, off by default): the first step at which, passing through,
   ``Σ resident working sets > capacity + host_blocks`` latches acting on the model for the rest of
   the run (restoring as above); the guard's verdict still decides the pool's and the host policy's
   order. This gives up "exactly vLLM's scheduling" from that step on.
6. *Host tier* (``host_blocks`` > 0: vLLM's offloading connector runs the CacheWise CPU-tier policy on
   this view, :func:`~cachewise.runtime.cpu_policy.host_capacity_blocks`). Admission counts two sets:
   the *admitted* (all resident) sessions, against the admitted budget (GPU + host, less the reserve
   against ``capacity + host_blocks``), and those that *need the GPU now* (resident with a request
   vLLM scheduled, returning admitted ones once they pass, prefetches in flight, ``loading``), against
   the GPU budget. Rules 2-4 apply to the admitted set; idle residents beyond the GPU room live on the
   host (stored by the connector as computed, evicted from the GPU by the learned order, loaded back
   by :mod:`cachewise.runtime.prefetch`). A head that fails only the GPU check waits: demoting idle
   sessions frees no GPU room the live ones need. A returning admitted session takes its place in
   rule 2's order and passes when ``Σ GPU set + its working set <= capacity`` (the headroom is its to
   use). With ``host_blocks`` 0 the GPU check is implied by the admitted one, so the rule *is* rules
   1-5, plan for plan.

*The budget* of a step is ``capacity - reserve``, ``reserve = min(headroom * capacity, max(demand -
capacity, 0))``, ``demand`` the working sets of the resident and the waiting sessions at the step's
start (:meth:`ResidencyController.reserve`): room kept for the residents' growth, only as far as the
demand exceeds the capacity, so no one is held while everyone fits.

*Standing aside* (``thrash_share``, default 0.1; ``None``: never). Until memory proves short every
plan admits every waiting session and demotes no one (vLLM's admission on the pool's order). Memory
proves short (:attr:`ResidencyController.short`, the engine's one latched test shared with the guard,
:mod:`cachewise.runtime.memory_shortage`) at the first step at which the sessions with live requests
hold or need more blocks than the capacity (their present KV,
:meth:`SessionView.live_blocks <cachewise.runtime.sessions.SessionView.live_blocks>`), or the engine
has recomputed more than ``thrash_share`` of the blocks it prefilled and of the capacity (both summed
with a half-life of one capacity of prefilled blocks, :meth:`SessionView.on_scheduled
<cachewise.runtime.sessions.SessionView.on_scheduled>`). Where memory suffices the working sets
(forecasts of mostly idle sessions) can pass the capacity while the pool recomputes almost nothing;
holding and shedding there only cost. With a host tier and ``tier_aside`` (default) the controller
also stands aside at every plan at which the demand fits the GPU plus the host (``demand <=
capacity + host_blocks``, ``demand`` as in the budget): a prefix that leaves the GPU then waits on the
host, so holding a session protects nothing, and a live request that finds no GPU room waits in vLLM's
own queue, a request at a time, where a held session waits a whole session. Measured ("The host tier's
standing aside" in ``docs/results/host-tier.md``): at 25% GPU with a host of 4x or more, acting had cost
7% of mean JCT against vLLM's own offloading, and standing aside matches it; at 50% with host 2x it
gives up a 2% gain; at the issue's point (25%, host 2x) no measurable difference.

*The cost rule* ("which demotion pays"). Demoting an idle resident ``j`` (``W_j`` blocks, idle ``e``
seconds, return forecast ``F_j`` read as a piecewise-linear quantile function; remaining gap ``R_j``,
the gap past ``e``; no forecast: ``R_j = overdue_remaining(e)``, :mod:`cachewise.scoring.overdue`)
admits the waiting session now; if j is back while demoted (``R_j <= H``, ``H = horizon_s``) it pays

    D_j(r) = Q + S * lost_j(r)    # its readmission wait, and its recompute stalling the engine
    lost_j(r) = c(W_j) - c(W_j - m_j(r)),   m_j(r) = min(max(eps * r + N - A, 0), W_j)

with ``c(n tokens) = a0 + a_tok n + a_ctx n^2 / 2`` the measured prefill cost model (blocks of
``block_tokens`` tokens).

* *Deferring.* The rule runs again every step, so demoting now competes with demoting ``τ`` seconds
  later if j is still idle. Keeping holds the waiting session ``min(R_j, τ)`` seconds; demoting now
  costs, against deferring by ``τ``, ``drop_j(τ) - keep_j(τ) = E[1{R_j <= τ} D_j(R_j)] - w E[min(R_j, τ)]``.
  Demoting now pays iff ``keep_j(τ) > drop_j(τ)`` for *every* ``τ <= H`` (the forecast's
  :data:`RETURN_POINTS` equal-mass points of ``R_j`` up to ``H``, and ``H``; between two points
  ``keep - drop`` only grows): a session likely back soon is kept while that is likely, and demoted
  once its short gaps have passed (:func:`deferral_keep_and_drop`). Candidates rank by
  ``keep - drop`` at the binding ``τ``; an ended session (``R = inf``) scores ``H``, the most.
* *What a demotion loses.* It evicts nothing: j's exclusive cached blocks become the pool's first
  evicted (:meth:`ScoredBlockPool.demote <cachewise.runtime.block_pool.ScoredBlockPool.demote>`,
  deepest first), behind the ``A`` blocks already demoted (:attr:`EvictionOrder.demoted_free
  <cachewise.runtime.eviction_order.EvictionOrder.demoted_free>`). The pool evicts ``eps`` cached
  blocks per second (its count over ``pressure_window_s``, :attr:`SessionView.pressure
  <cachewise.runtime.sessions.SessionView.pressure>`), taken as the rate of the next ``r`` seconds,
  and the admission the demotion makes room for (``N``, the waiting session's working set; 0 when
  restoring) is allocated at once from the demoted blocks first: so ``m_j(r)`` of j's blocks, its
  tail, are gone by ``r``, and recomputing a tail of ``m`` behind a cached ``W - m`` costs
  ``c(W) - c(W - m)`` (:meth:`ResidencyController.return_costs`). Without a pool reader ``m_j = W_j``.
  The estimate errs toward keeping (``A`` omits unhashed and expired blocks and the step's earlier
  demotions; ``W_j`` counts shared blocks, which are not demoted).
* *What a demotion delays.* ``Q`` is the mean admission wait of the last :data:`QUEUE_WINDOW`
  admissions of *returning* sessions (Continuum's "queueing delay induced by eviction", measured):
  new sessions queue behind every returning one, so their waits are not what j meets.
* *A busy engine.* ``S`` counts what a recompute stalls: the requests running, the resident sessions'
  requests queued for the engine and the idle resident sessions (j among them); held sessions wait
  for room, which a recompute does not change. ``w = b0 / (b0 + b_seq n + b_ctx T)`` under the
  measured decode model (``n`` running, ``T`` tokens of the live residents' working sets; 1 with
  nothing running) is the share of a decode step one more session gains: the rest of an admitted
  session's progress is the others' slowdown (:meth:`ResidencyController.observe_batch`).

Invariants: a session with a live request is never demoted; a held session is never overtaken by a
later one in the admission order; after a plan, unless a session was forced (rule 4) or the controller
stands aside, ``plan.gpu <= capacity`` whenever it held before the plan (only live sessions' growth
raises it), ``plan.used <=`` the step's admitted budget whenever some session waited (rule 3), and
``plan.gpu <= plan.used``.

Complexity per plan: O(S (log S + RETURN_POINTS)) in the sessions known to the view plus O(sum of
live requests); memory O(sessions + pressure samples of one window) (pass counts are dropped when a
session is admitted; one pressure sample per step, those older than the window dropped but the newest).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.sessions import Forecast, SessionState, SessionView
from cachewise.scoring.overdue import overdue_remaining


logger = logging.getLogger("vllm.cachewise")

QUEUE_WINDOW = 32
"""Admissions of returning sessions over which the queueing delay ``Q`` of the cost rule is averaged."""

RETURN_POINTS = 20
"""Equal-mass points of a forecast's remaining gap over which ``E[lost_j]`` is averaged (one per
5% of probability, the stored forecast's resolution: :data:`~cachewise.runtime.sessions.FORECAST_LEVELS`)."""


@dataclass
class Plan:
    """One step's decision: sessions whose waiting requests may run, and those demoted now."""

    admitted: set[str] = field(default_factory=set)
    held: list[str] = field(default_factory=list)  # in the admission order (rule 2)
    demoted: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)  # admitted by the starvation bound or to avoid idling
    used: float = 0.0  # Σ working sets of the resident (admitted) sessions after this plan (blocks)
    gpu: float = 0.0  # Σ working sets of the sessions that need the GPU now: live ones, prefetches in flight (rule 6)


def area(view: SessionView, key: str, blocks: float) -> float:
    """A session's predicted KV area (rule 2): ``blocks`` x the seconds the remaining-work model predicts it
    still runs (0 for every session without that model). O(1)."""
    return blocks * math.expm1(view.remaining_of(key))


def threshold_blocks(share: float, blocks: int) -> int:
    """The fewest ``n`` in ``0..blocks`` with ``n / blocks >= share`` under float division (``blocks + 1``
    if none), so that ``c / blocks >= share`` iff ``c >= n`` for every count ``c`` (division by a
    positive number is monotone): a prefix lookup for rule 2's verdict may stop after ``n`` blocks. O(1)."""
    n = min(max(math.ceil(share * blocks), 0), blocks + 1)
    while n > 0 and (n - 1) / blocks >= share:
        n -= 1
    while n <= blocks and n / blocks < share:
        n += 1
    return n


def prefill_seconds(settings: ResidencySettings, tokens: int) -> float:
    """Recompute time of ``tokens`` tokens from scratch under the settings' cost model."""
    if tokens <= 0:
        return 0.0
    return settings.prefill_a0 + settings.prefill_a_tok * tokens + settings.prefill_a_ctx * tokens * tokens / 2


def deferral_keep_and_drop(
    points: list[float], costs: list[float], horizon: float, weight: float = 1.0
) -> tuple[float, float]:
    """``(keep(τ*), drop(τ*))`` with ``keep(τ) = weight E[min(R, τ)]``, ``drop(τ) = E[1{R <= τ} D(R)]`` and
    ``τ*`` the deferral minimising ``keep(τ) - drop(τ)`` among the points ``<= horizon`` and ``horizon``
    (module doc, "Deferring" and "A busy engine"), for a remaining gap ``R`` given as equal-mass ``points``
    (non-decreasing) with costs ``D`` at them. O(len(points))."""
    k = len(points)
    passed = 0  # points <= horizon seen so far
    below = cost = 0.0  # Σ r and Σ D(r) over them
    best = (math.inf, 0.0, 0.0)  # (keep - drop, keep, drop)
    for r, d in zip(points, costs):
        if r > horizon:
            break
        passed += 1
        below += r
        cost += d
        keep, drop = weight * (below + r * (k - passed)) / k, cost / k
        best = min(best, (keep - drop, keep, drop))
    keep = weight * (below + horizon * (k - passed)) / k
    best = min(best, (keep - cost / k, keep, cost / k))
    return best[1], best[2]


class ResidencyController:
    """Admission and demotion over a :class:`SessionView` (module doc).

    ``capacity_blocks``: KV blocks of the GPU pool; ``block_tokens``: tokens per block (for
    the cost model; pass trace tokens per block when blocks stand for scaled tokens);
    ``host_blocks``: the host tier's capacity in GPU blocks (rule 6; 0: no tier).
    """

    def __init__(
        self,
        settings: ResidencySettings,
        capacity_blocks: int,
        block_tokens: int,
        recompute_s: Callable[[int], float] | None = None,
        host_blocks: int = 0,
    ) -> None:
        if capacity_blocks < 1 or block_tokens < 1 or host_blocks < 0:
            raise ValueError("capacity_blocks and block_tokens must be >= 1, host_blocks >= 0")
        self.settings = settings
        self.capacity = capacity_blocks
        self.budget = (1.0 - settings.headroom) * capacity_blocks  # the GPU set's budget with the whole reserve (the prefetcher's check)
        self.host_blocks = host_blocks
        self.admitted_capacity = capacity_blocks + host_blocks
        self.admitted_budget = self.budget + host_blocks  # the admitted set's, likewise (rule 6; no tier: = budget)
        self.block_tokens = block_tokens
        self._recompute = recompute_s or (lambda tokens: prefill_seconds(settings, tokens))
        self._passes: dict[str, int] = {}
        self.demotions = 0
        self.forced = 0
        self.longest_wait_s = 0.0
        self._recent_waits: deque[float] = deque(maxlen=QUEUE_WINDOW)
        self._pressure_samples: deque[tuple[float, int]] = deque()  # (time, evictions so far), one per step
        self.eviction_rate = 0.0  # eps: cached blocks evicted per second over the last pressure window
        self.wait_weight = 1.0  # w: the engine's gain from one more session in its batch, b0 / step (module doc)
        self.served = 0  # S of the last plan: requests running or queued and idle resident sessions (module doc)
        self.demoted_ahead: float | None = None  # A: demoted free blocks now; None: no pool reader (m_j = W_j)
        self.following_model = True  # acts on the model's forecasts (rule 5)
        self.on_reference = False  # acts on the no-model reference forecasts: the judge distrusts the model (rule 5)
        self.passthrough_steps = 0
        self.restoring = False  # resumed from pass-through, the residents not yet within the budget (rule 5)
        self.thrash_latched = False  # rule 5's thrashing exception latched: acts on the model whatever the guard says
        self.short = settings.thrash_share is None  # memory has proved short (the view's latch): no longer standing aside

    @property
    def queueing_delay_s(self) -> float:
        """``Q``: mean admission wait of the last :data:`QUEUE_WINDOW` admissions of returning sessions (0 before any)."""
        waits = self._recent_waits
        return sum(waits) / len(waits) if waits else 0.0

    def observe_pressure(self, view: SessionView, now: float) -> None:
        """Read the pool's eviction pressure (module doc): ``A`` now and ``eps`` over the last
        ``pressure_window_s`` (from the newest sample at least that old, or the oldest kept). O(1) amortised."""
        pressure = view.pressure
        if pressure is None:
            self.demoted_ahead, self.eviction_rate = None, 0.0
            return
        evicted, ahead = pressure
        self.demoted_ahead = float(ahead)
        samples = self._pressure_samples
        samples.append((now, evicted))
        start = now - self.settings.pressure_window_s
        while len(samples) > 2 and samples[1][0] <= start:
            samples.popleft()
        t0, e0 = samples[0]
        self.eviction_rate = (evicted - e0) / (now - t0) if now > t0 else 0.0

    def observe_batch(self, running: int, context_blocks: float) -> None:
        """Read the batch's decode step (module doc, "A busy engine"): ``w = b0 / (b0 + b_seq n + b_ctx T)``
        for ``running`` sequences holding ``context_blocks`` blocks; 1 with nothing running or a zero step
        model (the engine gains a whole session). O(1)."""
        s = self.settings
        step = s.decode_b0 + s.decode_b_seq * running + s.decode_b_ctx * context_blocks * self.block_tokens
        self.wait_weight = s.decode_b0 / step if running and step > 0 else 1.0

    def lost_s(self, blocks: float, gap: float, ahead: float) -> float:
        """``lost_j(gap)``: recompute seconds of the tail of ``blocks`` evicted ``gap`` s after a
        demotion behind ``ahead`` blocks, at the last observed eviction rate (module doc)."""
        lost = min(max(self.eviction_rate * gap - ahead, 0.0), blocks)
        if lost <= 0.0:
            return 0.0
        tokens = int(blocks * self.block_tokens)
        return self._recompute(tokens) - self._recompute(tokens - int(lost * self.block_tokens))

    def return_costs(
        self, blocks: float, points: list[float], served: int, incoming: float = 0.0
    ) -> list[float]:
        """``D_j(r)`` of the module doc at each remaining gap ``r`` in ``points``: what j pays if it is back
        ``r`` s after a demotion that makes room for ``incoming`` blocks, its readmission wait ``Q`` plus its
        recompute, which stalls the ``served`` requests and idle resident sessions (j among them, at least 1);
        0 beyond the horizon ``H`` (no return within it is charged). O(len(points))."""
        h = self.settings.horizon_s
        ahead = None if self.demoted_ahead is None else self.demoted_ahead - incoming
        if ahead is None:  # no pool reader: every return recomputes the whole working set
            whole = self._recompute(int(blocks * self.block_tokens))
            lost = [whole] * len(points)
        elif self.eviction_rate * h <= ahead:
            lost = [0.0] * len(points)  # nothing of j's is evicted within the horizon
        else:
            lost = [self.lost_s(blocks, r, ahead) if r <= h else 0.0 for r in points]
        q = self.queueing_delay_s
        stalled = max(served, 1)
        return [q + stalled * x if r <= h else 0.0 for r, x in zip(points, lost)]

    def keep_and_drop(
        self, state: SessionState, blocks: float, now: float, served: int, incoming: float = 0.0
    ) -> tuple[float, float]:
        """``(keep_j(τ*), drop_j(τ*))`` of the module doc for idle session ``state`` holding ``blocks``, with
        ``served`` = ``S`` of the module doc (requests running or queued, idle residents): the deferral
        ``τ*`` (a point of the forecast ``<= H``, or ``H``) that argues most for keeping j; j's demotion pays
        iff ``keep > drop``. Priced under the pressure last read by :meth:`observe_pressure` (none read: every
        return recomputes all) and the batch last read by :meth:`observe_batch` (none: ``w`` = 1), for an
        admission that allocates ``incoming`` blocks at once (``N``: they are taken ahead of the fluid rate,
        the demoted blocks first). O(RETURN_POINTS)."""
        assert state.idle_since is not None
        elapsed = now - state.idle_since
        forecast = self.forecast_of(state)
        if forecast is None:
            points = [overdue_remaining(elapsed)]
        else:
            points = forecast.remaining_points(elapsed, RETURN_POINTS)
        costs = self.return_costs(blocks, points, served, incoming)
        return deferral_keep_and_drop(points, costs, self.settings.horizon_s, self.wait_weight)

    def plan(
        self,
        view: SessionView,
        now: float,
        running: int,
        loading: Collection[str] = (),
        cached: Mapping[str, float] | None = None,
    ) -> Plan:
        """Decide this step's admissions and demotions; updates the view's residency flags.
        ``loading``: sessions whose prefetch is in flight (rule 6; they need the GPU now); ``cached``:
        per held session, the share of its waiting request's prompt the GPU's prefix cache holds now (rule 2)."""
        plan = Plan()
        for state in view:  # idle past the forecast's expiry: no longer resident
            if state.resident and not state.live and self._expired(state, now):
                view.set_residency(state.key, False)
        for key in view.forget(now):
            self._passes.pop(key, None)
        model = view.trusted or view.forecasts_trusted or self._thrashing(view)
        reference = not model and self.settings.judge_fallback and view.reference_preferred
        if (model, reference) != (self.following_model, self.on_reference):
            if not self.acting:
                self.restoring = True  # resumed: the residents are what vLLM's scheduling admitted, not the budget
            elif not (model or reference):
                self.restoring = False
            self.following_model, self.on_reference = model, reference
            logger.info(
                "CacheWise residency: %s",
                "the model's return forecasts score worse than the no-model ones: admission and demotion act on the no-model forecasts"
                if reference
                else "the guard serves vLLM's order: passing every request through as vLLM's scheduler (no hold, no demotion)"
                if not model
                else "the guard trusts the model: admission and demotion act on its forecasts"
                if view.trusted
                else "the model's return forecasts score better than the no-model ones: admission and demotion act on them"
                if view.forecasts_trusted
                else "passing through let the residents outgrow GPU + host: admission and demotion act on the model from now on",
            )
        if not self.acting:
            self.passthrough_steps += 1
            for state in view:  # rule 5: vLLM's scheduling; what it admits counts as resident
                if state.waiting:
                    view.set_residency(state.key, True)
                    plan.admitted.add(state.key)
                    self._passes.pop(state.key, None)
            return plan
        self.observe_pressure(view, now)
        capacity = self.admitted_capacity  # the admitted set's (rule 6; no tier: the GPU's)
        used = 0.0  # admitted set
        gpu = 0.0  # GPU set (rule 6)
        active = False
        served = running  # S: requests running or queued for the engine, and idle resident sessions (a recompute stalls them all)
        idle: list[tuple[SessionState, float]] = []
        waiting: list[SessionState] = []
        needs: dict[str, float] = {}  # the waiting sessions' working sets
        for state in view:
            served += (len(state.waiting) + (not state.live)) if state.resident else 0
            if state.resident:
                blocks = view.working_set(state.key)
                used += blocks
                if self.host_blocks and state.live and state.waiting == state.live:
                    waiting.append(state)  # rule 6: admitted, back, nothing of it on the GPU yet
                    needs[state.key] = blocks
                elif state.live:
                    active = True
                    gpu += blocks
                    if state.waiting:
                        plan.admitted.add(state.key)
                elif state.key in loading:  # its prefetch is in flight: it needs the GPU, it is no candidate
                    gpu += blocks
                else:
                    idle.append((state, blocks))
            elif state.waiting:
                waiting.append(state)
                needs[state.key] = view.working_set(state.key)
        self.observe_batch(running, gpu)
        self.served = served
        demand = used + sum(needs[s.key] for s in waiting if not s.resident)
        budget = capacity - self.reserve(demand, capacity)
        gpu_budget = self.capacity - self.reserve(demand, self.capacity)
        if not self.short:
            self.short = view.shortage.check(view.live_blocks, self.capacity, "residency controller", self.settings.thrash_share)
        # "Standing aside" (module doc): vLLM's admission, no demotion
        aside = not self.short or (self.settings.tier_aside and self.host_blocks > 0 and demand <= capacity)
        waited = {}
        for s in waiting:
            since = view.waiting_since(s.key)
            waited[s.key] = 0.0 if since is None else now - since
        order = self.settings.admission_order
        smallest = order != "fcfs"  # "area" breaks its ties smallest first

        by_area = order == "area"
        readmit, cached = self.readmit_cached, cached or {}

        def rank(s: SessionState) -> tuple:
            blocks = needs[s.key] if smallest else 0.0
            return (
                not self._aged(s.key, waited[s.key]),
                smallest and not s.resident,  # rule 6's returning admitted sessions before new ones
                not (readmit and cached.get(s.key, 0.0) >= readmit),  # prefix still cached: readmitted first
                area(view, s.key, blocks) if by_area else 0.0,
                blocks,
                s.first_arrival,
                s.key,
            )

        waiting.sort(key=rank)
        candidates: list[tuple[float, SessionState, float]] | None = None
        restoring = self.restoring and used > budget
        if not aside and (waiting or restoring or used > capacity) and used > budget:  # rule 3 (and rule 5's restoring; rule 6: the admitted budget)
            head = needs[waiting[0].key] if waiting else 0.0  # restoring alone admits nothing
            ranked = self._candidates(idle, now, served, head)
            while ranked and (used > capacity or restoring or (waiting and used > budget and ranked[0][0] > 0)):
                _, cand, blocks = ranked.pop(0)
                self._demote(view, cand.key, plan)
                used -= blocks
                restoring = restoring and used > budget
            candidates = [c for c in ranked if c[0] > 0]
        self.restoring = self.restoring and used > budget
        blocked = False
        for state in waiting:
            key, admitted = state.key, state.resident  # admitted: rule 6's returning admitted session
            need = needs[key]
            if not blocked:
                aged = self._aged(key, waited[key])
                # a returning admitted session may use the headroom, kept for new admissions' growth;
                # without a tier no session is both admitted and waiting here, and this is implied by the admitted check
                gpu_fits = gpu + need <= (self.capacity if admitted else gpu_budget)
                fits = aside or (gpu_fits and (admitted or used + need <= budget))
                if gpu_fits and not fits:
                    if candidates is None:
                        candidates = [c for c in self._candidates(idle, now, served, need) if c[0] > 0]
                    pool = candidates
                    ratio = self.settings.preempt_area_ratio
                    if ratio and by_area and not aged:  # rule 2's preemption: idle residents of a far larger area
                        floor, listed = ratio * area(view, key, need), {id(p[1]) for p in candidates}
                        sized = ((area(view, c.key, blocks), c, blocks) for c, blocks in idle if c.resident and id(c) not in listed)
                        larger = [c for c in sized if c[0] > floor]
                        pool = candidates + sorted(larger, key=lambda c: (-c[0], c[1].first_arrival, c[1].key))
                    freed, chosen = 0.0, []
                    for _, cand, blocks in pool:
                        if used - freed + need <= budget:
                            break
                        freed += blocks
                        chosen.append(cand)
                    if used - freed + need <= budget:
                        for cand in chosen:
                            self._demote(view, cand.key, plan)
                        gone = {id(c) for c in chosen}
                        candidates = [c for c in candidates if id(c[1]) not in gone]
                        used -= freed
                        fits = True
                if fits or aged or not active:
                    if not fits:
                        plan.forced.append(key)
                        self.forced += 1
                    if not admitted:
                        view.set_residency(key, True)
                        used += need
                    plan.admitted.add(key)
                    gpu += need
                    active = True
                    self._passes.pop(key, None)
                    self.longest_wait_s = max(self.longest_wait_s, waited[key])
                    if state.finished_calls and not admitted:  # a returning session: its wait is what a demoted one meets (Q)
                        self._recent_waits.append(waited[key])
                    continue
                blocked = True
            plan.held.append(key)
            self._passes[key] = self._passes.get(key, 0) + 1
        plan.used, plan.gpu = used, gpu
        return plan

    @property
    def readmit_cached(self) -> float:
        """Rule 2's ``readmit_cached`` in force: the setting, 0 with a host tier (a held session's prefix
        is stored there, not lost while it waits). O(1)."""
        return 0.0 if self.host_blocks else self.settings.readmit_cached

    def reserve(self, demand: float, capacity: float) -> float:
        """Blocks of ``capacity`` kept free of resident working sets this step: the ``headroom``, but no more
        than ``demand`` (the residents' and the waiting sessions' working sets) exceeds ``capacity``. O(1)."""
        return min(max(demand - capacity, 0.0), self.capacity - self.budget)

    @property
    def acting(self) -> bool:
        """Whether the controller admits and demotes (on the model's or the reference forecasts), not passing through."""
        return self.following_model or self.on_reference

    def forecast_of(self, state: SessionState) -> Forecast | None:
        """The forecast the controller acts on for ``state``: the no-model reference while acting on it
        (rule 5) or always with ``forecasts`` ``reference`` (the model's where a session has none), else
        the model's. O(1)."""
        if (self.on_reference or self.settings.forecasts == "reference") and state.reference is not None:
            return state.reference
        return state.forecast

    def _expired(self, state: SessionState, now: float) -> bool:
        """Idle past the expiry of the forecast acted on (:meth:`forecast_of`)."""
        forecast = self.forecast_of(state)
        return state.idle_since is not None and forecast is not None and now - state.idle_since >= forecast.expiry

    def _thrashing(self, view: SessionView) -> bool:
        """Rule 5's thrashing exception (module doc): latched at the first step at which, with
        ``act_when_thrashing`` and passing through, the resident working sets exceed the GPU plus the
        host tier. O(sessions) per step until latched, O(1) after."""
        if not self.thrash_latched and self.settings.act_when_thrashing and not self.acting:
            used = sum(view.working_set(state.key) for state in view if state.resident)
            self.thrash_latched = used > self.admitted_capacity
        return self.thrash_latched

    def _demote(self, view: SessionView, key: str, plan: Plan) -> None:
        view.set_residency(key, False, demoted=True)
        plan.demoted.append(key)
        self.demotions += 1

    def _aged(self, key: str, waited: float) -> bool:
        """Past the starvation bound: waited ``max_wait_s`` or held in ``max_passes`` steps."""
        return waited >= self.settings.max_wait_s or self._passes.get(key, 0) >= self.settings.max_passes

    def _candidates(
        self, idle: list[tuple[SessionState, float]], now: float, served: int, incoming: float
    ) -> list[tuple[float, SessionState, float]]:
        """Idle resident sessions as ``(keep - drop, state, blocks)``, best first, their demotion
        making room for an admission of ``incoming`` blocks; those with ``keep - drop > 0`` are the
        ones whose demotion pays."""
        out = []
        for state, blocks in idle:
            keep, drop = self.keep_and_drop(state, blocks, now, served, incoming)
            out.append((keep - drop, state, blocks))
        out.sort(key=lambda c: (-c[0], c[1].first_arrival, c[1].key))
        return out
