"""vLLM scheduler subclasses: prefix-aware admission, and session residency.

Residency (``--scheduler-cls cachewise.runtime.scheduler.ResidencyAsyncScheduler``, or
``ResidencyScheduler`` with async scheduling off; settings
``additional_config["cachewise"]["residency"]``, :class:`~cachewise.runtime.config.ResidencySettings`):
the scheduler reads the engine's one :class:`~cachewise.runtime.sessions.SessionView` (its
pool's ``sessions``: created by the plugin's wiring, written by the plugin's scheduler hooks
-- request arrived, first scheduled, finished, aborted -- and by the predictor -- each
finished call's session, thread and return forecast) and, before each of vLLM's
``schedule()`` calls, asks the :class:`~cachewise.runtime.residency.ResidencyController` for a plan:
never-scheduled waiting requests of held sessions are taken out of the waiting queue for
that call and put back in their places after it (preempted requests are never held);
demoted sessions' exclusive cached blocks become the pool's first evicted
(:meth:`~cachewise.runtime.block_pool.ScoredBlockPool.demote`). The controller plans at a step
at which the requests changed -- their signature (arrivals so far, requests, waiting, running)
differs from the last plan's: one arrived, finished, was scheduled or preempted -- or once
``residency.replan_s`` seconds have passed since the last plan; in between (decode steps in which
nothing the plan reads but the clock has changed) the call holds the last plan's sessions, O(waiting
requests) instead of a plan's O(sessions + held prompts' blocks) (``residency_steps`` counts plans,
``residency_reused`` the other calls). Everything a plan reads that the signature misses -- the
clock, the pool's eviction pressure and cached prefixes, the guard's verdict -- is at most
``replan_s`` old when acted on. A request that arrives for a
session that is not resident while the controller acts is *withheld* from the pool's arrival
rule (:meth:`ResidencyMixin.withhold_arrival`; the rule keeps a queued request's cached prefix
until it is served) and announced when its session is admitted: held, a session may wait
minutes, and marked at arrival its prefix was evicted last that whole time (a demoted
session's blocks left the demoted state) at the resident sessions' expense; the guard's
learned shadow, fed by the same arrival, then lost to LRU's and the guard switched back and
forth (7 switches in one replay, README "Session residency"). The view reads the pool's
online guard (:meth:`~cachewise.runtime.block_pool.ScoredBlockPool.serves_learned`): while
the guard serves vLLM's order -- and, with ``residency.judge``, the forecast judge
(:mod:`cachewise.runtime.forecast_judge`, given to the view here) does not find the model's return
forecasts better than the no-model ones -- the controller acts on the no-model reference forecasts
once the judge has scored a return (``residency.judge_fallback``), and before that, or without a
judge, holds and demotes nothing, so the step is vLLM's scheduling (Prometheus
``cachewise_residency_following_model``, ``cachewise_residency_reference_forecasts``), and the pool's eviction
pressure (:meth:`~cachewise.runtime.block_pool.ScoredBlockPool.eviction_pressure`), by which the
controller prices a demotion. Sessions are keyed by the
client's ``session_id`` (``Request.session_id`` or the hint), else by the view's thread
index (:func:`~cachewise.runtime.request_calls.arrival_keys`). Any exception in
this logic logs one warning and turns residency off for good: the scheduler is vLLM's
from then on (held requests are restored first; the view stays, written by the hooks, for
the CPU-tier policy). Residency applies to the FCFS policy and needs CacheWise's pool
(``additional_config["cachewise"]`` or a binding).
With vLLM's offloading connector running the CacheWise CPU-tier policy, admission counts the
host tier (residency rule 6: idle admitted sessions beyond the GPU room live on the host), and
the same step may prefetch idle sessions' prefixes from the host (settings
``additional_config["cachewise"]["prefetch"]``, :mod:`cachewise.runtime.prefetch`): internal
requests added here, hidden from ``update_from_output``'s outputs; any error turns prefetch
off only.

Prefix-aware admission: waiting requests with larger cached-prefix hits go first.

Use with ``--scheduler-cls cachewise.runtime.scheduler.PrefixAwareAsyncScheduler`` (vLLM
0.33 schedules asynchronously by default; a custom ``--scheduler-cls`` is used as given, so
pick the async class unless async scheduling is off, then ``PrefixAwareScheduler``).
Settings: ``additional_config["cachewise"]["scheduler"]`` (:class:`SchedulerSettings`).

Each ``schedule()`` first re-ranks the head of vLLM's FCFS waiting queue (the first
``lookahead`` requests; the rest keep their order behind them), then runs vLLM's own
``schedule()`` unchanged. Rank, first to last:

1. *aged* requests, in queue order: those resumed after preemption, those that waited at
   least ``max_wait_s`` since arrival, and those already passed over ``max_passes`` times;
2. the others by cached-prefix hit (tokens found in the prefix cache now, read-only lookup
   with vLLM's ``find_longest_cache_hit``), largest first, ties in queue order.

A request is *passed over* in a step when a request that was behind it in the queue is
ranked ahead of it. Bound: a request is passed over in at most ``max_passes`` steps and
for at most ``max_wait_s`` seconds; after that only earlier aged requests precede it, so
it is admitted no later than under FCFS among aged requests. Requests holding KV blocks
(vLLM's ``kv_holding_waiting`` queue) are untouched and still drained first. With
``--scheduling-policy priority`` the queue is a heap ordered by priority and is left as
vLLM orders it (ranking applies to FCFS only; logged once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.config import CONFIG_KEY, ConfigError, PrefetchSettings, ResidencySettings, SchedulerSettings
from cachewise.runtime.cpu_policy import find_policy, host_capacity_blocks
from cachewise.runtime.forecast_judge import ForecastJudge
from cachewise.runtime.hooks import chained_groups
from cachewise.runtime.metrics import publish_residency
from cachewise.runtime.policy import engine_clock
from cachewise.runtime.prefetch import PREFIX, Inflight, Prefetcher, PrefetchStats
from cachewise.runtime.prefix_memo import PrefixMemo, vllm_cached_blocks
from cachewise.runtime.request_calls import arrival_keys
from cachewise.runtime.residency import ResidencyController, prefill_seconds, threshold_blocks
from cachewise.runtime.sessions import SessionView

logger = logging.getLogger("vllm.cachewise")


class PrefixRanker:
    """Orders a list of waiting requests (module doc); remembers how often each was passed over."""

    def __init__(
        self,
        settings: SchedulerSettings,
        cached_tokens: Callable[[Request], int],
        clock: Callable[[], float] = engine_clock,
    ) -> None:
        self.settings = settings
        self._cached_tokens = cached_tokens
        self._clock = clock  # the clock of Request.arrival_time: the engine's (pool's) clock
        self._passes: dict[str, int] = {}

    def rank(self, waiting: list[Request]) -> list[Request]:
        """``waiting`` re-ordered; updates pass counts; forgets requests no longer waiting."""
        s = self.settings
        head, tail = waiting[: s.lookahead], waiting[s.lookahead :]
        now = self._clock()
        passes = self._passes
        keyed = []
        for pos, req in enumerate(head):
            aged = (
                req.num_preemptions > 0
                or now - req.arrival_time >= s.max_wait_s
                or passes.get(req.request_id, 0) >= s.max_passes
            )
            hit = 0 if aged else self._cached_tokens(req)
            keyed.append(((0, 0, pos) if aged else (1, -hit, pos), req))
        keyed.sort(key=lambda item: item[0])
        ranked = [req for _, req in keyed]
        # Passed over: some request originally behind it now precedes it.
        max_pos_before = -1
        for key, req in keyed:
            pos = key[2]
            if pos < max_pos_before:
                passes[req.request_id] = passes.get(req.request_id, 0) + 1
            max_pos_before = max(max_pos_before, pos)
        waiting_ids = {req.request_id for req in waiting}
        for rid in [rid for rid in passes if rid not in waiting_ids]:
            del passes[rid]
        return ranked + tail

    def passes(self, request_id: str) -> int:
        """Steps in which the request was passed over so far."""
        return self._passes.get(request_id, 0)


def scheduler_clock(pool: Any) -> Callable[[], float]:
    """The scheduler's clock: its pool's (the binding's: simulated in the replay), else the
    engine clock (:func:`~cachewise.runtime.policy.engine_clock`, that of ``Request.arrival_time``)."""
    return pool.clock if isinstance(pool, ScoredBlockPool) else engine_clock


def _section(vllm_config: Any, name: str, cls: Any) -> Any:
    """``cls`` parsed from ``additional_config["cachewise"][name]`` (defaults when absent or invalid)."""
    extra = getattr(vllm_config, "additional_config", None)
    raw = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    if not isinstance(raw, dict) or raw.get(name) is None:
        return cls()
    try:
        return cls.from_mapping(raw[name])
    except ConfigError as exc:
        logger.warning("CacheWise %s: %s; using defaults", name, exc)
        return cls()


def _scheduler_settings(vllm_config: Any) -> SchedulerSettings:
    return _section(vllm_config, "scheduler", SchedulerSettings)


class PrefixAwareMixin:
    """Adds prefix-hit ranking of the waiting queue to a vLLM scheduler class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix_ranker = PrefixRanker(
            _scheduler_settings(self.vllm_config), self._cached_prefix_tokens, scheduler_clock(self.kv_cache_manager.block_pool)
        )
        if not isinstance(self.waiting, FCFSRequestQueue):
            logger.info("CacheWise scheduler: prefix-aware ranking applies to the fcfs policy only; off")
        logger.info("CacheWise prefix-aware scheduler on: %s", self.prefix_ranker.settings)

    def _cached_prefix_tokens(self, request: Request) -> int:
        """Tokens of ``request`` the prefix cache would serve now (no side effects on blocks)."""
        manager = self.kv_cache_manager
        if request.num_computed_tokens or not manager.prefix_cache_lookup_enabled(request):
            return 0
        _, hit_tokens, _ = manager.coordinator.find_longest_cache_hit(request.block_hashes, request.num_tokens - 1)
        return hit_tokens

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        waiting = self.waiting
        if isinstance(waiting, FCFSRequestQueue) and len(waiting) > 1:
            ranked = self.prefix_ranker.rank(list(waiting))
            waiting.clear()
            waiting.extend(ranked)
        return super().schedule(*args, **kwargs)


class PrefixAwareScheduler(PrefixAwareMixin, Scheduler):
    """vLLM's synchronous ``Scheduler`` with prefix-aware admission."""


class PrefixAwareAsyncScheduler(PrefixAwareMixin, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (the 0.33 default) with prefix-aware admission."""


class ResidencyMixin:
    """Adds session residency (module doc) to a vLLM scheduler class.

    Class attributes a client may override in a subclass (the replay does):
    ``residency_settings`` and ``prefetch_settings`` (None: from ``additional_config``) and
    ``controller_cls``. Prefetch (:mod:`cachewise.runtime.prefetch`) runs when enabled and the
    CacheWise CPU-tier policy is attached with a reload cost (``host_reload_s_per_token`` > 0).
    """

    residency_settings: ResidencySettings | None = None
    prefetch_settings: PrefetchSettings | None = None
    controller_cls: type[ResidencyController] = ResidencyController
    _held_prefixes: PrefixMemo  # set by _start_residency, read only while residency is on

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.prefetcher: Prefetcher | None = None
        self.prefetch_stats = PrefetchStats()
        self.withheld_arrivals: dict[str, Request] = {}  # requests whose arrival the pool has not seen yet
        super().__init__(*args, **kwargs)
        self.sessions: SessionView | None = None
        self.residency: ResidencyController | None = None
        self.residency_cpu_s = 0.0
        self.residency_steps = 0  # steps that planned
        self.residency_reused = 0  # steps that held the last plan's sessions (nothing changed but < replan_s)
        self._arrivals = 0
        self._last_plan: tuple[tuple[int, int, int, int], float, frozenset[str]] | None = None  # (requests, time, held)
        try:
            self._start_residency()
        except Exception as exc:  # noqa: BLE001 - residency is optional; vLLM must start
            self._residency_failed(exc)

    def _start_residency(self) -> None:
        if not isinstance(self.waiting, FCFSRequestQueue):
            raise ConfigError("residency applies to the fcfs scheduling policy only")
        settings = self.residency_settings or _section(self.vllm_config, "residency", ResidencySettings)
        pool = self.kv_cache_manager.block_pool
        if not isinstance(pool, ScoredBlockPool) or pool.sessions is None:
            raise ConfigError("residency needs CacheWise's pool and its session view (additional_config cachewise)")
        # One view, one guard verdict and one eviction pressure: the pool's (residency rule 5, cost rule).
        self.sessions = pool.sessions
        self._held_prefixes = PrefixMemo(self.kv_cache_manager, self.block_size)  # rule 2's lookups
        self.sessions.shortage.share = settings.thrash_share  # the engine's one shortage test (memory_shortage)
        if settings.judge:  # the view scores each return; the controller reads its verdict (rule 5)
            self.sessions.judge = ForecastJudge(
                settings.horizon_s, settings.judge_z, settings.judge_min_returns, settings.judge_half_life,
                trusted=settings.judge_start_trusted,
            )  # fmt: skip
        self._clock: Callable[[], float] = scheduler_clock(pool)
        tier = find_policy(self)  # the CacheWise CPU-tier policy, if vLLM's offloading runs one
        reload = settings.host_reload_s_per_token if tier is not None and tier.view is self.sessions else 0.0
        self.residency = self.controller_cls(
            settings, pool.num_gpu_blocks - 1, self.block_size,
            (lambda n: min(prefill_seconds(settings, n), n * reload)) if reload > 0 else None,
            host_capacity_blocks(self) if reload > 0 else 0,
        )  # fmt: skip
        logger.info(
            "CacheWise residency on: %s, capacity %d blocks, host tier %d blocks",
            settings, self.residency.capacity, self.residency.host_blocks,
        )  # fmt: skip
        prefetch = self.prefetch_settings or _section(self.vllm_config, "prefetch", PrefetchSettings)
        if prefetch.enabled and reload > 0:
            self.prefetcher = Prefetcher(prefetch, reload, self.block_size, self._gpu_cached_blocks, self.prefetch_stats)
            logger.info("CacheWise prefetch on: %s", prefetch)
        elif prefetch.enabled:
            logger.warning("CacheWise prefetch off: it needs the CacheWise CPU-tier policy and residency.host_reload_s_per_token > 0")

    def withhold_arrival(self, request: Request) -> bool:
        """Asked by the arrival hook (:mod:`cachewise.runtime.hooks`) before the pool marks
        ``request``'s cached prefix *requested* (kept until it is served): True -- the pool is
        told when the controller admits the request's session, not now -- when the controller
        acts (on the model's or the reference forecasts, residency rule 5) and the session is not resident, so its request
        will be held. A held session may wait minutes; marked at arrival, its prefix would be
        evicted last all that time, and a demoted session's blocks would leave the demoted
        state, at the cost of the resident sessions' blocks (module doc). O(prefix blocks)."""
        view, pool = self.sessions, self.kv_cache_manager.block_pool
        if view is None or self.residency is None or not self.residency.acting or pool.expects(request.request_id):
            return False
        session, _ = arrival_keys(view, request)
        state = view.get(session) if session is not None else None
        if state is not None and state.resident:
            return False
        self.withheld_arrivals[request.request_id] = request
        return True

    def _announce_admitted(self, view: SessionView) -> None:
        """Tell the pool of the withheld requests whose sessions are resident now (admitted by
        this step's plan); forget those that finished unserved. O(withheld requests)."""
        pool, manager = self.kv_cache_manager.block_pool, self.kv_cache_manager
        for rid, request in list(self.withheld_arrivals.items()):
            key = view.session_of(rid)
            state = view.get(key) if key is not None else None
            if request.is_finished() or state is None:
                del self.withheld_arrivals[rid]
            elif state.resident:
                del self.withheld_arrivals[rid]
                pool.on_request_arrived(request, chained_groups(manager))

    def _residency_failed(self, exc: BaseException) -> None:
        if not getattr(self, "_residency_off", False):
            logger.warning("CacheWise residency off, vLLM's scheduling continues: %s: %s", type(exc).__name__, exc)
        self._residency_off = True
        self.withheld_arrivals.clear()  # unannounced: their prefixes are kept by the eviction order alone
        self.sessions = None
        self.residency = None
        self.prefetcher = None  # prefetches in flight run to their end (outputs still hidden)

    def add_request(self, request: Request) -> None:
        self._arrivals += 1  # the requests' signature (_hold): an arrival makes the next step plan
        super().add_request(request)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        snapshot, held = self._hold()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if held:
                self._restore(snapshot, held)

    def _hold(self) -> tuple[list[Request], list[Request]]:
        """Apply this step's plan; returns (waiting queue before, requests taken out of it)."""
        view, controller, waiting = self.sessions, self.residency, self.waiting
        if view is None or controller is None or (not waiting and self.prefetcher is None and not controller.restoring):
            return [], []
        start = time.perf_counter()
        planned = False
        try:
            now = self._clock()
            requests = (self._arrivals, len(self.requests), len(waiting), len(self.running))
            last = self._last_plan
            if last is not None and last[0] == requests and now - last[1] < controller.settings.replan_s:
                held_sessions = last[2]  # nothing the plan reads changed but the clock, and not for long
                self.residency_reused += 1
            else:
                planned = True
                loading = {p.session for p in self.prefetcher.inflight.values()} if self.prefetcher is not None else ()
                plan = controller.plan(view, now, len(self.running), loading, self._held_cached(view))
                publish_residency(controller.following_model, view.judge, controller.on_reference, controller.short)
                for key in plan.demoted:
                    self._demote(key)
                if self.withheld_arrivals:
                    self._announce_admitted(view)
                if self.prefetcher is not None and controller.following_model:  # prefetch acts on the model's forecasts only
                    self._prefetch(view, controller, plan, now)
                held_sessions = frozenset(plan.held)
                self._last_plan = (requests, now, held_sessions)
            snapshot = list(waiting)
            held = [
                r
                for r in snapshot
                if r.num_preemptions == 0 and r.num_computed_tokens == 0 and view.session_of(r.request_id) in held_sessions
            ]
            if held:
                waiting.remove_requests(held)
            return snapshot, held
        except Exception as exc:  # noqa: BLE001
            self._residency_failed(exc)
            return [], []
        finally:
            self.residency_cpu_s += time.perf_counter() - start
            self.residency_steps += planned

    def _prefetch(self, view: SessionView, controller: ResidencyController, plan: Any, now: float) -> None:
        """Abort stale prefetches and add due ones (:mod:`cachewise.runtime.prefetch`). Any
        exception turns prefetch off (counted)."""
        pf = self.prefetcher
        assert pf is not None
        try:
            for inflight, reason in pf.stale(view, now):
                self._abort_prefetch(inflight, reason)
            pf.forget(view)
            if len(pf.inflight) < pf.settings.max_inflight:
                pool = self.kv_cache_manager.block_pool
                used, gpu, free = plan.used, plan.gpu, pool.get_num_free_blocks()
                for due in pf.due(view, now):
                    key, resident = due.state.key, due.state.resident
                    if plan.held:
                        pf.skipped(key, "waiting")
                        continue
                    need = pf.blocks_needed(key)
                    admitted = resident or used + due.blocks <= controller.admitted_budget
                    if gpu + due.blocks > controller.budget or not admitted or need > free:
                        pf.skipped(key, "no_room")
                        continue
                    request = pf.build(key, now, resident)
                    if request is None:
                        continue
                    if isinstance(pool, ScoredBlockPool):
                        pool.expect(request.request_id, due.reuse_at, due.expire_at)
                    view.set_residency(key, True)
                    super().add_request(request)  # an expected request: the hooks keep it out of the view
                    used, gpu, free = used + (0 if resident else due.blocks), gpu + due.blocks, free - need
                    if len(pf.inflight) >= pf.settings.max_inflight:
                        break
        except Exception as exc:  # noqa: BLE001 - prefetch is optional; residency and vLLM go on
            pf.stats.errors += 1
            logger.warning("CacheWise prefetch off, residency continues: %s: %s", type(exc).__name__, exc)
            self.prefetcher = None

    def _abort_prefetch(self, inflight: Inflight, reason: str) -> None:
        pf = self.prefetcher
        assert pf is not None and self.sessions is not None
        super().finish_requests([inflight.request.request_id], RequestStatus.FINISHED_ABORTED)
        pf.finished(inflight.request.request_id)
        if reason == "arrived":
            pf.stats.aborted_arrived += 1
        else:
            pf.stats.aborted_waited += 1
            state = self.sessions.get(inflight.session)
            if state is not None and not state.live:  # back to its residency before the prefetch
                self.sessions.set_residency(inflight.session, inflight.was_resident, demoted=not inflight.was_resident)

    def _restore(self, snapshot: list[Request], held: list[Request]) -> None:
        """Put ``held`` back into the waiting queue at their places of ``snapshot`` (new entries first)."""
        pos = {id(r): i for i, r in enumerate(snapshot)}
        merged = sorted([*held, *self.waiting], key=lambda r: pos.get(id(r), -1))
        self.waiting.clear()
        self.waiting.extend(merged)

    def _held_cached(self, view: SessionView) -> dict[str, float]:
        """Per session with withheld requests: the largest share of such a request's prompt (full blocks)
        that vLLM's GPU prefix cache holds now (residency rule 2's ``readmit_cached``; empty when it is off),
        *capped at the threshold*: rule 2 reads only ``share >= readmit_cached``, so each lookup stops at the
        fewest leading blocks ``n`` with ``n / blocks >= readmit_cached`` (the same float comparison, so the
        verdict is the uncapped share's). Each request's cached blocks are remembered between plans
        (:mod:`cachewise.runtime.prefix_memo`): a plan checks that they are still cached and probes only past
        them. O(withheld requests x min(prefix blocks, n)) attribute reads, O(newly cached blocks + 1) probes."""
        if self.residency is None or not (readmit := self.residency.readmit_cached):
            return {}
        shares: dict[str, float] = {}
        memo = self._held_prefixes
        for rid, request in self.withheld_arrivals.items():
            key = view.session_of(rid)
            if key is not None:
                blocks = max((request.num_tokens - 1) // self.block_size, 1)
                need = threshold_blocks(readmit, blocks)
                shares[key] = max(shares.get(key, 0.0), memo.leading(request, need) / blocks)
        memo.forget(self.withheld_arrivals)
        return shares

    def _gpu_cached_blocks(self, request: Request) -> int:
        """Leading full blocks of ``request`` vLLM's GPU prefix cache holds now (the prefetcher's read-only lookup)."""
        return vllm_cached_blocks(self.kv_cache_manager, request, self.block_size)

    def _demote(self, key: str) -> None:
        """The demoted session's exclusive cached blocks become the pool's first evicted."""
        manager = self.kv_cache_manager
        pool = manager.block_pool
        if isinstance(pool, ScoredBlockPool) and self.sessions is not None:
            groups = [gid for gid, size in chained_groups(manager) if size == pool.hash_block_size]
            pool.demote(self.sessions.exclusive_hashes(key), groups)

    def session_finished(self, key: str, request: Request) -> None:
        """Called by the view's writer (the ``update_from_output`` hook) after a user request of
        session ``key`` finished: the request a prefetch would mirror."""
        if self.prefetcher is not None and self.sessions is not None:
            self.prefetcher.on_finished(key, request)

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        pf = self.prefetcher
        scheduled = [self.requests.get(rid) for rid in scheduler_output.num_scheduled_tokens] if pf is not None else []
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for req in scheduled:
            if req is not None and req.is_finished() and pf.finished(req.request_id) is not None:
                pf.stats.completed += 1
        if self.prefetch_stats.issued:
            _hide_prefetches(outputs)
        return outputs


def _hide_prefetches(outputs: dict[int, Any]) -> None:
    """Remove prefetch requests' outputs and finishes from ``update_from_output``'s result (in place)."""
    for eco in outputs.values():
        eco.outputs = [o for o in eco.outputs if not o.request_id.startswith(PREFIX)]
        if eco.finished_requests:
            eco.finished_requests = {r for r in eco.finished_requests if not r.startswith(PREFIX)}


class ResidencyScheduler(ResidencyMixin, Scheduler):
    """vLLM's synchronous ``Scheduler`` with session residency."""


class ResidencyAsyncScheduler(ResidencyMixin, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (the 0.33 default) with session residency."""
