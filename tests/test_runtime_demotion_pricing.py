"""Demotion priced by the chance the pool evicts the demoted session's blocks before it returns.

Three parts of one rule (runtime/residency.py, "What a demotion loses"): the eviction order
counts the blocks a block demoted now waits behind (``EvictionOrder.demoted_free``), the
controller turns the pool's eviction count into a rate over ``pressure_window_s``, and the cost
rule charges only the tail the pool would have evicted by each possible return.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.residency import ResidencyController, prefill_seconds
from cachewise.runtime.sessions import Forecast, SessionView

BLOCK = 16
BLOCK_TOKENS = 256
NEAR = Forecast.from_samples([1.0, 2.0, 3.0])


class Pool:
    """A stand-in for ``ScoredBlockPool.eviction_pressure``: (evictions so far, demoted free blocks)."""

    def __init__(self) -> None:
        self.evicted = 0
        self.demoted = 0

    def __call__(self) -> tuple[int, int]:
        return self.evicted, self.demoted


def _idle_resident(view: SessionView, session: str, blocks: int, now: float, forecast: Forecast | None) -> None:
    rid = f"{session}-{now}"
    view.on_arrival(rid, session, "t", blocks * BLOCK, now)
    view.on_scheduled(rid)
    view.on_forecast(rid, session, "t", forecast)
    view.on_finished(rid, blocks * BLOCK, [f"{session}{i}".encode() for i in range(blocks)], now)
    view.set_residency(session, True)


def _near_case(pool: Pool | None) -> tuple[SessionView, ResidencyController]:
    """Idle A (60 blocks, back in 1-3 s) fills the cache with live X; B (50 blocks) waits."""
    view = SessionView(BLOCK, pressure=pool)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0), 100, BLOCK_TOKENS)
    _idle_resident(view, "A", 60, 0.0, NEAR)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
    return view, ctl


def test_a_pool_that_evicts_nothing_makes_a_near_session_demotable() -> None:
    """Without a pool reader the whole recompute is charged and A (back in seconds) is kept;
    when the pool evicts nothing and the blocks demoted before cover B's allocation, A's blocks
    would still be cached on its return: demoted."""
    view, ctl = _near_case(None)
    plan = ctl.plan(view, 0.5, running=8)
    assert plan.demoted == [] and plan.held == ["B"]
    pool = Pool()
    pool.demoted = 50  # B's 50 blocks come from these
    view, ctl = _near_case(pool)
    plan = ctl.plan(view, 0.5, running=8)
    assert ctl.eviction_rate == 0.0 and plan.demoted == ["A"] and "B" in plan.admitted


def test_the_admission_a_demotion_makes_room_for_takes_its_tail_at_once() -> None:
    """Nothing is evicted at any rate (eps = 0) and no demoted blocks are ahead: B, admitted in
    A's room, allocates its 50 blocks at once from A's demoted ones, so every return of A
    recomputes that tail behind A's first 10 blocks; the stall of 9 requests outweighs A's
    seconds of idle room, and A is kept (N = 0 would price the loss at nothing)."""
    pool = Pool()
    view, ctl = _near_case(pool)
    ctl.observe_pressure(view, 0.5)
    s, w, rest = ctl.settings, 60 * BLOCK_TOKENS, 10 * BLOCK_TOKENS
    tail = prefill_seconds(s, w) - prefill_seconds(s, rest)
    keep, drop = ctl.keep_and_drop(view.get("A"), 60, 0.5, served=9, incoming=50)
    assert drop == pytest.approx(9 * tail * NEAR.p_back_within(0.5, s.horizon_s)) and keep < drop
    assert ctl.keep_and_drop(view.get("A"), 60, 0.5, served=9)[1] == 0.0
    plan = ctl.plan(view, 0.5, running=8)
    assert plan.demoted == [] and plan.held == ["B"]


def test_under_heavy_pressure_the_rule_charges_the_whole_recompute() -> None:
    """A pool evicting far more than A's blocks per second loses them all before any return:
    drop is the earlier rule's, and A is kept."""
    pool = Pool()
    view, ctl = _near_case(pool)
    ctl.observe_pressure(view, 0.0)
    pool.evicted = 100_000  # 200,000 blocks/s over the half second
    ctl.observe_pressure(view, 0.5)
    keep, drop = ctl.keep_and_drop(view.get("A"), 60, 0.5, served=9)
    assert ctl.eviction_rate == pytest.approx(200_000.0)
    full = prefill_seconds(ctl.settings, 60 * BLOCK_TOKENS) * 9 * NEAR.p_back_within(0.5, ctl.settings.horizon_s)
    assert drop == pytest.approx(full)
    assert keep < drop and ctl.plan(view, 0.5, running=8).demoted == []


