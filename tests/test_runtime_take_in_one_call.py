"""One ``take`` of k victims evicts what k ``take`` calls of one victim evict at the same time.

Within one call a victim's overdue parent is re-keyed on the spot when another pick follows and no
timer is due (``EvictionOrder._next_anyway``); one victim per call leaves every parent to the next
call's timer pass instead. Both must give the same victims, in the same order, with the same re-keys,
on chains whose predictions are due together (equal keys, so the tie-break is exercised too).

No prediction expires here (every expiry is after the last take). With expiries the two already
differed before that rule, on ties: a victim's expired parent due at the same time as another
expired block's timer is taken next within a call, while the next call's timer pass orders the two by
depth and token (one call of ``[(1, 1.0, 30.0), (2, 1.0, 30.0)]`` at t=30 takes 2, 1, 0; single calls
2, 0, 1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

from cachewise.runtime.eviction_order import EvictionOrder

pytestmark = pytest.mark.vllm


def _released(chains: list[tuple[int, float, float]]) -> tuple[EvictionOrder, FreeKVCacheBlockQueue]:
    """A pool whose blocks form ``chains`` (length, reuse gap and expiry from t=0; freed together at t=0)."""
    n = sum(length for length, _, _ in chains)
    blocks = [KVCacheBlock(i) for i in range(n)]
    queue = FreeKVCacheBlockQueue(blocks)
    order = EvictionOrder(blocks)
    taken = order.take(n, 0.0, queue)
    start = 0
    for c, (length, gap, expire) in enumerate(chains):
        chain = taken[start : start + length]
        start += length
        for i, blk in enumerate(chain):
            blk._block_hash = (c, i)
        order.on_release(chain, gap, expire, chained=True)
        queue.append_n(list(reversed(chain)))
        order.on_free(list(reversed(chain)), 0.0)
    return order, queue


def _victims(chains: list[tuple[int, float, float]], per_call: int | None, times: list[float]) -> tuple[list[int], int, int]:
    """Block ids taken at each of ``times`` (half of what is left each time; the rest at the last),
    ``per_call`` victims a call (None: all in one call); the re-keys made; candidate-heap entries left."""
    order, queue = _released(chains)
    out: list[int] = []
    left = sum(length for length, _, _ in chains)
    for j, now in enumerate(times):
        want = left if j == len(times) - 1 else left // 2
        got = 0
        while got < want:
            k = want - got if per_call is None else min(per_call, want - got)
            victims = order.take(k, now, queue)
            assert victims, "a candidate is left"
            for blk in victims:
                order.on_drop(blk)
                blk._block_hash = None
            out += [blk.block_id for blk in victims]
            got += len(victims)
        left -= got
    return out, order.rekeys, order.container_sizes()[0]


@settings(max_examples=60, deadline=None)
@given(
    chains=st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from([1.0, 5.0, 5.0, 40.0, 900.0]), st.just(3600.0)),
        min_size=1,
        max_size=8,
    ),
    times=st.lists(st.floats(2.0, 3000.0), min_size=1, max_size=4).map(sorted),
)
def test_one_call_takes_what_single_calls_take(chains: list[tuple[int, float, float]], times: list[float]) -> None:
    batched, rekeys_batched, _ = _victims(chains, None, times)
    single, rekeys_single, _ = _victims(chains, 1, times)
    assert batched == single
    assert rekeys_batched == rekeys_single


def test_an_overdue_parent_is_taken_without_a_round_trip_through_the_heaps() -> None:
    """A 4-block chain overdue at t=10: the single calls push each parent (stale, then re-keyed);
    the one call re-keys them in place and takes them, pushing nothing."""
    batched, rekeys_batched, heap_batched = _victims([(4, 5.0, 3600.0)], None, [10.0])
    single, rekeys_single, heap_single = _victims([(4, 5.0, 3600.0)], 1, [10.0])
    assert batched == single == [3, 2, 1, 0]
    assert rekeys_batched == rekeys_single == 4
    assert heap_batched < heap_single
