"""Session residency in vLLM's real Scheduler and KV-cache manager (CPU), and its documented set-up path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.config import GuardConfig, PoolConfig, ResidencySettings
from cachewise.runtime.cpu_engine import export_tiny_model, make_request, make_scheduler, make_vllm_config, step
from cachewise.runtime.eviction_order import EvictionOrder
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.plugin import register
from cachewise.runtime.policy import ManualClock
from cachewise.runtime.scheduler import ResidencyAsyncScheduler, ResidencyScheduler
from cachewise.runtime.sessions import Forecast
from tests.residency_doubles import FAR, NEAR, UNGUARDED, Forecaster

pytestmark = pytest.mark.vllm

BLOCK = 16


def _scheduler(
    num_blocks: int, forecasts: dict[str, Forecast], clock: ManualClock, pool: PoolConfig = UNGUARDED, **residency: float
):
    """A residency scheduler (settings as the class attribute, so no plugin binding interferes) on a scored pool.
    The controller's mechanics are tested with the guard off (it would pass through until the guard trusts
    the forecasts: tests/test_runtime_residency_guard.py) and memory short from the start (``thrash_share``
    None: no standing aside) unless given."""
    settings_ = ResidencySettings(**{"headroom": 0.0, "thrash_share": None, **residency})
    cls = type("TestResidencyScheduler", (ResidencyScheduler,), {"residency_settings": settings_})
    with use_policy(Forecaster(forecasts), clock=clock, config=pool):
        return make_scheduler(make_vllm_config(num_blocks, BLOCK, scheduler_cls=cls, max_num_seqs=8, max_num_batched_tokens=4096))


def _prompt(session: int, blocks: int) -> list[int]:
    return list(range(10000 * (session + 1), 10000 * (session + 1) + blocks * BLOCK))


def _drain(scheduler, clock: ManualClock, max_steps: int = 500) -> list:
    done = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return done
        clock.now += 1.0
        done.extend(step(scheduler))
    raise AssertionError("requests left unfinished")


def _cached(scheduler, tokens: list[int]) -> int:
    request = make_request("probe", tokens + [0], BLOCK, 1)
    _, hit, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(request.block_hashes, request.num_tokens - 1)
    return hit // BLOCK


def test_standing_aside_ends_when_the_real_scheduler_recomputes_a_returning_prefix() -> None:
    """vLLM's ``num_computed_tokens`` at a first schedule reaches the view: a session whose 10-block prefix
    another session's 20 blocks pushed out of a 26-block cache recomputes it when it is back, and with the
    ``thrash_share`` 0.2 memory is short once the recompute passes a fifth of the prefill and
    of the capacity; until then nothing was held though the two did not fit together."""
    clock = ManualClock()
    scheduler = _scheduler(26, {"a": NEAR, "b": NEAR}, clock, thrash_share=0.2)
    a = _prompt(0, 10)
    scheduler.add_request(make_request("a0", a, BLOCK, 1, session_id="a"))
    _drain(scheduler, clock)
    scheduler.add_request(make_request("b0", _prompt(1, 20), BLOCK, 1, session_id="b"))
    _drain(scheduler, clock)
    view, controller = scheduler.sessions, scheduler.residency
    assert view.shortage.recomputed_blocks == 0 and not controller.short and controller.demotions == 0
    lost = 10 - _cached(scheduler, a)
    assert lost > 0
    scheduler.add_request(make_request("a1", a + list(range(5)), BLOCK, 1, session_id="a"))
    _drain(scheduler, clock)
    assert view.shortage.recomputed_blocks == lost and view.shortage.prefill_blocks >= 30 + lost
    scheduler.add_request(make_request("b1", _prompt(1, 20) + [1], BLOCK, 1, session_id="b"))
    step(scheduler)  # the plan before this step's schedule saw a's recompute alone: 5 of 28 prefilled, not past 0.2
    assert not controller.short and view.shortage.recomputed_blocks > lost  # b's 20 blocks, partly pushed out by a's return
    scheduler.add_request(make_request("a2", a + list(range(9)), BLOCK, 1, session_id="a"))
    step(scheduler)
    assert controller.short


@pytest.mark.parametrize("thrash_share", [0.2, None])
def test_the_controller_and_the_pools_guard_read_one_shortage_latch(thrash_share: float | None) -> None:
    """The residency scheduler sets the engine's share on the view's test; the pool's guard (started in
    the learned order, so the controller acts) reads the latch the controller sets. With the share: not
    short while one 15-block request runs in a 26-block cache; a second live 15 blocks (30 > 25) latch it
    at the controller's next plan. Without one (``continuum``): short for both from the start."""
    clock = ManualClock()
    pool = PoolConfig(guard=GuardConfig(start="learned"))
    scheduler = _scheduler(26, {"a": NEAR, "b": NEAR}, clock, pool=pool, thrash_share=thrash_share)
    view, guard = scheduler.sessions, scheduler.kv_cache_manager.block_pool._guard
    assert guard is not None and view.shortage.share == thrash_share
    assert view.shortage.short is (thrash_share is None) and scheduler.residency.short is (thrash_share is None)
    scheduler.add_request(make_request("a0", _prompt(0, 15), BLOCK, 4, session_id="a"))
    step(scheduler)
    assert view.shortage.short is scheduler.residency.short is (thrash_share is None)
    scheduler.add_request(make_request("b0", _prompt(1, 15), BLOCK, 4, session_id="b"))
    step(scheduler)
    assert scheduler.residency.short and view.shortage.short and guard._short()


