"""The eviction order's containers stay within their documented bound under many re-keys.

Each round frees every block with a fresh prediction (a timer entry per block: its reuse time,
or its expiry when requested), lets time pass so some become overdue and are re-keyed, then
evicts them all. Evictions consume candidate-heap entries but not the timers of blocks
predicted far ahead, which is how the timer heap used to grow without bound (only the
candidate heap's size triggered a compaction). Every example has two gaps of 0 in a row (due at once,
overdue by the next take; one of any two neighbours is not requested, so the re-key path runs) and one of 4,000 s (timers far ahead).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

from cachewise.runtime.eviction_order import EvictionOrder

pytestmark = pytest.mark.vllm


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(24, 48),
    rounds=st.integers(80, 150),
    gaps=st.lists(st.floats(0.0, 5000.0), min_size=1, max_size=16).map(lambda g: [*g, 0.0, 0.0, 4000.0]),
    step=st.floats(0.1, 30.0),
    requested_every=st.integers(2, 7),
)
def test_containers_stay_bounded_under_rekeys(n: int, rounds: int, gaps: list[float], step: float, requested_every: int) -> None:
    blocks = [KVCacheBlock(i) for i in range(n)]
    queue = FreeKVCacheBlockQueue(blocks)
    order = EvictionOrder(blocks)
    bound = order.max_container_entries
    assert bound == 3 * n + 1025
    now = 0.0
    taken = order.take(n, now, queue)  # every block starts unhashed: all of them come out
    assert len(taken) == n
    for r in range(rounds):
        for i, blk in enumerate(taken):
            blk._block_hash = (r, i)
            gap = gaps[(r + i) % len(gaps)]
            order.on_release([blk], now + gap, now + 3600.0, chained=False)
            queue.append(blk)
            order.on_free([blk], now)
            if (r + i) % requested_every == 0:
                order.on_request([blk], now, now + 3600.0)
        now += step
        order.take(1, now, queue)  # processes due timers: overdue blocks are re-keyed
        now += step
        rest = order.take(n, now, queue)
        for blk in rest:
            order.on_drop(blk)
        taken = [b for b in blocks if b.prev_free_block is None and b.next_free_block is None]
        for blk in taken:
            blk._block_hash = None
        assert all(size <= bound for size in order.container_sizes()), (r, order.container_sizes(), bound)
    assert order.rekeys > 0  # a gap of 0 makes blocks overdue by the next take: the re-key path ran
