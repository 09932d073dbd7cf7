"""Prefetch: an idle session's prefix comes back from the host tier before its predicted return.

vLLM's ``OffloadingConnector`` loads host blocks only *for a request*: its scheduler side finds
a request's host hit (``get_num_new_matched_tokens``), queues the load when the blocks are
allocated (``update_state_after_alloc``), and the request waits in ``WAITING_FOR_REMOTE_KVS``
until the worker reports it done. There is no "load these blocks" call. So CacheWise makes
the request itself, without a fork: the residency scheduler (``--scheduler-cls``) adds an
*internal prefetch request* to vLLM's waiting queue, through ``Scheduler.add_request``.

Mechanism, and the vLLM hook each part uses:

* **decide** (``ResidencyMixin.schedule``, before vLLM's ``schedule()``, after the residency
  plan): a session is due when it is idle, admitted (resident: with the host tier, idle
  admitted sessions beyond the GPU room live on the host, residency rule 6) or demoted by the
  residency controller, has a forecast, was not prefetched since its last request,
  ``P(back within load_s + lead_s | idle so far) >= min_p_back`` (the forecast's remaining-gap
  quantiles, :meth:`~cachewise.runtime.sessions.Forecast.p_back_within`; ``load_s`` = its
  working set's tokens x the measured host reload seconds per token), and its last request's
  full blocks are not all cached on the GPU (``cached_blocks``: vLLM's read-only
  ``find_longest_cache_hit``, asked only of sessions that passed the other tests: the GPU
  pool evicted some of them);
* **trust**: nothing is added while the guard distrusts the model (the residency controller
  passes through, rule 5; prefetches in flight run to their end);
* **room**: no session waits for admission (the plan holds none: prefetch never overtakes a
  waiting session), the session's working set fits the GPU budget next to the sessions that
  need the GPU now (the plan's ``gpu``: live ones and prefetches in flight, rule 6) and, if
  it was not admitted, the admitted budget next to the admitted ones (it becomes resident),
  and vLLM's pool has the free blocks; else it is skipped this step (counted);
* **inject** (``Scheduler.add_request`` of vLLM, not the view's arrival: a prefetch is no
  user request): prompt = the session's last finished request's full computed blocks plus
  one token (its tokens, LoRA, cache salt and vLLM's block hasher, so the block hashes are the
  ones stored on the host), ``max_tokens`` 1;
* **load**: vLLM's connector path, unchanged: the host hit is loaded asynchronously, the
  request then computes one token and finishes;
* **keep** (:meth:`~cachewise.runtime.block_pool.ScoredBlockPool.expect`): its blocks are
  released with the session's predicted return (``reuse_at`` = now + median remaining gap,
  ``expire_at`` = the forecast's expiry) instead of a predictor call: the learned order keeps
  them as "back soon" (with vLLM's own pool they go in its LRU order);
* **hide** (``Scheduler.update_from_output``): its outputs and finish are removed from the
  ``EngineCoreOutputs`` (no client sees it; vLLM's output processor drops unknown ids anyway);
* **abort** (``Scheduler.finish_requests``, ``FINISHED_ABORTED``): a prefetch that has not
  started (no blocks, not loading) is aborted when its session's request arrives first (that
  request loads the prefix itself) or after ``max_wait_s`` (the session's residency then goes
  back to what it was before: admitted, or demoted); while a prefetch is loading, vLLM's
  connector itself delays a request whose host chunks are being loaded
  (``get_num_new_matched_tokens`` returns None), so the session's request waits for that load
  instead of loading the same blocks again;
* **fallback**: a request that cannot be mirrored (multimodal, prompt embeddings, no block
  hasher, fewer than one full block) is skipped (counted ``unsupported``); any exception turns
  prefetch off for good (counted, one warning; residency and vLLM go on).

State: the view (:class:`~cachewise.runtime.sessions.SessionView`) holds no tokens; this
module keeps, per idle session, a reference to its last finished vLLM ``Request`` (no copy),
dropped when the session leaves the view, and the prefetch requests in flight.

Only runs while vLLM calls ``schedule()`` (the engine has requests): an idle engine does not
prefetch. Complexity per step: O(S) over the sessions of the view plus O(prefetches in flight)
plus O(blocks of the last request) for each session that passes the forecast test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import SamplingParams
from vllm.v1.request import Request, RequestStatus

from cachewise.runtime.config import PrefetchSettings
from cachewise.runtime.sessions import SessionState, SessionView

PREFIX = "cachewise-prefetch-"
"""Request-id prefix of prefetch requests."""


@dataclass
class PrefetchStats:
    """Counts since start (monotone)."""

    issued: int = 0
    completed: int = 0
    aborted_arrived: int = 0  # the session's request came first
    aborted_waited: int = 0  # not started within max_wait_s (no GPU room)
    skipped_waiting: int = 0  # due while a session waited for admission (once per session per idle period)
    skipped_no_room: int = 0  # due, no session waiting, but no room in the budget or pool (likewise)
    unsupported: int = 0
    errors: int = 0


@dataclass
class Inflight:
    """A prefetch request in vLLM."""

    session: str
    request: Request
    issued_at: float
    was_resident: bool  # the session's residency before the prefetch (restored if it is aborted unstarted)


@dataclass
class Due:
    """A session to prefetch: its blocks and the prediction its blocks will carry."""

    state: SessionState
    blocks: float
    p_back: float
    reuse_at: float
    expire_at: float


@dataclass
class Prefetcher:
    """Decides and builds prefetch requests (module doc); the scheduler adds and aborts them.

    ``reload_s_per_token``: host→GPU seconds per token (the residency settings' measured
    ``host_reload_s_per_token``); ``block_size``: tokens per block; ``cached_blocks``: how many
    leading full blocks of a request vLLM's GPU prefix cache holds now (read-only).
    """

    settings: PrefetchSettings
    reload_s_per_token: float
    block_size: int
    cached_blocks: Callable[[Request], int]
    stats: PrefetchStats = field(default_factory=PrefetchStats)
    inflight: dict[str, Inflight] = field(default_factory=dict)  # request id -> prefetch
    _last: dict[str, Request] = field(default_factory=dict)  # session -> its last finished request
    _done: set[str] = field(default_factory=set)  # sessions prefetched (or skipped for good) since their last request
    _skipped: dict[str, set[str]] = field(default_factory=dict)  # reason -> sessions counted skipped since their last request
    _ids: Any = field(default_factory=itertools.count)

    # -------------------------------------------------------------- events
    def on_finished(self, session: str, request: Request) -> None:
        """A user request of ``session`` finished: it is the one a prefetch would mirror."""
        self._last[session] = request
        self._done.discard(session)
        for sessions in self._skipped.values():
            sessions.discard(session)

    def finished(self, request_id: str) -> Inflight | None:
        """The prefetch ``request_id`` finished (completed or aborted); forget it."""
        return self.inflight.pop(request_id, None)

    def forget(self, view: SessionView) -> None:
        """Drop what is kept for sessions the view no longer knows."""
        for key in [k for k in self._last if view.get(k) is None]:
            del self._last[key]
            self._done.discard(key)
            for sessions in self._skipped.values():
                sessions.discard(key)

    # ------------------------------------------------------------ decisions
    def stale(self, view: SessionView, now: float) -> list[tuple[Inflight, str]]:
        """Prefetches to abort now, with the reason (``arrived`` | ``waited``): not started
        (plain ``WAITING``, nothing computed) and their session has a live request, or they
        waited ``max_wait_s``."""
        out = []
        for p in self.inflight.values():
            req = p.request
            if req.status != RequestStatus.WAITING or req.num_computed_tokens > 0:
                continue
            state = view.get(p.session)
            if state is not None and state.live:
                out.append((p, "arrived"))
            elif now - p.issued_at >= self.settings.max_wait_s:
                out.append((p, "waited"))
        return out

    def due(self, view: SessionView, now: float) -> list[Due]:
        """Sessions due for a prefetch now (module doc), most likely back first."""
        s = self.settings
        busy = {p.session for p in self.inflight.values()}
        out = []
        for state in view:
            key = state.key
            if (
                state.live or not (state.resident or state.demoted) or state.forecast is None or state.idle_since is None
                or key in busy or key in self._done or key not in self._last or state.expired(now)
            ):  # fmt: skip
                continue
            blocks = view.working_set(key)
            load_s = blocks * self.block_size * self.reload_s_per_token
            elapsed = now - state.idle_since
            p_back = state.forecast.p_back_within(elapsed, load_s + s.lead_s)
            if p_back < s.min_p_back:
                continue
            last = self._last[key]
            if self.cached_blocks(last) >= (last.num_tokens - 1) // self.block_size:
                continue  # its prefix is on the GPU: nothing to load
            reuse_at = now + state.forecast.remaining_quantile(elapsed, 0.5)
            out.append(Due(state, blocks, p_back, reuse_at, max(reuse_at, state.idle_since + state.forecast.expiry)))
        out.sort(key=lambda d: (-d.p_back, d.reuse_at, d.state.key))
        return out

    def skipped(self, key: str, reason: str) -> None:
        """``key`` was due but not prefetched, ``reason`` ``waiting`` | ``no_room`` (each counted
        once per session and idle period)."""
        seen = self._skipped.setdefault(reason, set())
        if key not in seen:
            seen.add(key)
            setattr(self.stats, f"skipped_{reason}", getattr(self.stats, f"skipped_{reason}") + 1)

    # -------------------------------------------------------------- requests
    def blocks_needed(self, key: str) -> int:
        """GPU blocks ``key``'s prefetch request allocates: its full blocks and one for the extra token."""
        return (self._last[key].num_tokens - 1) // self.block_size + 1

    def build(self, key: str, now: float, was_resident: bool) -> Request | None:
        """The prefetch request mirroring ``key``'s last finished request (None: unsupported, counted)."""
        last = self._last[key]
        bs = self.block_size
        full = (last.num_tokens - 1) // bs  # the last token is never computed
        if full < 1 or last.mm_features or last.prompt_embeds is not None or last._block_hasher is None:
            self.stats.unsupported += 1
            self._done.add(key)
            return None
        request = Request(
            request_id=f"{PREFIX}{next(self._ids)}",
            prompt_token_ids=list(last.all_token_ids[: full * bs + 1]),
            sampling_params=SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False),
            pooling_params=None,
            client_index=last.client_index,
            arrival_time=now,
            lora_request=last.lora_request,
            cache_salt=last.cache_salt,
            block_hasher=last._block_hasher,
        )
        self.inflight[request.request_id] = Inflight(key, request, now, was_resident)
        self._done.add(key)
        self.stats.issued += 1
        return request

