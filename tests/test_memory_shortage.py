"""The engine's one memory-shortage test (runtime/memory_shortage.py): its two criteria, its half-life and its latch."""

from __future__ import annotations

import pytest

from cachewise.runtime.memory_shortage import MemoryShortage


class Live:
    """A ``live`` reader that counts its calls."""

    def __init__(self, blocks: float) -> None:
        self.blocks, self.calls = blocks, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.blocks


@pytest.mark.parametrize(("blocks", "short"), [(100.0, False), (100.5, True)])
def test_short_once_the_live_requests_exceed_the_capacity(blocks: float, short: bool) -> None:
    test = MemoryShortage(0.2)
    assert test.check(Live(blocks), 100, "test") is short and test.short is short


@pytest.mark.parametrize(("prefilled", "recomputed", "short"), [(50, 20, False), (50, 21, True), (400, 80, False), (400, 81, True)])
def test_short_once_the_recompute_passes_the_share_of_the_prefill_and_of_the_capacity(prefilled: int, recomputed: int, short: bool) -> None:
    """Share 0.2, capacity 100, one fold: the recompute must pass 0.2 x max(prefill, 100) -- 20 blocks
    for a prefill under the capacity, 80 for 400 prefilled. The live requests (10) fit throughout."""
    test = MemoryShortage(0.2)
    test.record(prefilled, recomputed)
    assert test.check(Live(10), 100, "test") is short


def test_old_recompute_fades_with_a_half_life_of_one_capacity_of_prefill() -> None:
    """18 recomputed of 20 prefilled at the first check (the share asks more than 0.2 x 100 = 20); 100
    clean blocks prefilled later the 18 count as 9 and the 20 as 10, of 110 prefilled (the share asks
    more than 22): 12 more recomputed make 21, not enough (without the fading: 30 of 120, short), 2 more
    make 23."""
    test = MemoryShortage(0.2)
    test.record(20, 18)
    assert not test.check(Live(0), 100, "test")
    test.record(100, 0)
    assert not test.check(Live(0), 100, "test")  # 9 of 110
    test.record(0, 12)
    assert not test.check(Live(0), 100, "test")  # 21 of 110 (the 22 the share asks)
    test.record(0, 2)
    assert test.check(Live(0), 100, "test")  # 23


def test_the_latch_holds_and_stops_reading_the_live_requests() -> None:
    test, live = MemoryShortage(0.2), Live(150)
    assert test.check(live, 100, "controller") and live.calls == 1
    live.blocks = 0
    test.record(1000, 0)
    assert test.check(live, 100, "guard") and live.calls == 1 and test.short


def test_no_share_means_short_from_the_start_and_recompute_past_the_share_skips_the_live_sum() -> None:
    live = Live(0)
    assert MemoryShortage(None).short and MemoryShortage(None).check(live, 100, "test") and live.calls == 0
    test = MemoryShortage(0.2)
    test.record(30, 30)
    assert test.check(live, 100, "test") and live.calls == 0
