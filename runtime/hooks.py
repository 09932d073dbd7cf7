"""How a ``ScoredBlockPool`` gets into vLLM's real KV-cache manager, without a fork.

Patches, installed once per process by :func:`install_hooks` (idempotent, re-entrant):

1. ``vllm.v1.core.kv_cache_coordinator.BlockPool`` -- the name ``KVCacheCoordinator.__init__``
   calls to build the pool that all KV-cache groups share -- becomes :func:`_build_pool`.
   It builds vLLM's own ``BlockPool`` unless a :class:`PolicyBinding` is active in the
   current context, in which case it builds a :class:`ScoredBlockPool` from the binding.
   With no binding active nothing changes.
2. ``KVCacheManager.free`` and ``KVCacheManager.pop_blocks_for_free`` (the only two ways the
   scheduler hands back a request's blocks, deferred frees included) first call
   ``ScoredBlockPool.on_request_released(request, chains)`` when the manager's pool is a
   scored one. A failure in that call is counted and ignored; the free always happens.
3. ``Scheduler.add_request`` (hence every subclass) first calls
   ``ScoredBlockPool.on_request_arrived(request, groups)`` when the scheduler's pool is a
   scored one, so the free cached prefix of a queued request is kept while it waits --
   unless the scheduler has a ``withhold_arrival(request)`` that returns True (the residency
   scheduler: a request its controller will hold announces its prefix when admitted, and
   sits in its ``withheld_arrivals`` until then). Failures are counted and ignored the same
   way; the request is always added.
4. ``Scheduler.finish_requests`` (the abort / external finish path) then calls
   ``ScoredBlockPool.on_request_withdrawn(request, groups)`` for every request it finished
   that was still waiting (never served) and was announced (not in ``withheld_arrivals``),
   so the requested marks of point 3 do not outlive the request. Failures are counted and
   ignored; the requests are always finished.

The same scheduler hooks are the one writer of the request lifecycle into the engine's
session view (the pool's ``sessions``, :mod:`cachewise.runtime.sessions`), in every engine
built with a binding, whatever the scheduler class: ``add_request`` -> ``on_arrival`` (keys:
:func:`~cachewise.runtime.request_calls.arrival_keys`; an internal request the pool
:meth:`~cachewise.runtime.block_pool.ScoredBlockPool.expects`, a prefetch, is no session's
request), ``schedule`` -> ``on_scheduled`` (its newly scheduled requests),
``update_from_output`` -> ``on_finished`` (the step's requests that finished, then the
scheduler's ``session_finished(key, request)`` if it has one) and ``finish_requests`` ->
``on_aborted``. Failures are counted like the pool hooks' and never stop vLLM.

A binding becomes active through :func:`use_policy` (a context manager, for the replay
benchmark and tests) or, in a served engine, through the plugin's ``Scheduler.__init__``
wrapper, which derives it from ``--additional-config '{"cachewise": {...}}'``
(:mod:`cachewise.runtime.plugin`). Only pools *constructed* while a binding is active are
scored; they keep their predictor after the context exits.

Example (the replay)::

    with use_policy(predictor, clock=sim_clock):
        scheduler = Scheduler(vllm_config=..., kv_cache_config=..., ...)
    assert isinstance(scheduler.kv_cache_manager.block_pool, ScoredBlockPool)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import vllm.v1.core.kv_cache_coordinator as kv_cache_coordinator
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager, SingleTypeKVCacheManager
from vllm.v1.request import Request, RequestStatus

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.config import PoolConfig
from cachewise.runtime.policy import ReusePredictor, engine_clock
from cachewise.runtime.request_calls import arrival_keys, client_family, hint_of
from cachewise.runtime.sessions import SessionView
from cachewise.runtime.vllm_compat import keep_vllm_classes, vllm_version

_VLLM_BLOCK_POOL = BlockPool
_DENSE_LOOKUP = FullAttentionManager.find_longest_cache_hit.__func__


@dataclass(frozen=True)
class PolicyBinding:
    """What pools built in the current context are made of.

    ``predictor`` None = fallback mode (vLLM's order, CacheWise metrics on);
    ``fallback_reason`` says why, when that is the result of a failure;
    ``on_pool`` is called with every pool built under the binding;
    ``sessions``: the engine's session view (set by the plugin's wiring).
    """

    predictor: ReusePredictor | None
    clock: Callable[[], float] = engine_clock
    config: PoolConfig = field(default_factory=PoolConfig)
    fallback_reason: str | None = None
    on_pool: Callable[[ScoredBlockPool], None] | None = None
    sessions: SessionView | None = None


_binding: ContextVar[PolicyBinding | None] = ContextVar("cachewise_policy_binding", default=None)


def current_binding() -> PolicyBinding | None:
    """The binding pools would be built with right now (None: vLLM's ``BlockPool``)."""
    return _binding.get()


@contextmanager
def bound(binding: PolicyBinding) -> Iterator[None]:
    """Activate ``binding`` for pools built inside the block (hooks installed if needed)."""
    install_hooks()
    token = _binding.set(binding)
    try:
        yield
    finally:
        _binding.reset(token)


@contextmanager
def use_policy(
    predictor: ReusePredictor | None,
    clock: Callable[[], float] = engine_clock,
    config: PoolConfig | None = None,
    on_pool: Callable[[ScoredBlockPool], None] | None = None,
) -> Iterator[None]:
    """Every KV-cache manager / scheduler built inside the block uses a ``ScoredBlockPool``.

    ``predictor`` None gives a pool in fallback mode (vLLM's order, CacheWise metrics).
    """
    with bound(PolicyBinding(predictor, clock, config or PoolConfig(), None, on_pool)):
        yield


def _build_pool(*args: Any, **kwargs: Any) -> BlockPool:
    """Stand-in for ``BlockPool`` inside ``kv_cache_coordinator``: scored iff a binding is active.

    If the scored pool cannot be built (e.g. a vLLM whose ``BlockPool`` differs), vLLM's own
    pool is built instead, with one warning and one ``incompatible`` fallback counted.
    """
    binding = _binding.get()
    if binding is None:
        return _VLLM_BLOCK_POOL(*args, **kwargs)
    try:
        pool = ScoredBlockPool(
            *args,
            predictor=binding.predictor,
            clock=binding.clock,
            config=binding.config,
            fallback_reason=binding.fallback_reason,
            sessions=binding.sessions,
            **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - a pool CacheWise cannot build must not stop vLLM
        keep_vllm_classes(f"cannot build ScoredBlockPool on vLLM {vllm_version()} ({type(exc).__name__}: {exc})")
        return _VLLM_BLOCK_POOL(*args, **kwargs)
    if binding.on_pool is not None:
        try:
            binding.on_pool(pool)
        except Exception as exc:  # noqa: BLE001 - the start-up callback is not worth an outage
            pool.record_hook_error(exc)
    return pool


@functools.cache
def is_chained(manager_type: type[SingleTypeKVCacheManager]) -> bool:
    """Whether the group's prefix lookup stops at the first missing block (dense attention)."""
    return getattr(manager_type.find_longest_cache_hit, "__func__", None) is _DENSE_LOOKUP


def request_chains(manager: KVCacheManager, request_id: str) -> list[tuple[Sequence[KVCacheBlock], bool]]:
    """``(block table, chained)`` of every KV-cache group for ``request_id`` (read-only)."""
    return [
        (m.req_to_blocks.get(request_id) or (), is_chained(type(m))) for m in manager.coordinator.single_type_managers
    ]


def chained_groups(manager: KVCacheManager) -> list[tuple[int, int]]:
    """``(kv_cache_group_id, block_size)`` of every chained KV-cache group of ``manager``."""
    return [
        (m.kv_cache_group_id, m.block_size) for m in manager.coordinator.single_type_managers if is_chained(type(m))
    ]


def _release(manager: KVCacheManager, request: Request) -> None:
    pool = manager.block_pool
    if not isinstance(pool, ScoredBlockPool):
        return
    try:
        pool.on_request_released(request, request_chains(manager, request.request_id))
    except Exception as exc:  # noqa: BLE001 - never let CacheWise break a free
        pool.record_hook_error(exc)


def _scored_pool(scheduler: Any) -> ScoredBlockPool | None:
    pool = getattr(getattr(scheduler, "kv_cache_manager", None), "block_pool", None)
    return pool if isinstance(pool, ScoredBlockPool) else None


def _arrive(scheduler: Any, request: Request) -> None:
    pool = _scored_pool(scheduler)
    if pool is None:
        return
    try:
        withhold = getattr(scheduler, "withhold_arrival", None)
        if withhold is None or not withhold(request):
            pool.on_request_arrived(request, chained_groups(scheduler.kv_cache_manager))
    except Exception as exc:  # noqa: BLE001 - never let CacheWise break an arrival
        pool.record_hook_error(exc)
    view = pool.sessions
    if view is None or pool.expects(request.request_id):
        return
    try:
        hint = hint_of(request)  # decoded once per arrival (vllm_xargs carries it as JSON text)
        session, thread = arrival_keys(view, request, hint)
        family = client_family(hint) or pool.config.guard.family
        view.on_arrival(request.request_id, session, thread, request.num_prompt_tokens, pool.clock(), family)
    except Exception as exc:  # noqa: BLE001
        pool.record_hook_error(exc)


def _wrap_schedule(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Scheduler.schedule`` followed by ``on_scheduled`` of its newly scheduled requests."""

    def schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        pool = _scored_pool(self)
        view = pool.sessions if pool is not None else None
        if view is not None:
            try:
                for new in out.scheduled_new_reqs:
                    view.on_scheduled(new.req_id, new.num_computed_tokens)
            except Exception as exc:  # noqa: BLE001
                pool.record_hook_error(exc)
        return out

    return _mark_hook(schedule, original)


def _wrap_update(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Scheduler.update_from_output`` followed by ``on_finished`` of the step's requests that
    finished (looked up before the call, which drops them), each then shown to the scheduler's
    ``session_finished(key, request)`` when it has one."""

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        pool = _scored_pool(self)
        view = pool.sessions if pool is not None else None
        if view is None:
            return original(self, scheduler_output, model_runner_output)
        scheduled = [self.requests.get(rid) for rid in scheduler_output.num_scheduled_tokens]
        outputs = original(self, scheduler_output, model_runner_output)
        try:
            now = pool.clock()
            notify = getattr(self, "session_finished", None)
            for req in scheduled:
                if req is None or not req.is_finished():
                    continue
                key = view.on_finished(req.request_id, req.num_tokens, req.block_hashes, now)
                if key is not None and notify is not None:
                    notify(key, req)
        except Exception as exc:  # noqa: BLE001
            pool.record_hook_error(exc)
        return outputs

    return _mark_hook(update_from_output, original)


def _withdraw(scheduler: Any, requests: Sequence[Request]) -> None:
    manager = getattr(scheduler, "kv_cache_manager", None)
    pool = getattr(manager, "block_pool", None)
    if not isinstance(pool, ScoredBlockPool) or not requests:
        return
    try:
        groups = chained_groups(manager)
        withheld = getattr(scheduler, "withheld_arrivals", {})
        for request in requests:
            if request.request_id not in withheld:  # never announced: nothing to withdraw
                pool.on_request_withdrawn(request, groups)
    except Exception as exc:  # noqa: BLE001 - never let CacheWise break an abort
        pool.record_hook_error(exc)


def _wrap_finish(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Scheduler.finish_requests`` followed by :func:`_withdraw` of the requests it took out of
    the waiting queue (status WAITING* before the call, finished after it)."""

    def finish_requests(self: Any, request_ids: Any, finished_status: Any) -> Any:
        if isinstance(request_ids, str):
            ids: Any = (request_ids,)
        elif request_ids is None:
            ids = list(self.requests)
        else:
            ids = request_ids = list(request_ids)
        waiting = [
            r for r in (self.requests.get(i) for i in ids)
            if r is not None and not r.is_finished() and r.status != RequestStatus.RUNNING
        ]
        result = original(self, request_ids, finished_status)
        _withdraw(self, [r for r in waiting if r.is_finished()])
        pool = _scored_pool(self)
        if pool is not None and pool.sessions is not None and result:
            try:
                now = pool.clock()
                for req in result:
                    pool.sessions.on_aborted(req.request_id, now)
            except Exception as exc:  # noqa: BLE001
                pool.record_hook_error(exc)
        return result

    return _mark_hook(finish_requests, original)


def _mark_hook(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper._cachewise_hook = True  # type: ignore[attr-defined]
    return wrapper


def _wrap(original: Callable[..., Any], hook: Callable[[Any, Request], None]) -> Callable[..., Any]:
    """``original(self, request)`` preceded by ``hook(self, request)`` (which never raises)."""

    def wrapper(self: Any, request: Request) -> Any:
        hook(self, request)
        return original(self, request)

    return _mark_hook(wrapper, original)


def install_hooks() -> None:
    """Install the pool factory, the release, arrival, withdrawal and session-view hooks (no-op when already installed).

    All targets are looked up before any is replaced, so a vLLM lacking one of them
    raises here (``AttributeError``) with nothing patched.
    """
    from vllm.v1.core.sched.scheduler import Scheduler  # imported late, like the plugin's wrapper

    targets = [
        (owner, name, getattr(owner, name), hook)
        for owner, name, hook in (
            (KVCacheManager, "free", _release),
            (KVCacheManager, "pop_blocks_for_free", _release),
            (Scheduler, "add_request", _arrive),
        )
    ]
    wrapped = [
        (name, getattr(Scheduler, name), wrap)
        for name, wrap in (("finish_requests", _wrap_finish), ("schedule", _wrap_schedule), ("update_from_output", _wrap_update))
    ]
    if kv_cache_coordinator.BlockPool is not _build_pool:
        kv_cache_coordinator.BlockPool = _build_pool  # type: ignore[assignment, misc]
    for owner, name, method, hook in targets:
        if not getattr(method, "_cachewise_hook", False):
            setattr(owner, name, _wrap(method, hook))
    for name, method, wrap in wrapped:
        if not getattr(method, "_cachewise_hook", False):
            setattr(Scheduler, name, wrap(method))


def hooks_installed() -> bool:
    """Whether :func:`install_hooks` has run in this process."""
    return kv_cache_coordinator.BlockPool is _build_pool and getattr(KVCacheManager.free, "_cachewise_hook", False)