def test_a_failing_shortage_test_reads_as_not_short_and_never_reaches_vllm() -> None:
    """A bug in the view's test (here: the live sum raises) costs the guard's preview its entry, not the engine."""
    clock = ManualClock()
    scheduler = _scheduler(26, {"a": NEAR}, clock, pool=PoolConfig(), thrash_share=0.2)
    pool, view = scheduler.kv_cache_manager.block_pool, scheduler.sessions

    def broken() -> float:
        raise KeyError("inconsistent view")

    view.live_blocks = broken
    assert pool._guard._short() is False and pool.stats.fallbacks["hook_error"] == 1
    scheduler.add_request(make_request("a0", _prompt(0, 5), BLOCK, 1, session_id="a"))
    _drain(scheduler, clock)


def test_a_session_is_demoted_only_when_another_waits_and_then_its_blocks_go_first() -> None:
    clock = ManualClock()
    scheduler = _scheduler(26, {"far": FAR, "near": NEAR}, clock)
    assert isinstance(scheduler.kv_cache_manager.block_pool, ScoredBlockPool) and scheduler.sessions is not None
    far, near = _prompt(0, 10), _prompt(1, 10)
    scheduler.add_request(make_request("f0", far, BLOCK, 1, session_id="far"))
    scheduler.add_request(make_request("n0", near, BLOCK, 1, session_id="near"))
    _drain(scheduler, clock)
    for _ in range(5):  # both idle and resident; nobody waits: nothing is demoted
        clock.now += 0.01
        step(scheduler)
    assert scheduler.residency.demotions == 0 and scheduler.sessions.get("far").resident
    # A third session needs 10 blocks; with both resident (2 x 11) it does not fit in 25.
    scheduler.add_request(make_request("w0", _prompt(2, 10), BLOCK, 1, session_id="new"))
    _drain(scheduler, clock)
    assert scheduler.residency.demotions == 1 and scheduler.sessions.get("far").demoted
    assert _cached(scheduler, far) < 10 and _cached(scheduler, near) == 10  # the demoted session's blocks went first
    # The controller reads the pool's pressure live: evictions so far, and the demoted blocks still cached.
    pool = scheduler.kv_cache_manager.block_pool
    assert scheduler.sessions.pressure == pool.eviction_pressure() == (pool.stats.evictions, _cached(scheduler, far))
    assert pool.stats.evictions > 0