def test_blocks_ahead_shield_a_session_back_before_the_pool_reaches_it() -> None:
    """Rate 10 blocks/s: behind 1,000 demoted blocks, A (back within 3 s) loses nothing;
    behind none, it loses the tail evicted by its return."""
    pool = Pool()
    view, ctl = _near_case(pool)
    ctl.observe_pressure(view, 0.0)
    pool.evicted, pool.demoted = 5, 1000
    ctl.observe_pressure(view, 0.5)
    assert ctl.eviction_rate == pytest.approx(10.0) and ctl.demoted_ahead == 1000
    assert ctl.keep_and_drop(view.get("A"), 60, 0.5, served=0)[1] == 0.0
    pool.demoted = 0
    ctl.observe_pressure(view, 0.5)
    points = NEAR.remaining_points(0.5, 20)
    costs = ctl.return_costs(60, points, served=0)
    assert costs == pytest.approx([ctl.lost_s(60, r, 0.0) for r in points])  # Q = 0: no admission measured yet
    assert 0.0 < costs[0] <= costs[-1] < prefill_seconds(ctl.settings, 60 * BLOCK_TOKENS)  # a tail, not the whole set
    assert 0.0 < ctl.keep_and_drop(view.get("A"), 60, 0.5, served=0)[1] <= sum(costs) / 20
    far = [1.0, 700.0, float("inf")]  # beyond the horizon (600 s) nothing is charged
    assert ctl.return_costs(60, far, served=0)[1:] == [0.0, 0.0]


def test_a_lost_tail_costs_its_prefill_behind_the_cached_prefix() -> None:
    """c(W) - c(W - m) = a_tok m + a_ctx m (2W - m) / 2 in tokens; the whole set adds a0."""
    pool = Pool()
    view = SessionView(BLOCK, pressure=pool)
    ctl = ResidencyController(ResidencySettings(thrash_share=None), 100, BLOCK_TOKENS)
    pool.evicted = 0
    ctl.observe_pressure(view, 0.0)
    pool.evicted = 30
    ctl.observe_pressure(view, 1.0)  # 30 blocks/s
    s, w, m = ctl.settings, 60 * BLOCK_TOKENS, 30 * BLOCK_TOKENS
    assert ctl.lost_s(60, 1.0, 0.0) == pytest.approx(s.prefill_a_tok * m + s.prefill_a_ctx * m * (2 * w - m) / 2)
    assert ctl.lost_s(60, 1.0, 30.0) == 0.0  # the 30 evicted were the blocks ahead
    assert ctl.lost_s(60, 10.0, 0.0) == pytest.approx(prefill_seconds(s, w))  # all 60 gone


def test_eviction_rate_is_read_over_the_configured_window() -> None:
    pool = Pool()
    view = SessionView(BLOCK, pressure=pool)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, pressure_window_s=10.0), 100, BLOCK_TOKENS)
    for t in range(0, 31):  # 100 blocks/s for 20 s, then none
        pool.evicted = 100 * min(t, 20)
        ctl.observe_pressure(view, float(t))
    assert ctl.eviction_rate == pytest.approx(0.0)  # the last 10 s evicted nothing
    pool.evicted += 50
    ctl.observe_pressure(view, 35.0)
    assert ctl.eviction_rate == pytest.approx(50 / 10)  # from the sample at t = 25
    assert len(ctl._pressure_samples) <= 12  # memory: one window of samples


