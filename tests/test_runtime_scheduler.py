"""Prefix-aware admission in vLLM's real scheduler, and its bound on passing a request over."""

from __future__ import annotations

import pytest

from cachewise.runtime.config import SchedulerSettings
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion, step
from cachewise.runtime.scheduler import PrefixAwareScheduler, PrefixRanker

pytestmark = pytest.mark.vllm

BLOCK = 16
SHARED = list(range(6 * BLOCK))


def _engine(scheduler_cls: str | None, scheduler_settings: dict | None = None):
    extra = {"cachewise": {"mode": "fallback", "scheduler": scheduler_settings or {}}}
    return make_scheduler(make_vllm_config(64, BLOCK, additional_config=extra, scheduler_cls=scheduler_cls, max_num_seqs=1))


def _admission_order(scheduler) -> list[str]:
    """Warm the cache with SHARED, queue a cold request then a warm one; the order they start running."""
    scheduler.add_request(make_request("warmup", SHARED + [1], BLOCK, 2))
    run_to_completion(scheduler)
    scheduler.add_request(make_request("cold", range(5000, 5000 + 6 * BLOCK), BLOCK, 2, arrival_time=1e12))
    scheduler.add_request(make_request("warm", SHARED + [2, 3], BLOCK, 2, arrival_time=1e12))
    started: list[str] = []
    while scheduler.has_unfinished_requests():
        step(scheduler)
        started.extend(r.request_id for r in scheduler.running if r.request_id not in started)
    return started


def test_warm_request_is_admitted_before_an_earlier_cold_one() -> None:
    assert _admission_order(_engine(None)) == ["cold", "warm"]  # vLLM: FCFS
    scheduler = _engine("cachewise.runtime.scheduler.PrefixAwareScheduler")
    assert isinstance(scheduler, PrefixAwareScheduler)
    assert _admission_order(scheduler) == ["warm", "cold"]


def _requests(n: int, arrival: float) -> list:
    return [make_request(f"q{i}", range(100 * i, 100 * i + BLOCK), BLOCK, arrival_time=arrival) for i in range(n)]


def test_ranker_bound_a_request_is_passed_over_at_most_max_passes_times() -> None:
    """A cold request at the head, with warm requests arriving behind it every step."""
    hits: dict[str, int] = {}
    ranker = PrefixRanker(SchedulerSettings(lookahead=8, max_passes=3, max_wait_s=1e9), lambda r: hits[r.request_id], clock=lambda: 0.0)
    cold = make_request("cold", range(BLOCK), BLOCK, arrival_time=0.0)
    hits["cold"] = 0
    waiting = [cold]
    for step_no in range(10):
        warm = make_request(f"warm{step_no}", range(BLOCK), BLOCK, arrival_time=0.0)
        hits[warm.request_id] = 1000
        waiting = ranker.rank(waiting + [warm])
        if waiting[0] is cold:
            break
        waiting.pop(0)  # the head is admitted
    assert waiting[0] is cold and step_no == 3 and ranker.passes("cold") == 3


def test_ranker_ages_by_waiting_time_and_keeps_queue_order_among_aged() -> None:
    now = [100.0]
    hits = {"a": 0, "b": 0, "c": 50, "d": 10}
    ranker = PrefixRanker(SchedulerSettings(lookahead=8, max_passes=99, max_wait_s=30.0), lambda r: hits[r.request_id], clock=lambda: now[0])
    reqs = {rid: make_request(rid, range(BLOCK), BLOCK, arrival_time=t) for rid, t in (("a", 60.0), ("b", 65.0), ("c", 90.0), ("d", 95.0))}
    order = ranker.rank([reqs[k] for k in "abcd"])
    assert [r.request_id for r in order] == ["a", "b", "c", "d"]  # a, b waited >= 30 s: aged, in queue order
    now[0] = 60.0
    order = ranker.rank([reqs[k] for k in "abcd"])
    assert [r.request_id for r in order] == ["c", "d", "a", "b"]  # nobody aged: by hit
    assert ranker.passes("a") == 1 and ranker.passes("b") == 1 and ranker.passes("c") == 0


def test_ranker_only_reorders_the_lookahead_window() -> None:
    hits = {f"q{i}": i for i in range(6)}
    ranker = PrefixRanker(SchedulerSettings(lookahead=3), lambda r: hits[r.request_id], clock=lambda: 0.0)
    order = ranker.rank(_requests(6, 0.0))
    assert [r.request_id for r in order] == ["q2", "q1", "q0", "q3", "q4", "q5"]


def test_bad_scheduler_settings_fall_back_to_defaults() -> None:
    scheduler = _engine("cachewise.runtime.scheduler.PrefixAwareScheduler", {"max_pases": 1})
    assert scheduler.prefix_ranker.settings == SchedulerSettings()
