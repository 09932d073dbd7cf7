"""Prefix-aware admission: waiting requests with larger cached-prefix hits go first.

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
from vllm.v1.request import Request

from cachewise.runtime.config import CONFIG_KEY, ConfigError, SchedulerSettings

logger = logging.getLogger("vllm.cachewise")


class PrefixRanker:
    """Orders a list of waiting requests (module doc); remembers how often each was passed over."""

    def __init__(
        self,
        settings: SchedulerSettings,
        cached_tokens: Callable[[Request], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._cached_tokens = cached_tokens
        self._clock = clock  # the clock of Request.arrival_time
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


def _scheduler_settings(vllm_config: Any) -> SchedulerSettings:
    extra = getattr(vllm_config, "additional_config", None)
    raw = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    if not isinstance(raw, dict) or raw.get("scheduler") is None:
        return SchedulerSettings()
    try:
        return SchedulerSettings.from_mapping(raw["scheduler"])
    except ConfigError as exc:
        logger.warning("CacheWise scheduler: %s; using default bounds", exc)
        return SchedulerSettings()


class PrefixAwareMixin:
    """Adds prefix-hit ranking of the waiting queue to a vLLM scheduler class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix_ranker = PrefixRanker(_scheduler_settings(self.vllm_config), self._cached_prefix_tokens)
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