def test_resuming_from_pass_through_restores_the_budget_on_the_real_scheduler() -> None:
    """Rule 5, restoring: while the guard distrusts the model every session is admitted (vLLM's
    scheduling), here three of 11 blocks in a budget of 25. When it trusts the model again, the
    next step demotes the far idle session, though no session waits for admission (the queued
    request is a resident session's); the residents then fit the budget."""
    clock = ManualClock()
    scheduler = _scheduler(26, {"far": FAR}, clock)
    pool, view = scheduler.kv_cache_manager.block_pool, scheduler.sessions
    verdict = [False]
    view.follow(lambda: verdict[0], pool.eviction_pressure)  # the guard's verdict, driven by the test
    prompts = {key: _prompt(i, 10) for i, key in enumerate(("far", "near", "other"))}
    for key, prompt in prompts.items():
        scheduler.add_request(make_request(f"{key}0", prompt, BLOCK, 1, session_id=key))
    _drain(scheduler, clock)
    assert all(view.get(key).resident for key in prompts) and scheduler.residency.demotions == 0
    assert sum(view.working_set(key) for key in prompts) > scheduler.residency.budget
    verdict[0] = True
    scheduler.add_request(make_request("near1", prompts["near"] + [7] * BLOCK, BLOCK, 1, session_id="near"))
    clock.now += 1.0
    finished = list(step(scheduler))
    assert scheduler.residency.demotions == 1 and view.get("far").demoted
    assert sum(view.working_set(s.key) for s in view if s.resident) <= scheduler.residency.budget
    assert not scheduler.residency.restoring
    assert [r.request_id for r in finished + _drain(scheduler, clock)] == ["near1"]  # a resident's request is never held


def test_a_held_sessions_prefix_is_announced_to_the_pool_only_when_it_is_admitted() -> None:
    """A demoted session comes back while there is no room in the budget: its request is held,
    and the pool is not told of it yet, so its cached blocks stay in the demoted state (first
    evicted) instead of being kept as a queued request's prefix for the whole wait; once
    admitted, the request is announced and served."""
    clock = ManualClock()
    scheduler = _scheduler(60, {"far": FAR}, clock, headroom=0.6)
    pool, view = scheduler.kv_cache_manager.block_pool, scheduler.sessions
    far = _prompt(0, 20)
    scheduler.add_request(make_request("f0", far, BLOCK, 1, session_id="far"))
    _drain(scheduler, clock)
    scheduler.add_request(make_request("w0", _prompt(2, 44), BLOCK, 20, session_id="new"))  # long-running
    clock.now += 1.0
    step(scheduler)  # 20 + 44 blocks want a 59-block cache: reserve 5, far demoted for new
    assert view.get("far").demoted and view.get("new").live
    assert pool.eviction_pressure()[1] == _cached(scheduler, far) > 0  # demoted, what is left of it still cached
    scheduler.add_request(make_request("f1", far + [7] * 3 * BLOCK, BLOCK, 1, session_id="far"))  # 44+ + 23 > 59
    clock.now += 1.0
    step(scheduler)
    assert not view.get("far").resident  # held
    assert pool.eviction_pressure()[1] == _cached(scheduler, far) > 0  # still first evicted (announced, they would leave that state)
    assert "f1" in scheduler.withheld_arrivals
    finished = _drain(scheduler, clock)
    assert {r.request_id for r in finished} == {"w0", "f1"} and scheduler.withheld_arrivals == {}


def test_starvation_bound_admits_a_held_session_within_max_passes() -> None:
    clock = ManualClock()
    scheduler = _scheduler(36, {}, clock, max_passes=3, max_wait_s=1e9)  # A (30 blocks) + B (8) > 35
    scheduler.add_request(make_request("a0", _prompt(0, 30), BLOCK, 40, session_id="A"))  # long-running
    clock.now += 1.0
    step(scheduler)
    scheduler.add_request(make_request("b0", _prompt(1, 8), BLOCK, 1, session_id="B"))
    steps_held = 0
    while not scheduler.sessions.get("B").resident:
        clock.now += 1.0
        step(scheduler)
        steps_held += 1
    assert steps_held <= 4 and scheduler.residency.forced == 1
    _drain(scheduler, clock)


