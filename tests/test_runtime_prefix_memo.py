"""The remembered prefix lookup (runtime/prefix_memo.py) against vLLM's own, on vLLM's real scheduler and KV cache (CPU)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm.v1.core.block_pool import BlockPool

from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, step
from cachewise.runtime.prefix_memo import PrefixMemo, memo_applies

pytestmark = pytest.mark.vllm

BLOCK = 16


def _vllm_count(scheduler, request, limit: int) -> int:
    most = min((request.num_tokens - 1) // BLOCK, limit)
    _, tokens, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(request.block_hashes, most * BLOCK)
    return tokens // BLOCK


def _prompt(family: int, blocks: int, variant: int) -> list[int]:
    """``blocks`` blocks: a family's shared first half, then a variant's own blocks."""
    shared = blocks // 2
    head = list(range(1000 * (family + 1), 1000 * (family + 1) + shared * BLOCK))
    return head + [50000 + 100 * variant + family] * ((blocks - shared) * BLOCK)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["serve", "serve", "serve", "reset"]), st.integers(0, 2), st.integers(2, 9), st.integers(0, 3)),
        min_size=1,
        max_size=14,
    ),
    limits=st.lists(st.integers(1, 12), min_size=6, max_size=6),
)
def test_remembered_counts_are_vllms_through_evictions_recaching_and_a_reset(ops, limits) -> None:
    """Requests of three prompt families (shared halves) are served through a 24-block cache, so later ones evict
    earlier prefixes and re-cache them in other blocks; now and then the prefix cache is reset. After every step
    the memo's count for six standing probe requests (asked every time, so their remembered blocks age) is vLLM's
    ``find_longest_cache_hit`` count at the same limit."""
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, max_num_seqs=4, max_num_batched_tokens=256))
    assert memo_applies(scheduler.kv_cache_manager)
    memo = PrefixMemo(scheduler.kv_cache_manager, BLOCK)
    probes = [make_request(f"p{i}", _prompt(i % 3, 10, i // 3) + [1], BLOCK, 1) for i in range(6)]
    served = 0
    for op, family, blocks, variant in ops:
        if op == "reset":
            while scheduler.has_unfinished_requests():
                step(scheduler)
            assert scheduler.kv_cache_manager.block_pool.reset_prefix_cache()
        else:
            scheduler.add_request(make_request(f"r{served}", _prompt(family, blocks, variant), BLOCK, 2))
            served += 1
        for _ in range(3):
            step(scheduler)
            for probe, limit in zip(probes, limits):
                assert memo.leading(probe, limit) == _vllm_count(scheduler, probe, limit)
                assert memo.leading(probe) == _vllm_count(scheduler, probe, 10**6)


def test_a_remembered_lookup_probes_only_past_the_blocks_still_cached(monkeypatch) -> None:
    """Asked again with nothing evicted, the memo probes only the first block it did not find (one probe,
    not the 7 of a whole lookup); once a block it remembered is evicted, it probes again from that block."""
    scheduler = make_scheduler(make_vllm_config(12, BLOCK, max_num_seqs=2, max_num_batched_tokens=256))
    scheduler.add_request(make_request("a", _prompt(0, 6, 0), BLOCK, 1))
    while scheduler.has_unfinished_requests():
        step(scheduler)
    probe = make_request("probe", _prompt(0, 6, 0) + [3] * 3 * BLOCK, BLOCK, 1)
    memo = PrefixMemo(scheduler.kv_cache_manager, BLOCK)
    probes = []
    original = BlockPool.get_cached_block
    monkeypatch.setattr(BlockPool, "get_cached_block", lambda pool, h, g: probes.append(h) or original(pool, h, g))
    assert memo.leading(probe) == 6 and len(probes) == 7  # a's 6 blocks found, then 1 miss
    probes.clear()
    assert memo.leading(probe) == 6 and len(probes) == 1
    scheduler.add_request(make_request("b", _prompt(1, 8, 0), BLOCK, 1))  # 9 of the 11 usable blocks: evicts some of a's
    while scheduler.has_unfinished_requests():
        step(scheduler)
    probes.clear()  # (vLLM's own lookups while scheduling b)
    found, probed = memo.leading(probe), len(probes)
    assert 0 < found == _vllm_count(scheduler, probe, 10**6) < 6 and probed == 1  # the first evicted block, a miss
    monkeypatch.undo()
    memo.forget(set())
    assert memo.leading(probe) == found


def test_without_the_dense_single_group_lookup_it_asks_vllms_coordinator(monkeypatch) -> None:
    """Where a remembered count would not be vLLM's (here: EAGLE drops the last hit block), the memo is vLLM's lookup."""
    scheduler = make_scheduler(make_vllm_config(12, BLOCK, max_num_seqs=2, max_num_batched_tokens=256))
    scheduler.add_request(make_request("a", _prompt(0, 6, 0), BLOCK, 1))
    while scheduler.has_unfinished_requests():
        step(scheduler)
    coordinator = scheduler.kv_cache_manager.coordinator
    monkeypatch.setattr(coordinator, "drop_eagle_group_ids", {0})
    monkeypatch.setattr(coordinator.single_type_managers[0], "use_eagle", True, raising=False)
    memo = PrefixMemo(scheduler.kv_cache_manager, BLOCK)
    assert not memo.remembers
    probe = make_request("probe", _prompt(0, 6, 0) + [3] * 3 * BLOCK, BLOCK, 1)
    assert memo.leading(probe) == _vllm_count(scheduler, probe, 10**6)
    monkeypatch.delattr(coordinator, "dcp_world_size")
    assert not memo_applies(scheduler.kv_cache_manager)
