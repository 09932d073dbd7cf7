"""CacheWise's CPU-tier cache policy: host chunks evicted by their session's predicted next use.

Loaded by vLLM's own native offloading (the ``OffloadingConnector``'s ``CPUOffloadingManager``)
through its ``cache_policy_module_path`` extension point, no fork or patch::

    --kv-offloading-size 64 --kv-offloading-backend native \\
    --kv-transfer-config '{"kv_connector_extra_config": {"eviction_policy": "CacheWiseCachePolicy",
                           "cache_policy_module_path": "cachewise.runtime.cpu_policy"}}'

:class:`CacheWiseCachePolicy` *is* vLLM's :class:`LRUCachePolicy` (same chunk table, ranks,
lazy heap, pinning) plus an owner per chunk: the session of the last request that stored,
read or touched it (``ReqContext.req_id`` looked up in the engine's one
:class:`~cachewise.runtime.sessions.SessionView`, which the policy attaches when vLLM builds it
inside the plugin's wiring -- the view and clock of the binding then active
(:func:`~cachewise.runtime.hooks.current_binding`), whatever the scheduler class). The
chunk <-> session relation lives in the view (its host-tier working sets,
:class:`~cachewise.runtime.host_sets.HostSets`, under this policy's own tier id, so two
policies on one view never mix their chunks): the policy writes it on every insert, access,
touch, finish, removal and eviction and reads it to order victims; it keeps no copy of
sessions, predictions or owners. Invariant: while attached, the view's groups for the policy's
tier partition exactly :attr:`chunks` (chunks held before :meth:`attach` start unowned).
Detached (no view), the policy records no owners and is vLLM's LRU.

Eviction order (first = evicted first), among evictable (``ref_cnt == 0``), unprotected chunks:

1. chunks with no known live session: no owner, the owner left the view (ended, forgotten),
   or its forecast's expiry passed (as good as ended);
2. chunks of idle sessions, by predicted time to the next request, farthest first:
   the median of the forecast's remaining gap (:meth:`Forecast.remaining_quantile`), ``inf`` for
   "does not come back"; an idle session without a forecast is expected back after
   ``overdue_remaining(idle)`` (the one overdue rule, :mod:`cachewise.scoring.overdue`);
3. chunks of sessions with a live request (in use now), last.

Ties go in vLLM's LRU order (its ranks: older request first, tail before head within a
request). Within one idle session, chunks that none of its threads' latest prefixes holds
(stale: an older prompt's divergent tail) go first, in vLLM's LRU order, then its current
prefix *deepest first* (the thread's block order in the view: tail before head), as the GPU
pool evicts a chain: vLLM's connector loads a host prefix only from the first block the GPU
lacks, so a missing head makes every later chunk useless. vLLM's ranks alone do not give
that order: a request that found its head on the GPU and loaded the rest from the host
re-ranks only the chunks it loaded or stored, so its head's host copies keep an older rank
and would go first. Within a live or unknown session: vLLM's LRU order. Fallback: with no view attached, when no chunk
has an owner with a forecast (``no_prediction``), while the view's guard verdict distrusts the
model (``distrusted``: :attr:`SessionView.trusted <cachewise.runtime.sessions.SessionView.trusted>`,
the GPU pool's online guard serves vLLM's order), or on any exception (``error``), the
eviction is vLLM's LRU :meth:`LRUCachePolicy.evict` unchanged; each fallback is counted in
:attr:`CacheWiseCachePolicy.stats`. Both paths are atomic: nothing changes unless ``n``
chunks can be evicted.

Complexity: insert/remove/touch/access O(1) per key more than LRU (one view event per key);
a predicted eviction O(S log S + Σ (K_s log K_s + H_s)) for S owners, the K_s chunks and H_s
latest-prefix hashes of the owners it takes victims from; memory O(chunks), the owner tables
counted in the view's.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from vllm.v1.kv_offload.base import OffloadKey, ReqContext, get_offload_block_hash
from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy

from cachewise.runtime.hooks import current_binding
from cachewise.runtime.host_sets import UNOWNED
from cachewise.runtime.sessions import SessionState, SessionView
from cachewise.scoring.overdue import overdue_remaining

logger = logging.getLogger("vllm.cachewise")

POLICY_NAME = "CacheWiseCachePolicy"
MODULE_PATH = "cachewise.runtime.cpu_policy"
ENDED = math.inf
"""Score of a chunk whose session is unknown or ended: evicted before any predicted one."""

_POLICIES: weakref.WeakSet[CacheWiseCachePolicy] = weakref.WeakSet()


@dataclass
class CpuPolicyStats:
    """Counts since the policy was built (monotone)."""

    predicted_evictions: int = 0  # chunks evicted in predicted order
    lru_evictions: int = 0  # chunks evicted by vLLM's LRU (fallback)
    fallbacks: dict[str, int] = field(default_factory=lambda: {"no_view": 0, "no_prediction": 0, "error": 0, "distrusted": 0})


@dataclass(slots=True)
class _RequestSession:
    """Per-request scratch (``ReqContext`` state): the session its request belongs to."""

    owner: object
    session: str | None


class CacheWiseCachePolicy(LRUCachePolicy):
    """vLLM's LRU policy with eviction by predicted next use (module doc)."""

    def __init__(self, cache_capacity: int) -> None:
        super().__init__(cache_capacity)
        self.view: SessionView | None = None
        self.tier = 0  # this policy's tier id in the view's host-tier working sets
        self.clock: Callable[[], float] = time.monotonic
        self.stats = CpuPolicyStats()
        _POLICIES.add(self)
        binding = current_binding()
        if binding is not None and binding.sessions is not None:
            self.attach(binding.sessions, binding.clock)
            logger.info("CacheWise CPU-tier policy on: host chunks evicted by predicted next use (%d chunks)", cache_capacity)

    # ------------------------------------------------------------- attachment
    def attach(self, view: SessionView | None, clock: Callable[[], float]) -> None:
        """Read sessions and forecasts from ``view`` (the engine's one view), times from ``clock``;
        ``view`` None: detached (vLLM's LRU order from now on). The chunks held now join the new
        view's working sets unowned; the old view drops this policy's tier."""
        if self.view is not None:
            self.view.host.release(self.tier)
        self.view = view
        self.clock = clock
        if view is not None:
            self.tier = view.host.tier()
            view.host.stored(self.tier, self.chunks, None)

    # ------------------------------------------------------------- ownership
    def _session(self, req_context: ReqContext) -> str | None:
        view = self.view
        if view is None:
            return None
        state = req_context.get_state(_RequestSession)
        if state is None or state.owner is not self or state.session is None:
            state = _RequestSession(self, view.session_of(req_context.req_id))
            req_context.set_state(state)
        return state.session

    def _own(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        view = self.view
        if view is not None:
            chunks = self.chunks
            view.host.stored(self.tier, (k for k in keys if k in chunks), self._session(req_context))

    def _drop(self, key: OffloadKey) -> None:
        if self.view is not None:
            self.view.host.dropped(self.tier, key)

    def owner_of(self, key: OffloadKey) -> str | None:
        """The session that last stored, read or touched ``key``, as the view records it (None: unknown)."""
        return None if self.view is None else self.view.host.owner(self.tier, key)

    # --------------------------------------------------- CachePolicy interface
    def insert(self, key: OffloadKey, chunk: ChunkStatus, req_context: ReqContext) -> None:
        super().insert(key, chunk, req_context)
        self._own((key,), req_context)

    def remove(self, key: OffloadKey) -> None:
        super().remove(key)
        self._drop(key)

    def touch(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        keys = list(keys)
        super().touch(keys, req_context)
        self._own(keys, req_context)

    def on_request_access(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        keys = list(keys)
        super().on_request_access(keys, req_context)
        self._own(keys, req_context)

    def on_request_finished(
        self,
        key_groups: Sequence[Sequence[OffloadKey]],
        insertion_only_keys: set[OffloadKey],
        reused_keys: set[OffloadKey],
        req_context: ReqContext,
    ) -> None:
        super().on_request_finished(key_groups, insertion_only_keys, reused_keys, req_context)
        for keys in key_groups:
            self._own(keys, req_context)

    def clear(self) -> None:
        super().clear()
        if self.view is not None:
            self.view.host.cleared(self.tier)

    def evict(self, n: int, protected: set[OffloadKey]) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        if n == 0:
            return []
        reason = "no_view"
        if self.view is not None and not self.view.trusted:
            reason = "distrusted"  # the GPU pool's guard serves vLLM's order: so does the host tier
        elif self.view is not None:
            try:
                chosen = self._predicted_victims(self.view, n, protected)
            except Exception as exc:  # noqa: BLE001 - never stop vLLM: its LRU takes over
                logger.warning("CacheWise CPU policy: %s: %s; vLLM's LRU order for this eviction", type(exc).__name__, exc)
                chosen, reason = None, "error"
            else:
                reason = "no_prediction"
            if chosen is not None:
                if len(chosen) < n:
                    return None
                return self._apply(chosen)
        self.stats.fallbacks[reason] += 1
        evicted = super().evict(n, protected)
        if evicted is not None:
            for key, _ in evicted:
                self._drop(key)
            self.stats.lru_evictions += len(evicted)
        return evicted

    # ------------------------------------------------------------- internals
    def session_score(self, session: str, now: float) -> tuple[float, bool]:
        """(predicted seconds to the session's next request, whether a forecast said so).

        ``inf`` (:data:`ENDED`) for a session the view does not know or whose forecast's expiry
        passed; 0 for one with a live request."""
        state = self.view.get(session) if self.view is not None else None
        if state is None:
            return ENDED, False
        if state.live:
            return 0.0, False
        elapsed = now - (state.idle_since if state.idle_since is not None else now)
        forecast = state.forecast
        if forecast is None:
            return overdue_remaining(elapsed), False
        if state.expired(now):
            return ENDED, True
        return forecast.remaining_quantile(elapsed, 0.5), True

    def _predicted_victims(self, view: SessionView, n: int, protected: set[OffloadKey]) -> list[OffloadKey] | None:
        """``n`` victims in the module's order (fewer if not enough); None: no forecast to go by."""
        now = self.clock()
        host = view.host
        evictable = self._evictable
        order: list[tuple[float, bool, int, str]] = []
        informed = False
        for i, (session, _) in enumerate(host.groups(self.tier)):
            score, forecast = self.session_score(session, now)
            informed = informed or forecast
            order.append((-score, session != UNOWNED, i, session))
        if not informed:
            return None
        order.sort()
        chosen: list[OffloadKey] = []
        for _, _, _, session in order:
            keys = [k for k in host.keys(self.tier, session) if k in evictable and k not in protected]
            keys.sort(key=self._chain_order(view.get(session)))
            chosen.extend(keys[: n - len(chosen)])
            if len(chosen) == n:
                break
        return chosen

    def _chain_order(self, state: SessionState | None) -> Callable[[OffloadKey], tuple]:
        """Sort key of one session's chunks, first evicted first (module doc): vLLM's LRU ranks for a
        live or unknown session; for an idle one, stale chunks (LRU ranks) before its latest
        prefixes' chunks, deepest first. O(the session's latest-prefix hashes)."""
        ranks = self._ranks
        if state is None or state.live:
            return ranks.__getitem__
        depth: dict[bytes, int] = {}
        for thread in state.threads.values():
            for i, block_hash in enumerate(thread.hashes):
                if depth.get(block_hash, -1) < i:
                    depth[block_hash] = i

        def key(k: OffloadKey) -> tuple:
            d = depth.get(get_offload_block_hash(k))
            return (0, ranks[k]) if d is None else (1, -d)

        return key

    def _apply(self, chosen: list[OffloadKey]) -> list[tuple[OffloadKey, ChunkStatus]]:
        out = []
        for key in chosen:
            chunk = self.chunks.pop(key)
            assert chunk.ref_cnt == 0
            self._evictable.remove(key)
            del self._ranks[key]
            self._drop(key)
            out.append((key, chunk))
        self._maybe_compact_heap()  # their heap entries are stale now (lazy deletion)
        self.stats.predicted_evictions += len(out)
        return out


def policies() -> list[CacheWiseCachePolicy]:
    """The CacheWise CPU policies alive in this process."""
    return list(_POLICIES)


def find_policy(scheduler: object) -> CacheWiseCachePolicy | None:
    """The CacheWise CPU policy of ``scheduler``'s offloading connector (None: not configured).

    Follows vLLM's own attributes: ``Scheduler.connector`` (an ``OffloadingConnector``, or a
    ``MultiConnector`` holding one) → ``connector_scheduler.manager`` (the
    ``CPUOffloadingManager``, or a tiering manager's primary) → its ``_policy``."""
    found = _find_tier(scheduler)
    return None if found is None else found[0]


def host_capacity_blocks(scheduler: object) -> int:
    """The host tier's capacity in GPU blocks: the CacheWise policy's chunks (``cache_capacity``)
    times the GPU blocks per chunk of its ``OffloadingConnectorScheduler`` (``config.blocks_per_chunk``);
    0 without the CacheWise policy."""
    found = _find_tier(scheduler)
    return 0 if found is None else found[0].cache_capacity * found[1]


def _find_tier(scheduler: object) -> tuple[CacheWiseCachePolicy, int] | None:
    """(the CacheWise policy, GPU blocks per host chunk of the connector scheduler above it)."""
    stack: list[tuple[object, int]] = [(getattr(scheduler, "connector", None), 1)]
    seen: set[int] = set()
    while stack:
        obj, per_chunk = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, CacheWiseCachePolicy):
            return obj, per_chunk
        per_chunk = getattr(getattr(obj, "config", None), "blocks_per_chunk", per_chunk)
        for name in ("_policy", "manager", "connector_scheduler", "primary", "_primary"):
            stack.append((getattr(obj, name, None), per_chunk))
        stack.extend((c, per_chunk) for c in getattr(obj, "_connectors", None) or ())
    return None