def test_controller_failure_falls_back_to_vllm_scheduling(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    scheduler = _scheduler(40, {}, clock)

    def broken(*args, **kwargs):
        raise RuntimeError("controller bug")

    monkeypatch.setattr(scheduler.residency, "plan", broken)
    for i in range(3):
        scheduler.add_request(make_request(f"r{i}", _prompt(i, 4), BLOCK, 2, session_id=f"S{i}"))
    finished = _drain(scheduler, clock)
    assert sorted(r.request_id for r in finished) == ["r0", "r1", "r2"]
    assert scheduler.residency is None and scheduler.sessions is None  # off for good, vLLM's scheduling


def test_documented_serve_path_builds_the_residency_scheduler(tmp_path: Path) -> None:
    """``--scheduler-cls cachewise.runtime.scheduler.ResidencyAsyncScheduler --additional-config '{"cachewise": ...}'``."""
    register()
    model = export_tiny_model(tmp_path / "model")
    extra = {"cachewise": {"model": str(model), "residency": {"headroom": 0.2, "max_wait_s": 30}}}
    for name, cls in (("ResidencyAsyncScheduler", ResidencyAsyncScheduler), ("ResidencyScheduler", ResidencyScheduler)):
        config = make_vllm_config(64, BLOCK, additional_config=extra, scheduler_cls=f"cachewise.runtime.scheduler.{name}")
        scheduler = make_scheduler(config)
        assert type(scheduler) is cls
        pool = scheduler.kv_cache_manager.block_pool
        assert isinstance(pool, ScoredBlockPool) and pool.active
        assert scheduler.residency.settings.headroom == 0.2 and scheduler.residency.settings.max_wait_s == 30
        assert pool.predictor.sessions is scheduler.sessions  # one session view, fed by the model
        scheduler.add_request(make_request("x0", _prompt(0, 4), BLOCK, 2, hint={"session_id": "S", "tool": "Bash"}))
        clock = ManualClock()
        _drain(scheduler, clock)
        state = scheduler.sessions.get("S")
        assert state is not None and state.forecast is not None and state.idle_since is not None
    bad = make_vllm_config(64, BLOCK, additional_config={"cachewise": {"mode": "fallback", "residency": {"headroom": 7}}},
                           scheduler_cls="cachewise.runtime.scheduler.ResidencyScheduler")
    scheduler = make_scheduler(bad)  # invalid residency settings: defaults, with a warning; vLLM starts
    assert scheduler.residency.settings == ResidencySettings()


MAX_PASSES = 6
sessions_strategy = st.lists(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),  # per session: blocks added by each call
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions_strategy, st.sampled_from([NEAR, FAR]))
def test_random_session_workloads_lose_nothing_and_never_evict_blocks_in_use(sessions: list[list[int]], forecast: Forecast) -> None:
    """Closed loop: each session's next call (its prompt extended) arrives when the previous finishes.
    No request is lost, every session finishes, no block in use is demoted or loses its content,
    and no session is held in more than ``max_passes`` steps in a row."""
    clock = ManualClock()
    scheduler = _scheduler(48, {f"S{i}": forecast for i in range(len(sessions))}, clock, max_passes=MAX_PASSES)
    demoted_in_use: list[int] = []
    held_for: dict[str, int] = {}  # session -> steps held in a row
    longest_hold = [0]
    plan = scheduler.residency.plan

    def counted(view, now, running, loading=(), cached=None):  # the starvation bound: held in at most max_passes steps in a row
        result = plan(view, now, running, loading, cached)
        for key in list(held_for):
            if key not in result.held:
                del held_for[key]
        for key in result.held:
            held_for[key] = held_for.get(key, 0) + 1
            longest_hold[0] = max(longest_hold[0], held_for[key])
        return result

    scheduler.residency.plan = counted
    original = EvictionOrder.on_demote

    def checked(self, blocks, now):  # a demoted block must be free
        blocks = list(blocks)
        demoted_in_use.extend(b.block_id for b in blocks if b.ref_cnt != 0)
        return original(self, blocks, now)

    EvictionOrder.on_demote = checked
    try:
        prompts = {i: _prompt(i, 1) for i in range(len(sessions))}
        next_call = {i: 0 for i in range(len(sessions))}
        sent: set[str] = set()
        finished: list[str] = []

        def send(i: int) -> None:
            k = next_call[i]
            prompts[i] = prompts[i] + [7] + list(range(500 * k, 500 * k + sessions[i][k] * BLOCK - 1))
            rid = f"S{i}.{k}"
            sent.add(rid)
            scheduler.add_request(make_request(rid, prompts[i], BLOCK, 1, session_id=f"S{i}"))
            next_call[i] += 1

        for i in range(len(sessions)):
            send(i)
        for _ in range(2000):
            if not scheduler.has_unfinished_requests():
                break
            clock.now += 1.0
            for request in step(scheduler):
                finished.append(request.request_id)
                i = int(request.request_id[1 : request.request_id.index(".")])
                prompts[i] = prompts[i] + [7]  # the sampled token joins the next prompt
                if next_call[i] < len(sessions[i]):
                    send(i)
            for request in scheduler.running:  # blocks in use keep their content
                for block in scheduler.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks[request.request_id]:
                    assert block.ref_cnt > 0
        assert sorted(finished) == sorted(sent) and len(finished) == sum(len(s) for s in sessions)
        assert demoted_in_use == []
        assert all(not s.live for s in scheduler.sessions)
        assert longest_hold[0] <= MAX_PASSES
    finally:
        EvictionOrder.on_demote = original


