"""A queued request's cached prefix is kept while it waits, inside vLLM's real scheduler.

Session A's prefix was predicted back at t=10 and session B's at t=400. A's next request
arrives at t=50 behind a large request that needs room, and the scheduler only steps at
t=300. Without the arrival hook A's prefix would be overdue (re-keyed to 300 + 300 = 600,
later than B's 400) and lose its tail; with it, A's blocks are *requested* at t=50, are never
re-keyed while the request waits, and B's prefix is evicted instead. The control runs the
same traffic with A's request arriving only after the eviction.
"""

from __future__ import annotations

import pytest

from cachewise.runtime.policy import ManualClock as Clock
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion, step
from cachewise.runtime.config import GuardConfig, PoolConfig
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.policy import ReusePrediction

# The learned order itself, with the guard off (tests/test_runtime_guard.py covers the guard).
UNGUARDED = PoolConfig(guard=GuardConfig(enabled=False))

pytestmark = pytest.mark.vllm

BLOCK = 16
A_PROMPT = list(range(4 * BLOCK))
B_PROMPT = list(range(1000, 1000 + 4 * BLOCK))


class Fixed:
    """Predicts the same absolute (reuse_at, expire_at) for every request of a session."""

    table = {"a1": (10.0, 3000.0), "b1": (400.0, 3000.0)}

    def on_request_finished(self, request, now: float) -> ReusePrediction | None:
        entry = self.table.get(request.request_id)
        return None if entry is None else ReusePrediction(*entry)


def _warm(clock: Clock):
    """A scheduler over 16 blocks whose cache holds A's and B's 4-block prefixes (7 blocks never hashed)."""
    with use_policy(Fixed(), clock=clock, config=UNGUARDED):
        scheduler = make_scheduler(make_vllm_config(16, BLOCK))
    for rid, prompt in (("a1", A_PROMPT), ("b1", B_PROMPT)):
        scheduler.add_request(make_request(rid, prompt, BLOCK, max_tokens=2))
        run_to_completion(scheduler)
    return scheduler


def _cached_tokens(scheduler, prompt: list[int]) -> int:
    probe = make_request("probe", prompt + [1], BLOCK)
    _, hit, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(probe.block_hashes, probe.num_tokens - 1)
    return hit


def _a2():
    return make_request("a2", A_PROMPT + list(range(9000, 9000 + BLOCK)), BLOCK, max_tokens=2)


def _pressure():
    """A one-step request of 9 fresh blocks: the 7 never-hashed free blocks, then 2 cached ones."""
    return make_request("pressure", range(50000, 50000 + 9 * BLOCK), BLOCK, max_tokens=1)


def _leaf_of_a(scheduler):
    manager = scheduler.kv_cache_manager
    blocks, hit, _ = manager.coordinator.find_longest_cache_hit(_a2().block_hashes, 4 * BLOCK)
    assert hit == 4 * BLOCK
    return blocks[0][-1]


@pytest.mark.parametrize("a_queued_during_eviction", [True, False])
def test_queued_request_keeps_its_prefix(a_queued_during_eviction: bool) -> None:
    clock = Clock()
    scheduler = _warm(clock)
    pool = scheduler.kv_cache_manager.block_pool
    clock.now = 50.0
    scheduler.add_request(_pressure())
    a2 = _a2()
    if a_queued_during_eviction:
        scheduler.add_request(a2)
    clock.now = 300.0
    step(scheduler)  # the pressure request is scheduled first and evicts 2 cached blocks
    if not a_queued_during_eviction:
        scheduler.add_request(a2)
    run_to_completion(scheduler)
    assert pool.stats.held == 0, "no preemption muddles the order"
    if a_queued_during_eviction:
        assert pool.stats.ghost_hits == 0, "A's queued request must find its whole prefix"
        assert _cached_tokens(scheduler, B_PROMPT) < 4 * BLOCK, "B's prefix (back at 400) lost its tail instead"
    else:
        assert pool.stats.ghost_hits == 1, "A's overdue prefix lost its tail before A's request arrived"
        assert _cached_tokens(scheduler, B_PROMPT) == 4 * BLOCK
    assert pool.stats.fallbacks["hook_error"] == 0


