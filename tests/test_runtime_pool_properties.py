"""Property tests: random request traffic through vLLM's real KVCacheManager, scored pool vs vLLM's pool.

Hypothesis drives the same sequence of operations (admit a request with a shared or fresh
prefix, decode into it, finish it with a random predicted gap, preempt it, let time pass,
evict free chain leaves through the connector path) through two real ``KVCacheManager`` instances:
one on vLLM's ``BlockPool``, one on CacheWise's ``ScoredBlockPool``. After every operation:

* no block held by a live request was evicted (ref count > 0, its hash still cached);
* no cached block sits under an evicted ancestor (scored pool; its chain invariant);
* free-block counts and allocation outcomes equal vLLM's pool;
* vLLM's ``free_block_queue`` holds exactly the blocks with ref count 0.

Every prompt ends in at least one token of its own. vLLM does not deduplicate cached
blocks: a prompt ending on a block boundary recomputes its last block into a second copy,
and which copy survives is an eviction choice that legitimately changes later free counts
(a hit on a free copy takes a block from the free queue, a hit on a held copy does not).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.request import Request, RequestStatus

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.cpu_engine import make_kv_cache_config, make_request
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.policy import ReusePrediction

pytestmark = pytest.mark.vllm

BLOCK = 4
NUM_BLOCKS = 14


class ScriptedPredictor:
    """Predicts, per request id, the gap the test chose (NaN/None entries exercise failures)."""

    def __init__(self) -> None:
        self.gaps: dict[str, float | None] = {}

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        gap = self.gaps.get(request.request_id)
        return None if gap is None else ReusePrediction(now + gap, now + 4 * abs(gap) + 1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _manager() -> KVCacheManager:
    return KVCacheManager(
        make_kv_cache_config(NUM_BLOCKS, BLOCK),
        max_model_len=4096,
        scheduler_block_size=BLOCK,
        hash_block_size=BLOCK,
        enable_caching=True,
    )


class Twin:
    """One request in both managers (separate Request objects, same tokens)."""

    def __init__(self, rid: str, prompt: list[int]) -> None:
        self.rid = rid
        self.reqs = [make_request(rid, prompt, BLOCK, max_tokens=1000) for _ in range(2)]


def _admit(manager: KVCacheManager, req: Request) -> bool:
    computed, n, _ = manager.get_computed_blocks(req)
    ok = manager.allocate_slots(req, req.num_tokens - n, n, computed) is not None
    if ok:
        req.num_computed_tokens = req.num_tokens
    return ok


def _decode(manager: KVCacheManager, req: Request, tokens: list[int]) -> bool:
    for tok in tokens:
        req.append_output_token_ids(tok)
    ok = manager.allocate_slots(req, len(tokens)) is not None
    if ok:
        req.num_computed_tokens = req.num_tokens
    return ok


def _check_pool(manager: KVCacheManager, live: list[Request], parents: dict[bytes, bytes], scored: bool) -> None:
    pool = manager.block_pool
    queue = pool.free_block_queue.get_all_free_blocks()
    assert len(queue) == pool.get_num_free_blocks()
    assert {b.block_id for b in queue} == {b.block_id for b in pool.blocks if b.ref_cnt == 0 and not b.is_null}
    for req in live:
        for block in manager.coordinator.single_type_managers[0].req_to_blocks.get(req.request_id, []):
            assert block.ref_cnt > 0, f"block {block.block_id} of live {req.request_id} is free"
            if block.block_hash is not None:
                assert pool.cached_block_hash_to_block.contain(block.block_hash, block.block_id)
    if scored:
        cached = {key[:-4] for key in pool.cached_block_hash_to_block._cache}  # drop the 4-byte group id
        for h in cached:
            parent = parents.get(h)
            assert parent is None or parent in cached, "a cached block sits under an evicted ancestor"


def _free_cached_leaves(manager: KVCacheManager, parents: dict[bytes, bytes]) -> list[int]:
    """Ids of free cached blocks with no cached child (what a connector may evict without stranding)."""
    pool = manager.block_pool
    cached = {key[:-4] for key in pool.cached_block_hash_to_block._cache}
    has_child = {parents[h] for h in cached if h in parents}
    return sorted(
        b.block_id
        for b in pool.blocks
        if b.ref_cnt == 0 and b.block_hash is not None and b.block_hash[:-4] not in has_child
    )


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("new"), st.integers(0, 3), st.integers(1, 5), st.integers(1, 9)),
        st.tuples(st.just("new"), st.integers(0, 3), st.integers(1, 5), st.integers(1, 9)),
        st.tuples(st.just("decode"), st.integers(0, 7), st.integers(1, 6)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.one_of(st.none(), st.floats(0, 500), st.just(math.nan))),
        st.tuples(st.just("preempt"), st.integers(0, 7)),
        st.tuples(st.just("tick"), st.floats(0, 300)),
        st.tuples(st.just("evict"), st.integers(1, NUM_BLOCKS - 1)),
    ),
    min_size=25,
    max_size=80,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_scored_pool_keeps_vllm_invariants(ops: list[tuple]) -> None:
    predictor, clock = ScriptedPredictor(), Clock()
    plain = _manager()
    with use_policy(predictor, clock=clock):
        scored = _manager()
    assert isinstance(scored.block_pool, ScoredBlockPool) and scored.block_pool.active
    assert type(plain.block_pool) is not ScoredBlockPool
    managers = (plain, scored)
    live: list[Twin] = []
    parents: dict[bytes, bytes] = {}
    serial = 0
    for op in ops:
        kind = op[0]
        if kind == "new":
            _, family, shared_blocks, tail = op
            serial += 1
            prompt = [family * 1000 + i for i in range(shared_blocks * BLOCK)] + [100000 + serial * 10 + i for i in range(tail)]
            twin = Twin(f"r{serial}", prompt)
            outcomes = [_admit(m, r) for m, r in zip(managers, twin.reqs)]
            assert outcomes[0] == outcomes[1], f"admission differs from vLLM: {outcomes}"
            if outcomes[0]:
                live.append(twin)
        elif kind == "decode" and live:
            twin = live[op[1] % len(live)]
            toks = [200000 + serial * 10 + i for i in range(op[2])]
            serial += 1
            outcomes = [_decode(m, r, toks) for m, r in zip(managers, twin.reqs)]
            assert outcomes[0] == outcomes[1], f"decode allocation differs from vLLM: {outcomes}"
        elif kind in ("finish", "preempt") and live:
            twin = live.pop(op[1] % len(live))
            if kind == "finish":
                predictor.gaps[twin.rid] = op[2]
            for m, r in zip(managers, twin.reqs):
                r.status = RequestStatus.FINISHED_STOPPED if kind == "finish" else RequestStatus.RUNNING
                m.free(r)
        elif kind == "tick":
            clock.now += op[1]
        elif kind == "evict":
            for m in managers:
                leaves = _free_cached_leaves(m, parents)
                if leaves:
                    m.evict_blocks({leaves[op[1] % len(leaves)]})
        for twin in live:
            hashes = twin.reqs[1].block_hashes
            parents.update(zip(hashes[1:], hashes[:-1]))
        assert plain.block_pool.get_num_free_blocks() == scored.block_pool.get_num_free_blocks()
        _check_pool(plain, [t.reqs[0] for t in live], parents, scored=False)
        _check_pool(scored, [t.reqs[1] for t in live], parents, scored=True)
    stats = scored.block_pool.stats
    event(f"scored pool evicted cached blocks: {min(stats.evictions, 5)}{'+' if stats.evictions >= 5 else ''}")
    assert stats.fallbacks["hook_error"] == 0
    assert scored.block_pool.active or stats.fallbacks["disabled"] == 1