def test_queueing_delay_counts_returning_sessions_only() -> None:
    """Q is the admission wait a demoted session meets when back: new sessions' waits are left out."""
    view = SessionView(BLOCK, pressure=Pool())
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0), 100, BLOCK_TOKENS)
    view.on_arrival("n", "N", "t", 10 * BLOCK, 0.0)  # a new session, admitted after waiting 40 s
    assert ctl.plan(view, 40.0, running=0).admitted == {"N"}
    assert ctl.queueing_delay_s == 0.0
    _idle_resident(view, "R", 10, 41.0, NEAR)
    view.set_residency("R", False, demoted=True)
    view.on_arrival("r2", "R", "t", 10 * BLOCK, 42.0)  # back, no longer resident: waits 3 s
    assert "R" in ctl.plan(view, 45.0, running=1).admitted
    assert ctl.queueing_delay_s == pytest.approx(3.0)


@pytest.mark.vllm
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 40), rounds=st.integers(1, 30))
def test_demoted_free_counts_exactly_the_blocks_evicted_before_a_new_demotion(seed: int, n: int, rounds: int) -> None:
    """Random demotions, hits, new predictions, request marks and evictions (in the learned order or,
    as while the guard serves LRU, demoted blocks only): ``demoted_free`` equals the blocks still in
    the demoted state, and those are exactly the first hashed victims -- and the only ones
    ``demoted_only`` hands out."""
    from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

    from cachewise.runtime.eviction_order import EvictionOrder

    rng = random.Random(seed)
    blocks = [KVCacheBlock(i) for i in range(n)]
    queue = FreeKVCacheBlockQueue(blocks)
    order = EvictionOrder(blocks)
    for blk in order.take(n, 0.0, queue):  # all unhashed: hash them and free them with a far prediction
        blk._block_hash = (0, blk.block_id)
        order.on_release([blk], 500.0, 3600.0, chained=False)
        queue.append(blk)
        order.on_free([blk], 0.0)
    demoted: list[int] = []  # the model: blocks still in the demoted state
    now = 1.0
    for _ in range(rounds):
        now += 1.0
        op = rng.random()
        pick = rng.sample(blocks, rng.randint(1, 4))
        gone: set[int] = {b.block_id for b in pick}  # blocks leaving the demoted state in this step
        if op < 0.5:
            order.on_demote(pick, now)
            demoted.extend(b.block_id for b in pick if b.block_id not in demoted)
            gone = set()
        elif op < 0.65:  # a prefix hit takes the block (vLLM: touch, out of the free queue), then frees it again
            for blk in pick:
                order.on_touch(blk)
                queue.remove(blk)
                blk.ref_cnt = 1
            assert order.demoted_free == len([b for b in demoted if b not in gone])  # in use: not ahead of anything
            for blk in pick:
                order.on_release([blk], now + 100.0, now + 3600.0, chained=False)
                blk.ref_cnt = 0
                queue.append(blk)
                order.on_free([blk], now)
        elif op < 0.8:  # the session's request arrived: its blocks are marked requested
            order.on_request(pick, now, now + 3600.0)
        else:  # the pool needs blocks: victims in eviction order (or, the guard serving LRU, only
            # demoted ones), re-hashed and freed with a prediction
            only = rng.random() < 0.5
            victims = order.take(len(pick), now, queue, demoted_only=only)
            gone = {b.block_id for b in victims}
            if only:
                assert gone <= set(demoted) and len(victims) == min(len(pick), len(demoted))
            assert order.demoted_free == len([b for b in demoted if b not in gone])  # evicted: no longer ahead
            for blk in victims:
                blk._block_hash = (now, blk.block_id)
                order.on_release([blk], now + 100.0, now + 3600.0, chained=False)
                queue.append(blk)
                order.on_free([blk], now)
        demoted = [b for b in demoted if b not in gone]
        assert order.demoted_free == len(demoted)
    victims = order.take(n, now + 1.0, queue, demoted_only=True)
    assert sorted(b.block_id for b in victims) == sorted(demoted)  # exactly the demoted ones, and only them
    assert order.take(n, now + 2.0, queue, demoted_only=True) == []  # nothing demoted: vLLM's order alone
