"""``ScoredBlockPool``: vLLM's ``BlockPool`` with a prediction-driven eviction order.

Only the *order* in which free blocks are reused changes; every piece of vLLM's
bookkeeping stays vLLM's own code path:

* ``get_new_blocks(n)`` takes ``n`` victims from :meth:`EvictionOrder.take` (each removed
  from vLLM's ``free_block_queue`` with its O(1) ``remove``), puts them back at the queue
  head (``prepend_n``) and calls vLLM's
  ``BlockPool.get_new_blocks``, which pops exactly those blocks and does the eviction
  (hash removal, ``BlockRemoved`` events, metrics collector, ref counts, reuse watchers).
  So ``free_block_queue`` always holds exactly the free blocks, free counts are vLLM's, and
  everything that walks the queue keeps working. If the order has fewer candidates than
  asked for (blocks freed outside its view), the rest come from the queue head in vLLM's
  order and are counted in ``order_fallback_blocks``.
* ``free_blocks``/``touch``/hash removal run vLLM's code first and then tell the order
  what happened. Blocks released with ``unpin_blocks`` (HiSparse's still-readable pages)
  are deliberately not given to the order: vLLM treats them as last-resort victims, and so
  they are only reached once the order has no candidate left (queue-head fallback).

Request context: :meth:`ScoredBlockPool.on_request_released` is called once per request
by the hook in :mod:`cachewise.runtime.hooks` (``KVCacheManager.free`` and
``pop_blocks_for_free``) *before* the request's blocks return to the queue. A finished
request gets one predictor call; a request released unfinished (preempted, or waiting for
remote KV) is not shown to the predictor: its prefix is treated as needed now
(``reuse_at = now``) because vLLM re-queues it at the front. Blocks freed on other paths
(sliding-window trimming, copy-on-write retention, connectors) carry no prediction and sit
in the no-opinion tier. :meth:`ScoredBlockPool.on_request_arrived` is called by the
``Scheduler.add_request`` hook when a request enters the waiting queue: the free cached
blocks of its prefix become *requested* (see :mod:`cachewise.runtime.eviction_order`), so
a prefix whose request is already queued is not evicted as overdue while it waits.

Modes: *active* (a predictor is set) or *fallback* (vLLM's order: ``get_new_blocks`` is
vLLM's unchanged). An active pool has an online guard (:mod:`cachewise.runtime.guard`,
``config.guard``) that estimates, on a hash-sampled shadow, how the learned order and
vLLM's LRU would each do, and makes ``get_new_blocks`` take vLLM's order while the learned
one is measurably worse; the eviction order keeps being maintained, so it can switch back. A pool starts in fallback when built without a predictor (e.g. the
model failed to load) and switches to fallback for good after
``config.max_consecutive_failures`` predictor failures in a row. Metrics (evictions,
ghost hits, fallbacks) are kept in both modes. A *ghost hit* is a prefix-cache lookup that
misses on a hash the pool evicted within its last ``config.ghost_window`` evictions (the
replay's *harmful eviction*, an evicted hash a later prompt contains, is a different count:
:mod:`cachewise.replay.metrics`).

Failure behaviour: predictor exceptions and invalid predictions (NaN, -inf) are caught,
counted (``fallbacks``), and warned about once per pool; the request's blocks then carry
no prediction. Nothing here raises into vLLM except vLLM's own errors.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import BlockHash, KVCacheBlock, make_block_hash_with_group_id, resolve_block_hashes
from vllm.v1.request import Request

from cachewise.runtime.config import PoolConfig
from cachewise.runtime.eviction_order import EvictionOrder
from cachewise.runtime.ghost_window import GhostWindow
from cachewise.runtime.guard import Guard
from cachewise.runtime.kv_blocks import cached_key, freed_in, is_being_reused, is_free
from cachewise.runtime.metrics import PoolStats, Publisher, observe_latency
from cachewise.runtime.policy import InvalidPrediction, ReusePredictor, checked, engine_clock
from cachewise.runtime.sessions import SessionView

logger = logging.getLogger("vllm.cachewise")


class ScoredBlockPool(BlockPool):
    """A ``BlockPool`` whose free blocks are reused in the order of reuse predictions.

    Constructed like the installed vLLM's ``BlockPool`` (its arguments are passed through
    unchanged) plus the keywords ``predictor`` (None = fallback mode),
    ``clock`` (the time base of predictions; seconds) and ``config``.
    ``fallback_reason`` marks a pool built without a predictor because of a failure (it is
    counted once in ``stats.fallbacks``). ``sessions``: the engine's one
    :class:`~cachewise.runtime.sessions.SessionView` (the plugin's wiring creates it); the pool
    only holds it for the engine's schedulers and makes it follow its guard's verdict.
    """

    def __init__(
        self,
        *args: Any,
        predictor: ReusePredictor | None,
        clock: Callable[[], float] = engine_clock,
        config: PoolConfig | None = None,
        fallback_reason: str | None = None,
        sessions: SessionView | None = None,
        **kwargs: Any,
    ) -> None:
        # vLLM's arguments pass through as given: BlockPool's signature differs between
        # vLLM releases (cachewise.runtime.vllm_compat); what is needed is read back below.
        super().__init__(*args, **kwargs)
        num_gpu_blocks, enable_caching = self.num_gpu_blocks, self.enable_caching
        self.config = config or PoolConfig()
        self.predictor = predictor
        self.clock = clock
        self.stats = PoolStats()
        self._publisher = Publisher(self.stats, self.config.log_interval_s, f"pool[{num_gpu_blocks} blocks]")
        self._order: EvictionOrder | None = EvictionOrder(self.blocks) if predictor is not None and enable_caching else None
        self._consecutive_failures = 0
        self._warned = False
        self._expected: dict[str, tuple[float, float]] = {}  # request id -> prediction set by expect()
        self._taking = False  # inside vLLM's get_new_blocks called by ours: every hash drop is an eviction
        self._evicted_keys: list[bytes] = []  # keys evicted inside it, counted when it returns
        window = self.config.ghost_window
        self._ghosts = GhostWindow(num_gpu_blocks if window is None else window)
        guarded = self._order is not None and self.config.guard.enabled
        label = self._publisher.label
        self.sessions = sessions
        short = self._memory_short if sessions is not None else None  # the preview's condition; None: turnover
        families = getattr(predictor, "certified_families", None)
        self._certified_families = families if isinstance(families, frozenset) else frozenset()
        certified = self._certified_traffic if sessions is not None and self._certified_families else None
        self._guard = Guard(self.config.guard, self.stats, label, clock, num_gpu_blocks, short, certified) if guarded else None
        if sessions is not None:
            sessions.follow(self.serves_learned, self.eviction_pressure)
        if fallback_reason is not None:
            self.stats.fallbacks["load"] += 1
            self._publisher.publish()

    @property
    def active(self) -> bool:
        """Whether predictions drive the eviction order (False: vLLM's order)."""
        return self._order is not None

    def serves_learned(self) -> bool:
        """The guard's verdict: the pool is active and (with a guard) serves the learned order now.
        The session view reads it live (:attr:`~cachewise.runtime.sessions.SessionView.trusted`). O(1)."""
        return self._order is not None and (self._guard is None or self._guard.learned)

    # ------------------------------------------------------- request context
    def on_request_released(self, request: Request, chains: Sequence[tuple[Sequence[KVCacheBlock], bool]]) -> None:
        """``request`` is about to return its blocks; ``chains`` = (block table, chained) per group.

        Calls the predictor once (finished requests only; its failures are contained here)
        and records the prediction and the chain links on the request's blocks. The hook
        that calls this contains anything else (:func:`cachewise.runtime.hooks.install_hooks`).
        """
        self.stats.released += 1
        order = self._order
        expected = self._expected.pop(request.request_id, None) if self._expected and request.is_finished() else None
        if order is not None and any(chain for chain, _ in chains):
            now = self.clock()
            if expected is not None:
                prediction = checked(expected, now, self.config.max_idle_s)
            elif request.is_finished():
                prediction = self._predict(request, now)
            else:
                self.stats.held += 1
                prediction = (now, now + self.config.max_idle_s)
            if self._order is not None:  # the prediction may have switched the pool to fallback
                reuse_at, expire_at = prediction if prediction is not None else (None, math.inf)
                for chain, chained in chains:
                    order.on_release(chain, reuse_at, expire_at, chained)
                    if self._guard is not None and reuse_at is not None:
                        self._guard.on_release(chain, reuse_at, expire_at)
        self._publisher.publish()

    def expect(self, request_id: str, reuse_at: float, expire_at: float) -> None:
        """When ``request_id`` finishes, its blocks carry ``(reuse_at, expire_at)`` and the predictor
        is not asked (an internal request whose reuse the caller knows: a prefetch,
        :mod:`cachewise.runtime.prefetch`). Forgotten when the request is released. O(1)."""
        checked((reuse_at, expire_at), reuse_at, self.config.max_idle_s)  # raises InvalidPrediction on NaN / -inf
        self._expected[request_id] = (reuse_at, expire_at)

    def expects(self, request_id: str) -> bool:
        """Whether ``request_id`` is an internal request given to :meth:`expect` (not yet released). O(1)."""
        return request_id in self._expected

    def on_request_arrived(self, request: Request, groups: Sequence[tuple[int, int]]) -> None:
        """``request`` entered the waiting queue; ``groups`` = (group id, block size) per chained group.

        Marks the free blocks of its cached prefix (:meth:`_free_prefix`) as requested now
        (expiring ``max_idle_s`` later). O(prefix blocks); the predictor is not called.
        """
        order = self._order
        if order is None or request.skip_reading_prefix_cache:
            return
        now = self.clock()
        guard = self._guard
        for free in self._free_prefix(request, groups, now if guard is not None else None):
            order.on_request(free, now, now + self.config.max_idle_s)

    def on_request_withdrawn(self, request: Request, groups: Sequence[tuple[int, int]]) -> None:
        """``request`` left the waiting queue unserved (aborted, or finished while waiting): the
        free blocks of its cached prefix lose the requested mark it gave them, unless another
        waiting request marked them too. O(prefix blocks)."""
        order = self._order
        if order is None or request.skip_reading_prefix_cache:
            return
        for free in self._free_prefix(request, groups):
            order.on_withdraw(free)

    def _free_prefix(
        self, request: Request, groups: Sequence[tuple[int, int]], guard_now: float | None = None
    ) -> Iterable[list[KVCacheBlock]]:
        """Per chained group, the free blocks of ``request``'s cached prefix, looked up as vLLM's
        full-attention ``find_longest_cache_hit`` does (in order, at most ``num_tokens - 1``
        tokens, stopping at the first miss; vLLM's lookup, so no ghost hit is counted).
        With ``guard_now`` the guard's shadow caches see the request arrive at that time."""
        for group_id, block_size in groups:
            hashes = resolve_block_hashes(request.block_hashes, self.hash_block_size, block_size)
            prefix = (request.num_tokens - 1) // block_size
            if guard_now is not None:
                self._guard.on_request(
                    itertools.islice(hashes, prefix), group_id, guard_now, guard_now + self.config.max_idle_s
                )
            free: list[KVCacheBlock] = []
            for block_hash in itertools.islice(hashes, prefix):
                found = BlockPool.get_cached_block(self, block_hash, [group_id])
                if found is None:
                    break
                if is_free(found[0]):
                    free.append(found[0])
            if free:
                yield free

    def demote(self, block_hashes: Iterable[BlockHash], group_ids: Sequence[int]) -> int:
        """The free cached blocks of ``block_hashes`` (in KV-cache groups ``group_ids``) become
        the first evicted (a session demoted by the residency controller); returns how many.
        Blocks in use are untouched. No-op in fallback mode."""
        order = self._order
        if order is None:
            return 0
        free = []
        for block_hash in block_hashes:
            for group_id in group_ids:
                found = BlockPool.get_cached_block(self, block_hash, [group_id])
                if found is not None and is_free(found[0]):
                    free.append(found[0])
        order.on_demote(free, self.clock())
        return len(free)

    def eviction_pressure(self) -> tuple[int, int]:
        """``(evictions so far, demoted free blocks)``: the cumulative count of cached blocks evicted
        (``stats.evictions``) and the free cached blocks in the eviction order's demoted state
        (:attr:`~cachewise.runtime.eviction_order.EvictionOrder.demoted_free`: evicted before a block
        demoted now; 0 in fallback mode). Read live by the session view
        (:attr:`~cachewise.runtime.sessions.SessionView.pressure`) for the residency controller. O(1)."""
        order = self._order
        return self.stats.evictions, (order.demoted_free if order is not None else 0)

    def _certified_traffic(self) -> bool | None:
        """The guard's certified start (guard module doc): whether every request the session view has
        seen declared a family the predictor's traffic certificate names (read once, when the pool is
        built); None before any arrived. A failure reads as not certified (counted and warned as a
        hook error). O(families seen)."""
        view = self.sessions
        assert view is not None
        try:
            return view.traffic_within(self._certified_families)
        except Exception as exc:  # noqa: BLE001 - a CacheWise bug must not reach vLLM
            self.record_hook_error(exc)
            return False

    def _memory_short(self) -> bool:
        """The guard's preview condition: the session view's shortage test (guard module doc) with this
        pool's blocks as the capacity. A failure of the test reads as not short (counted and warned as a
        hook error; the guard's own test still decides). O(sessions) until latched, O(1) after."""
        view = self.sessions
        assert view is not None
        try:
            return view.shortage.check(view.live_blocks, self.num_gpu_blocks, "GPU pool's guard")
        except Exception as exc:  # noqa: BLE001 - a CacheWise bug must not reach vLLM
            self.record_hook_error(exc)
            return False

    def _predict(self, request: Request, now: float) -> tuple[float, float] | None:
        """The predictor's checked answer for ``request``, or None (no opinion or failure)."""
        assert self.predictor is not None
        start = time.perf_counter()
        try:
            raw = self.predictor.on_request_finished(request, now)
        except InvalidPrediction as exc:
            self._failed("invalid_score", str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a predictor bug must not reach vLLM
            self._failed("predictor_error", f"predictor raised {type(exc).__name__}: {exc}")
            return None
        finally:
            elapsed = time.perf_counter() - start
            self.stats.scorer_seconds += elapsed
            observe_latency(elapsed)
        if raw is None:
            self.stats.no_opinion += 1
            self._consecutive_failures = 0
            return None
        try:
            prediction = checked(raw, now, self.config.max_idle_s)
        except InvalidPrediction as exc:
            self._failed("invalid_score", str(exc))
            return None
        self.stats.predictions += 1
        self._consecutive_failures = 0
        return prediction

    def _failed(self, reason: str, detail: str) -> None:
        """Count one predictor failure; warn on the first; go to fallback after too many in a row."""
        self.stats.fallbacks[reason] += 1
        self._consecutive_failures += 1
        limit = self.config.max_consecutive_failures
        if not self._warned:
            self._warned = True
            logger.warning(
                "CacheWise: %s; that request's blocks carry no prediction (LRU tier). Further failures are "
                "counted in cachewise_fallbacks_total; after %d in a row the pool reverts to vLLM's order.",
                detail,
                limit,
            )
        if self._consecutive_failures >= limit and self._order is not None:
            self.disable(f"{limit} predictor failures in a row (last: {detail})")

    def disable(self, reason: str) -> None:
        """Switch to vLLM's eviction order for good (one warning)."""
        if self._order is None:
            return
        self._order = self._guard = None
        self.stats.guard_learned = None
        self.stats.fallbacks["disabled"] += 1
        logger.warning("CacheWise: reverting to vLLM's eviction order: %s", reason)

    def record_hook_error(self, exc: BaseException) -> None:
        """A CacheWise hook around this pool failed; vLLM continued. Counted, warned once."""
        self.stats.fallbacks["hook_error"] += 1
        if not self._warned:
            self._warned = True
            logger.warning("CacheWise: hook error ignored (%s: %s); vLLM continues", type(exc).__name__, exc)

    # ------------------------------------------------------------ allocation
    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """vLLM's ``get_new_blocks`` on victims chosen by the eviction order. While the guard
        serves LRU: vLLM's own victims (the order forgets them as it does any drop), after the
        unhashed and then the residency controller's demoted free blocks while any is demoted
        (:meth:`EvictionOrder.take <cachewise.runtime.eviction_order.EvictionOrder.take>`, ``demoted_only``)."""
        order = self._order
        victims: list[KVCacheBlock] = []
        lru = False
        if order is not None and num_blocks > 0:
            lru = self._guard is not None and not self._guard.learned
            if num_blocks > self.get_num_free_blocks():
                raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
            victims = order.take(num_blocks, self.clock(), self.free_block_queue, demoted_only=lru)
            self.free_block_queue.prepend_n(victims)
        keys = self._evicted_keys = []
        self._taking = True  # vLLM's eviction of the popped blocks: see _remove_cached_block_hashes
        try:
            blocks = super().get_new_blocks(num_blocks)
        finally:
            self._taking = False
        if keys:
            self._count_evicted(keys)
        if order is not None and len(victims) < num_blocks:  # taken from the queue head in vLLM's order
            if not lru:
                self.stats.order_fallback_blocks += num_blocks - len(victims)
            for block in blocks[len(victims) :]:
                order.on_drop(block)
        return blocks

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """vLLM's ``free_blocks``; then the blocks that reached ref count 0 become candidates."""
        order = self._order
        if order is None:
            super().free_blocks(ordered_blocks)
            return
        blocks = list(ordered_blocks)
        super().free_blocks(blocks)
        now = self.clock()
        freed = freed_in(self, blocks)
        order.on_free(freed, now)
        if self._guard is not None:
            self._guard.on_free(freed, now)

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        """vLLM's ``touch``; a hit consumes the blocks' predictions."""
        order = self._order
        if order is not None:
            guard = self._guard
            if guard is not None:
                guard.begin_cluster()
            for block in blocks:
                if not block.is_null:
                    order.on_touch(block)
                    if guard is not None:
                        guard.on_touch(block)
        super().touch(blocks)

    # ---------------------------------------------------- hashes and metrics
    def _remove_cached_block_hashes(self, block: KVCacheBlock) -> list:
        # Blocks evicted by get_new_blocks (popped: ref count 0, out of the queue) were
        # unlinked when taken; every other hash drop (connector eviction, promotion, copy)
        # is reported to the order here. (This and _maybe_evict_cached_block run once per evicted
        # block: they test the _taking flag first and call BlockPool's methods directly, saving a
        # call and super()'s lookup there.)
        if self._taking or self._order is None or is_being_reused(block):
            return BlockPool._remove_cached_block_hashes(self, block)
        had_hash = cached_key(block) is not None
        removed = BlockPool._remove_cached_block_hashes(self, block)
        if had_hash and self._order is not None:
            self._order.on_drop(block)
            if is_free(block):  # dropped while free: now an unhashed candidate
                self._order.on_free([block], self.clock())
        return removed

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        key = cached_key(block)
        evicted = BlockPool._maybe_evict_cached_block(self, block)
        if evicted and key is not None:
            if self._taking:
                self._evicted_keys.append(key)  # counted once per get_new_blocks call
            else:
                self._count_evicted([key])
        return evicted

    def _count_evicted(self, keys: list[bytes]) -> None:
        """The cached blocks of ``keys`` were evicted: counted (``stats.evictions``), remembered for
        ghost hits (:class:`~cachewise.runtime.ghost_window.GhostWindow`) and told to the guard.
        O(len(keys)) in C calls: it runs once per ``get_new_blocks`` call, not per block."""
        self._ghosts.add(keys, self.stats.evictions)
        self.stats.evictions += len(keys)
        if self._guard is not None:
            self._guard.on_evicted(len(keys))

    def _insert_block_hash(self, block_hash_with_group_id: bytes, block: KVCacheBlock, num_tokens: int | None) -> None:
        # A block computed and cached: for the guard, a real miss on its hash.
        had = cached_key(block)
        super()._insert_block_hash(block_hash_with_group_id, block, num_tokens)
        key = cached_key(block)
        if self._guard is not None and had is None and key is not None:
            self._guard.on_cached(key)

    def get_cached_block(self, block_hash: BlockHash, kv_cache_group_ids: list[int]) -> list[KVCacheBlock] | None:
        """vLLM's lookup; a miss on a recently evicted hash counts one ghost hit."""
        found = super().get_cached_block(block_hash, kv_cache_group_ids)
        if found is None and len(self._ghosts) and kv_cache_group_ids:
            key = make_block_hash_with_group_id(block_hash, kv_cache_group_ids[0])
            if self._ghosts.hit(key, self.stats.evictions):  # each eviction counts at most once
                self.stats.ghost_hits += 1
        return found

    def reset_prefix_cache(self) -> bool:
        """vLLM's reset; on success all predictions and links are forgotten too."""
        ok = super().reset_prefix_cache()
        if ok:
            self._ghosts.clear()
            if self._order is not None:
                self._order = EvictionOrder(self.blocks)
            if self._guard is not None:
                self._guard.reset()
        return ok