@pytest.mark.parametrize("readmit", [0.2, 0.5, 0.9])
def test_the_held_requests_capped_prefix_lookup_gives_the_whole_lookups_verdict(readmit: float) -> None:
    """Rule 2 reads only whether a held request's cached share reaches ``readmit_cached``; the scheduler's
    lookup stops at that many blocks (runtime/scheduler.py ``_held_cached``) and must give the verdict of
    vLLM's whole-prompt lookup, on the real cache after a demotion left part of the prefix cached."""
    clock = ManualClock()
    scheduler = _scheduler(60, {"far": FAR}, clock, headroom=0.6, readmit_cached=readmit)
    view = scheduler.sessions
    far = _prompt(0, 20)
    scheduler.add_request(make_request("f0", far, BLOCK, 1, session_id="far"))
    _drain(scheduler, clock)
    scheduler.add_request(make_request("w0", _prompt(2, 44), BLOCK, 20, session_id="new"))
    clock.now += 1.0
    step(scheduler)
    scheduler.add_request(make_request("f1", far + [7] * 3 * BLOCK, BLOCK, 1, session_id="far"))
    clock.now += 1.0
    step(scheduler)
    request = scheduler.withheld_arrivals["f1"]
    whole = scheduler._gpu_cached_blocks(request) / ((request.num_tokens - 1) // BLOCK)
    capped = scheduler._held_cached(view)["far"]
    assert 0 < capped <= whole < 1
    assert (capped >= readmit) == (whole >= readmit)
    assert capped == whole or whole >= readmit  # capped only past the threshold


@pytest.mark.parametrize("replan_s", [0.0, 0.5])
def test_the_scheduler_plans_again_when_the_requests_change_or_replan_s_has_passed(replan_s: float) -> None:
    """Between plans a served engine runs decode steps in which nothing the plan reads has changed but
    the clock: the scheduler then holds the last plan's sessions instead of planning (``replan_s``).
    An arrival, a finish, a first schedule or ``replan_s`` seconds make it plan again; 0 plans every step."""
    clock = ManualClock()
    scheduler = _scheduler(36, {}, clock, max_wait_s=1e9, replan_s=replan_s)  # A (30 blocks) + B (8) > 35
    scheduler.add_request(make_request("a0", _prompt(0, 30), BLOCK, 40, session_id="A"))  # decodes 40 steps
    clock.now += 0.01
    step(scheduler)
    scheduler.add_request(make_request("b0", _prompt(1, 8), BLOCK, 1, session_id="B"))
    clock.now += 0.01
    step(scheduler)  # the arrival: a plan, which holds B
    plans = scheduler.residency_steps
    assert scheduler._last_plan is not None and "B" in scheduler._last_plan[2]
    for _ in range(5):
        clock.now += 0.01
        step(scheduler)
        assert scheduler.requests["b0"].num_computed_tokens == 0  # held, by the last plan or a new one
    if replan_s:
        assert (scheduler.residency_steps, scheduler.residency_reused) == (plans, 5)
        clock.now += replan_s
        step(scheduler)  # the clock alone, past replan_s
        assert scheduler.residency_steps == plans + 1
        scheduler.add_request(make_request("c0", _prompt(2, 2), BLOCK, 1, session_id="C"))
        clock.now += 0.01
        step(scheduler)  # an arrival
        assert scheduler.residency_steps == plans + 2
    else:
        assert (scheduler.residency_steps, scheduler.residency_reused) == (plans + 5, 0)
    assert {r.request_id for r in _drain(scheduler, clock)} >= {"a0", "b0"}