def test_arrival_marks_the_free_prefix_requested_and_it_is_never_rekeyed() -> None:
    clock = Clock()
    scheduler = _warm(clock)
    pool = scheduler.kv_cache_manager.block_pool
    leaf = _leaf_of_a(scheduler)
    assert pool._order.prediction(leaf.block_id) == (10.0, 3000.0)
    clock.now = 50.0
    scheduler.add_request(_pressure())
    scheduler.add_request(_a2())
    expected = (10.0, 50.0 + pool.config.max_idle_s)
    assert pool._order.prediction(leaf.block_id) == expected, "key min(10, arrival), expiring max_idle_s after arrival"
    clock.now = 300.0
    step(scheduler)
    assert pool._order.rekeys == 0, "B is not due yet and A's requested blocks are never re-keyed"
    assert pool._order.prediction(leaf.block_id) is None, "a2's hit consumed the mark"


def test_arrival_in_fallback_mode_and_failing_hook_leave_vllm_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    with use_policy(None):
        scheduler = make_scheduler(make_vllm_config(16, BLOCK))
    scheduler.add_request(make_request("r", A_PROMPT, BLOCK, max_tokens=2))
    run_to_completion(scheduler)
    pool = scheduler.kv_cache_manager.block_pool
    assert not pool.active and pool.stats.fallbacks["hook_error"] == 0

    clock = Clock()
    scheduler = _warm(clock)
    pool = scheduler.kv_cache_manager.block_pool

    def broken(request, groups):
        raise KeyError("bug")

    monkeypatch.setattr(pool, "on_request_arrived", broken)
    a2 = _a2()
    scheduler.add_request(a2)
    assert pool.stats.fallbacks["hook_error"] == 1 and scheduler.requests["a2"] is a2
    run_to_completion(scheduler)
    assert pool.stats.ghost_hits == 0


@pytest.mark.parametrize("another_waiter", [False, True])
def test_aborted_waiting_request_drops_its_requested_marks(another_waiter: bool) -> None:
    # As the queued case above, but A's request is aborted before the step at t=300: nothing
    # waits for A's prefix any more, so it is overdue again and loses its tail instead of B's.
    # With a second request still waiting on the same prefix, the mark (and A's prefix) stays.
    from vllm.v1.request import RequestStatus

    clock = Clock()
    scheduler = _warm(clock)
    pool = scheduler.kv_cache_manager.block_pool
    leaf = _leaf_of_a(scheduler)
    clock.now = 50.0
    scheduler.add_request(_pressure())
    scheduler.add_request(_a2())
    if another_waiter:
        twin = make_request("a2-twin", A_PROMPT + list(range(9500, 9500 + BLOCK)), BLOCK, max_tokens=2)
        scheduler.add_request(twin)
    assert pool._order._requested[leaf.block_id] == 1
    scheduler.finish_requests("a2", RequestStatus.FINISHED_ABORTED)
    assert pool._order._requested[leaf.block_id] == (1 if another_waiter else 0)
    clock.now = 300.0
    step(scheduler)  # the pressure request evicts 2 cached blocks
    if another_waiter:
        assert _cached_tokens(scheduler, A_PROMPT) == 4 * BLOCK, "the twin still waits for A's prefix"
        assert _cached_tokens(scheduler, B_PROMPT) < 4 * BLOCK
    else:
        assert _cached_tokens(scheduler, A_PROMPT) < 4 * BLOCK, "A's prefix, wanted by nobody, went first"
        assert _cached_tokens(scheduler, B_PROMPT) == 4 * BLOCK
    run_to_completion(scheduler)
    assert pool.stats.fallbacks["hook_error"] == 0
