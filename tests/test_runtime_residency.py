"""The residency controller's rule (pure logic over a SessionView, no vLLM)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.runtime.config import ConfigError, ResidencySettings
from cachewise.runtime.residency import ResidencyController, deferral_keep_and_drop, prefill_seconds, threshold_blocks
from cachewise.runtime.sessions import Forecast, SessionView

BLOCK = 16
BLOCK_TOKENS = 256  # trace tokens per block, as in the replay (16 replay tokens x token_scale 16)
NEAR = Forecast.from_samples([1.0, 2.0, 3.0])  # back within seconds
FAR = Forecast.from_samples([500.0, 600.0, 900.0])  # a long test run


def _controller(capacity: int = 100, **kw: Any) -> ResidencyController:
    """A controller whose memory is short from the start (``thrash_share`` None: no standing aside) unless given."""
    return ResidencyController(ResidencySettings(**{"headroom": 0.0, "thrash_share": None, **kw}), capacity, BLOCK_TOKENS)


def _run_and_finish(view: SessionView, rid: str, session: str, blocks: int, now: float, forecast: Forecast | None) -> None:
    view.on_arrival(rid, session, "t", blocks * BLOCK, now)
    view.on_scheduled(rid)
    view.on_forecast(rid, session, "t", forecast)
    view.on_finished(rid, blocks * BLOCK, [f"{session}{i}".encode() for i in range(blocks)], now)


def _admit(controller: ResidencyController, view: SessionView, now: float, running: int = 1) -> set[str]:
    return controller.plan(view, now, running).admitted


def test_admits_while_working_sets_fit_then_holds_in_fcfs_order() -> None:
    view, ctl = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0, admission_order="fcfs"), 100, BLOCK_TOKENS)
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 1.0)
    view.on_arrival("c", "C", "t", 10 * BLOCK, 2.0)
    plan = ctl.plan(view, 3.0, running=0)
    assert plan.admitted == {"A"} and plan.held == ["B", "C"]  # C would fit, but may not overtake B
    assert ctl.plan(view, 4.0, running=1).held == ["B", "C"]  # A is live: nothing to demote


@pytest.mark.parametrize(("first", "second", "admitted"), [(35, 0, {"A"}), (25, 20, {"B"}), (30, 40, set())])
def test_the_headroom_is_kept_only_as_far_as_the_demand_exceeds_the_capacity(first: int, second: int, admitted: set[str]) -> None:
    """Headroom 0.2 of 100 blocks, a live resident of 60. The waiting sessions' demand with it: 95, within
    the capacity, A admitted though 95 > 80; 105, reserve 5, budget 95: B (20, smallest first) admitted,
    A (25) held; 130, the whole reserve, budget 80: both held (fixed-headroom rule)."""
    view, ctl = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.2), 100, BLOCK_TOKENS)
    view.on_arrival("x", "X", "t", 60 * BLOCK, 0.0)
    assert ctl.plan(view, 0.5, running=0).admitted == {"X"}
    view.on_scheduled("x")
    view.on_arrival("a", "A", "t", first * BLOCK, 1.0)
    if second:
        view.on_arrival("b", "B", "t", second * BLOCK, 1.0)
    plan = ctl.plan(view, 2.0, running=1)
    assert plan.admitted == admitted and plan.used == 60 + sum({"A": first, "B": second}[k] for k in admitted)
    assert ctl.reserve(60 + first + second, 100) == min(max(first + second - 40, 0), 20)


def _recompute(view: SessionView, key: str, held: int, prompt: int, cached: int, now: float) -> None:
    """``key`` ran a call that left it ``held`` full blocks; it comes back with a ``prompt``-block request
    that finds ``cached`` blocks cached at its first schedule (``held - cached`` recomputed), and finishes."""
    _run_and_finish(view, f"{key}-1", key, held, now, NEAR)
    view.on_arrival(f"{key}-2", key, "t", prompt * BLOCK, now)
    view.on_scheduled(f"{key}-2", cached * BLOCK)
    view.on_finished(f"{key}-2", prompt * BLOCK, [f"{key}{i}".encode() for i in range(prompt)], now)


def test_the_view_counts_prefill_and_recompute_at_first_schedules() -> None:
    """Prefill = prompt blocks not found cached; recomputed = of those, the full blocks the thread held
    after its last call. A new session's prompt is prefill only; a schedule without ``computed_tokens``
    (unknown) counts nothing."""
    view = SessionView(BLOCK)
    view.on_arrival("n", "N", "t", 12 * BLOCK, 0.0)
    view.on_scheduled("n", 2 * BLOCK)
    assert (view.shortage.prefill_blocks, view.shortage.recomputed_blocks) == (10, 0)
    _recompute(view, "A", 10, 14, 4, 1.0)  # held 10, found 4: 6 recomputed, 10 prefilled
    assert (view.shortage.prefill_blocks, view.shortage.recomputed_blocks) == (20, 6)
    view.on_arrival("u", "U", "t", 5 * BLOCK, 2.0)
    view.on_scheduled("u")
    assert (view.shortage.prefill_blocks, view.shortage.recomputed_blocks) == (20, 6)


@pytest.mark.parametrize(("lost", "short"), [(0, False), (15, False), (25, True)])
def test_stands_aside_until_the_engine_recomputes_then_stays_short(lost: int, short: bool) -> None:
    """Capacity 100, ``thrash_share`` 0.2: a live session of 40 and an idle resident of 40 (back in a long
    while) leave no room for a waiting 30, which standing aside admits all the same (live KV 70 fits).
    Memory proves short once the blocks recomputed pass 0.2 of those prefilled and of the capacity (20):
    a return that recomputes 25 of its 40 blocks latches it, and the next 30-block session then waits or
    takes the idle resident's room (rules 2-3); 15 do not."""
    view, ctl = SessionView(BLOCK), _controller(100, thrash_share=0.2)
    _run_and_finish(view, "i", "I", 40, 0.0, FAR)
    view.set_residency("I", True)
    view.on_arrival("x", "X", "t", 40 * BLOCK, 0.0)
    assert ctl.plan(view, 0.5, running=0).admitted == {"X"}
    view.on_scheduled("x", 0)
    view.on_arrival("a", "A", "t", 30 * BLOCK, 1.0)
    plan = ctl.plan(view, 2.0, running=1)
    assert plan.admitted == {"A"} and not plan.held and not plan.demoted and not ctl.short
    view.on_scheduled("a", 0)
    view.on_finished("a", 30 * BLOCK, [f"A{i}".encode() for i in range(30)], 3.0)
    _recompute(view, "R", 40, 41, 40 - lost, 3.0)
    view.on_arrival("b", "B", "t", 30 * BLOCK, 4.0)
    plan = ctl.plan(view, 5.0, running=1)
    assert ctl.short is short and (bool(plan.held) or bool(plan.demoted)) is short
    view.on_finished("x", 40 * BLOCK, [f"X{i}".encode() for i in range(40)], 6.0)
    _recompute(view, "S", 60, 61, 60, 6.0)  # no more recompute: the latch holds
    ctl.plan(view, 7.0, running=0)
    assert ctl.short is short


@pytest.mark.parametrize(("incoming", "short"), [(40, False), (41, True)])
def test_memory_is_short_once_the_live_requests_alone_exceed_the_capacity(incoming: int, short: bool) -> None:
    """Capacity 100, a live session of 60 and a new one of ``incoming`` blocks: 100 fit (standing aside:
    admitted); 101 cannot all be on the GPU at once, whatever the eviction order -- short at once, and the
    newcomer waits."""
    view, ctl = SessionView(BLOCK), _controller(100, thrash_share=0.2)
    view.on_arrival("x", "X", "t", 60 * BLOCK, 0.0)
    assert ctl.plan(view, 0.5, running=0).admitted == {"X"}
    view.on_scheduled("x", 0)
    view.on_arrival("a", "A", "t", incoming * BLOCK, 1.0)
    plan = ctl.plan(view, 2.0, running=1)
    assert ctl.short is short and plan.held == (["A"] if short else [])


@pytest.mark.parametrize(("thrash_share", "demoted"), [(0.2, 0), (None, 1)])
def test_does_not_shed_while_standing_aside(thrash_share: float | None, demoted: int) -> None:
    """Rule 3 sheds idle residents, pay or not, once their working sets exceed the capacity -- not while
    the controller stands aside: two sessions admitted at 50 + 45 blocks come back idle at 52 + 51."""
    view, ctl = SessionView(BLOCK), _controller(100, thrash_share=thrash_share)
    for rid, key, blocks in (("a", "A", 50), ("b", "B", 45)):
        view.on_arrival(rid, key, "t", blocks * BLOCK, 0.0)
    assert ctl.plan(view, 0.0, running=0).admitted == {"A", "B"}
    for rid, key, blocks in (("a", "A", 52), ("b", "B", 51)):
        view.on_scheduled(rid)
        view.on_forecast(rid, key, "t", NEAR)
        view.on_finished(rid, blocks * BLOCK, [f"{key}{i}".encode() for i in range(blocks)], 1.0)
    plan = ctl.plan(view, 1.2, running=0)
    assert len(plan.demoted) == demoted and (plan.used <= 100 if demoted else plan.used == 103)


def test_without_remaining_work_labels_the_order_is_smallest_working_set_first_with_aged_sessions_ahead() -> None:
    """Rule 2, ``smallest`` (and ``remaining`` without labels, the default): the queue of the FCFS test
    above admits C (10) and B (50) and holds A (60); a session past the starvation bound goes first
    whatever its size; unknown orders are refused."""
    view, ctl = SessionView(BLOCK), _controller(100, max_wait_s=10.0)
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 1.0)
    view.on_arrival("c", "C", "t", 10 * BLOCK, 2.0)
    plan = ctl.plan(view, 3.0, running=0)
    assert plan.admitted == {"C", "B"} and plan.held == ["A"]
    view2, ctl2 = SessionView(BLOCK), _controller(100, max_wait_s=10.0)
    view2.on_arrival("x", "X", "t", 50 * BLOCK, 0.0)
    assert ctl2.plan(view2, 0.5, running=0).admitted == {"X"}
    view2.on_scheduled("x")
    view2.on_arrival("a", "A", "t", 60 * BLOCK, 1.0)  # waits from t = 1: aged at t = 11
    view2.on_arrival("c", "C", "t", 10 * BLOCK, 2.0)
    assert ctl2.plan(view2, 5.0, running=1).held == ["A"] and view2.get("C").resident  # C (10) fits beside X; A (60) does not
    plan = ctl2.plan(view2, 11.0, running=2)
    assert plan.forced == ["A"] and "A" in plan.admitted  # aged: first, admitted though it does not fit
    with pytest.raises(ConfigError):
        ResidencySettings(thrash_share=None, admission_order="lifo")


def test_a_distrusting_guard_verdict_passes_every_session_through(caplog: pytest.LogCaptureFixture) -> None:
    """Rule 5: the same queue as above under a distrusting verdict: all admitted, nothing held or
    demoted; one log line per change; trusted again, the controller holds as before."""
    verdict = [False]
    view, ctl = SessionView(BLOCK, lambda: verdict[0]), _controller(100)
    _run_and_finish(view, "z", "Z", 60, 0.0, FAR)
    view.set_residency("Z", True)  # idle, far: the trusting controller would demote it
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 1.0)
    with caplog.at_level("INFO", logger="vllm.cachewise"):
        for now in (3.0, 4.0):
            plan = ctl.plan(view, now, running=0)
            assert plan.admitted == {"A", "B"} and plan.held == [] and plan.demoted == []
    assert ctl.passthrough_steps == 2 and not ctl.following_model and ctl.demotions == 0
    assert sum("passing every request through" in r.message for r in caplog.records) == 1
    view.on_arrival("c", "C", "t", 10 * BLOCK, 5.0)
    verdict[0] = True
    plan = ctl.plan(view, 6.0, running=1)
    assert ctl.following_model and "Z" in plan.demoted  # resumed: A, B, Z resident over budget -> shedding


def _pass_through(view: SessionView, ctl: ResidencyController, idle: dict[str, tuple[int, Forecast]], live: dict[str, int]) -> None:
    """Sessions admitted while the guard distrusts the model: ``idle`` ones ran a call and wait on a
    tool (blocks, forecast), ``live`` ones have a request running (blocks)."""
    for key, (blocks, forecast) in idle.items():
        _run_and_finish(view, key.lower(), key, blocks, 0.0, forecast)
        view.on_arrival(f"{key.lower()}2", key, "t", blocks * BLOCK, 0.5)  # back: a new request queues...
        plan = ctl.plan(view, 0.5, running=1)
        assert plan.admitted == {key} and not ctl.following_model  # ...and passes through
        view.on_scheduled(f"{key.lower()}2")
        view.on_finished(f"{key.lower()}2", blocks * BLOCK, [f"{key}{i}".encode() for i in range(blocks)], 1.0)
        view.on_forecast(f"{key.lower()}2", key, "t", forecast)
    for key, blocks in live.items():
        view.on_arrival(key.lower(), key, "t", blocks * BLOCK, 1.0)
        assert key in ctl.plan(view, 1.0, running=1).admitted
        view.on_scheduled(key.lower())


def test_resuming_from_pass_through_restores_the_budget_even_when_nobody_waits() -> None:
    """Rule 5, restoring: pass-through admitted every session (120 blocks in a budget of 80). Trusted
    again, idle residents are demoted best first -- the far one, then the near one although its
    demotion does not pay -- until the rest fit, with no session waiting; then restoring ends."""
    verdict = [False]
    view = SessionView(BLOCK, lambda: verdict[0])
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.2), 100, BLOCK_TOKENS)
    _pass_through(view, ctl, {"F": (30, FAR), "N": (30, NEAR)}, {"X": 30, "Y": 30})
    assert sum(view.working_set(s.key) for s in view if s.resident) == 120
    keep, drop = ctl.keep_and_drop(view.get("N"), 30, 2.0, served=9)
    assert keep < drop  # by the cost rule alone N would stay
    verdict[0] = True
    plan = ctl.plan(view, 2.0, running=8)
    assert plan.demoted == ["F", "N"] and plan.held == [] and plan.admitted == set()
    assert sum(view.working_set(s.key) for s in view if s.resident) == 60 <= ctl.budget
    assert not ctl.restoring and ctl.following_model


def test_restoring_waits_for_live_residents_to_go_idle_then_ends() -> None:
    """Live residents are never demoted: while they alone exceed the budget restoring goes on, and
    each is demoted at the first step it is idle; once the rest fit, a session that goes idle keeps
    its room again unless another waits (rules 2-3)."""
    verdict = [False]
    view = SessionView(BLOCK, lambda: verdict[0])
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.2), 100, BLOCK_TOKENS)
    _pass_through(view, ctl, {"F": (30, FAR)}, {"X": 35, "Y": 35, "Z": 35})
    verdict[0] = True
    assert ctl.plan(view, 2.0, running=3).demoted == ["F"]
    assert ctl.restoring  # X, Y, Z: 105 live blocks, 5 past the capacity: a budget of 95
    assert ctl.plan(view, 3.0, running=3).demoted == []
    view.on_finished("x", 35 * BLOCK, [f"X{i}".encode() for i in range(35)], 4.0)
    view.on_forecast("x", "X", "t", NEAR)
    assert ctl.plan(view, 4.0, running=2).demoted == ["X"]  # idle now: demoted, nobody waits
    assert not ctl.restoring
    view.on_finished("y", 30 * BLOCK, [f"Y{i}".encode() for i in range(30)], 5.0)
    view.on_forecast("y", "Y", "t", FAR)
    assert ctl.plan(view, 5.0, running=1).demoted == [] and view.get("Y").resident  # restored: nobody waits


@pytest.mark.parametrize("host", [0, 60])
def test_thrashing_exception_acts_on_the_model_once_pass_through_outgrows_gpu_and_host(host: int) -> None:
    """Rule 5's thrashing exception: the guard never trusts the model. Passing through, the residents
    reach capacity + host (100 + host blocks) and the controller still passes through; one step after
    they exceed it, it latches onto the model and restores (the far idle session demoted). Off (the
    default): pass-through throughout."""
    for on in (False, True):
        view = SessionView(BLOCK, lambda: False)
        settings = ResidencySettings(thrash_share=None, headroom=0.2, act_when_thrashing=on)
        ctl = ResidencyController(settings, 100, BLOCK_TOKENS, host_blocks=host)
        _pass_through(view, ctl, {"F": (30, FAR)}, {"X": 35 + host // 2, "Y": 35 + host // 2})  # 100 + host blocks
        assert ctl.plan(view, 1.5, running=2).demoted == [] and not ctl.following_model  # at the limit
        view.on_arrival("z", "Z", "t", 10 * BLOCK, 2.0)
        assert "Z" in ctl.plan(view, 2.0, running=2).admitted  # passes through: now past both tiers
        plan = ctl.plan(view, 3.0, running=2)
        assert ctl.following_model is on and ctl.thrash_latched is on
        assert plan.demoted == (["F"] if on else [])
        assert ctl.plan(view, 4.0, running=2).demoted == [] and ctl.following_model is on  # latched: no flapping


def test_demotes_a_far_idle_session_only_when_another_waits() -> None:
    view, ctl = SessionView(BLOCK), _controller(100)
    _run_and_finish(view, "a", "A", 60, 0.0, FAR)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.5)
    view.set_residency("X", True)
    plan = ctl.plan(view, 1.0, running=1)
    assert plan.demoted == [] and view.get("A").resident  # nobody waits: A keeps its room
    view.on_arrival("b", "B", "t", 50 * BLOCK, 2.0)
    plan = ctl.plan(view, 3.0, running=1)
    assert plan.demoted == ["A"] and "B" in plan.admitted
    assert view.get("A").demoted and not view.get("A").resident


def test_keeps_a_session_that_is_back_soon() -> None:
    view, ctl = SessionView(BLOCK), _controller(100)
    _run_and_finish(view, "a", "A", 60, 0.0, NEAR)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
    plan = ctl.plan(view, 0.5, running=8)  # recomputing 60 blocks would stall 8 running requests
    assert plan.demoted == [] and plan.held == ["B"]


@pytest.mark.parametrize(("ratio", "left_s", "preempted"), [(3.0, 600.0, True), (0.0, 600.0, False), (3.0, 100.0, False)])
def test_an_idle_resident_of_a_far_larger_area_gives_its_room_to_the_head(ratio: float, left_s: float, preempted: bool) -> None:
    """Rule 2's preemption. A (60 blocks, back within seconds: its demotion does not pay) has ``left_s``
    seconds of work left; the new session B (50 blocks, new-session label 60 s: area 3,000) does not fit.
    A's area 36,000 is 12x B's: with ratio 3, A is demoted and B admitted; with the preemption off, or
    with A's area 6,000 (2x B's), B waits as the cost rule alone decides."""
    view = SessionView(BLOCK)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0, preempt_area_ratio=ratio), 100, BLOCK_TOKENS)
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_scheduled("a")
    view.on_forecast("a", "A", "t", NEAR, None, (math.log1p(left_s), math.log1p(60.0)))
    view.on_finished("a", 60 * BLOCK, [f"A{i}".encode() for i in range(60)], 0.0)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
    keep, drop = ctl.keep_and_drop(view.get("A"), 60, 0.5, served=9)
    assert keep < drop  # by the cost rule A stays
    plan = ctl.plan(view, 0.5, running=8)
    assert (plan.demoted, plan.held, "B" in plan.admitted) == ((["A"], [], True) if preempted else ([], ["B"], False))


@pytest.mark.parametrize(
    ("readmit", "cached_b", "host", "first"), [(0.5, 0.8, 0, "B"), (0.0, 0.8, 0, "C"), (0.5, 0.3, 0, "C"), (0.5, 0.8, 100, "C")]
)
def test_a_held_session_whose_prefix_is_still_cached_is_readmitted_first(readmit: float, cached_b: float, host: int, first: str) -> None:
    """Rule 2's readmission while the prefix is cached. B (40 blocks) and C (30 blocks, the smaller
    area) wait; the GPU holds one of them. B's waiting request finds ``cached_b`` of its prompt still
    cached: at 0.8 with ``readmit_cached`` 0.5, B goes first; with it off, only 0.3 cached, or a host
    tier (where a held prefix is stored, not lost), C (the smaller area) does, as before."""
    view = SessionView(BLOCK)
    settings_ = ResidencySettings(thrash_share=None, headroom=0.0, readmit_cached=readmit, tier_aside=False)
    ctl = ResidencyController(settings_, 100, BLOCK_TOKENS, host_blocks=host)
    view.on_arrival("x", "X", "t", 50 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_scheduled("x")
    view.on_arrival("b", "B", "t", 40 * BLOCK, 0.0)
    view.on_arrival("c", "C", "t", 30 * BLOCK, 0.0)
    plan = ctl.plan(view, 0.5, running=1, cached={"B": cached_b, "C": 0.0})
    assert first in plan.admitted and plan.held == [{"B": "C", "C": "B"}[first]]


def test_readmit_cached_is_a_share() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError):
            ResidencySettings(thrash_share=None, readmit_cached=bad)


def test_replan_s_is_a_finite_duration() -> None:
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ConfigError):
            ResidencySettings(replan_s=bad)
    assert ResidencySettings.from_mapping({"replan_s": 0}).replan_s == 0.0


def test_a_session_whose_median_is_near_is_kept_though_its_mean_is_far() -> None:
    """Back in 1-3 s with probability 1/2, gone for good otherwise: the mean remaining gap is
    infinite and ``E[min(R, H)] ≈ H / 2`` outweighs the recompute (the rule of ``τ = H`` alone
    demotes it), but waiting 3 s saves the recompute half of the time for at most 3 s of the
    waiting session's time: the session is kept. Once 10 s have passed without a return, only
    the "gone" half is left, and the same rule demotes it for the waiting session."""
    view, ctl = SessionView(BLOCK), _controller(200)
    inf = float("inf")
    forecast = Forecast(tuple(1.0 + 0.2 * i for i in range(11)) + (inf,) * 10)
    assert forecast.median == 3.0 and forecast.quantile(0.6) == inf  # median near, mean far
    _run_and_finish(view, "a", "A", 160, 0.0, forecast)  # 40,960 tokens: ~2 s to recompute
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_scheduled("x")
    view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
    h = ctl.settings.horizon_s
    points = forecast.remaining_points(0.5, 20)
    costs = ctl.return_costs(160, points, served=9)
    assert costs[0] == pytest.approx(9 * prefill_seconds(ctl.settings, 160 * BLOCK_TOKENS))  # no pool reader: all of it
    keep_h = sum(min(r, h) for r in points) / 20
    drop_h = sum(c for r, c in zip(points, costs) if r <= h) / 20
    assert keep_h > drop_h  # the horizon's comparison alone would demote A
    keep, drop = ctl.keep_and_drop(view.get("A"), 160, 0.5, served=9)
    assert keep < drop and keep < 3.0  # a deferral of a few seconds is better
    plan = ctl.plan(view, 0.5, running=8)
    assert plan.demoted == [] and plan.held == ["B"] and view.get("A").resident
    plan = ctl.plan(view, 10.0, running=8)  # the near half has passed
    assert plan.demoted == ["A"] and "B" in plan.admitted


def test_deferral_rule_takes_the_least_keep_minus_drop_over_the_points() -> None:
    """``keep(τ) = E[min(R, τ)]``, ``drop(τ) = E[1{R <= τ} D]`` at each point and at the horizon."""
    keep, drop = deferral_keep_and_drop([1.0, 2.0, 900.0, 1000.0], [4.0, 4.0, 4.0, 4.0], 600.0)
    assert (keep, drop) == pytest.approx(((1 + 2 + 2 * 2) / 4, 8 / 4))  # τ = 2: 1.75 - 2
    keep, drop = deferral_keep_and_drop([1.0, 2.0, 900.0, 1000.0], [0.5, 0.5, 0.5, 0.5], 600.0)
    assert (keep, drop) == pytest.approx((1.0, 0.5 / 4))  # τ = 1 binds: 1 - 0.125 < 1.75 - 0.25 < 301.5 - 0.25
    keep, drop = deferral_keep_and_drop([math.inf] * 4, [9.0] * 4, 600.0)
    assert (keep, drop) == (600.0, 0.0)  # never back: the horizon, nothing to pay


def test_ended_session_is_demoted_before_a_far_one() -> None:
    view, ctl = SessionView(BLOCK), _controller(100)
    _run_and_finish(view, "f", "F", 40, 0.0, FAR)
    _run_and_finish(view, "e", "E", 40, 0.0, Forecast.never())
    for key in ("F", "E"):
        view.set_residency(key, True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_arrival("b", "B", "t", 40 * BLOCK, 1.0)
    assert ctl.plan(view, 2.0, running=1).demoted == ["E"]


def test_sessions_that_outgrew_the_cache_shed_idle_ones_while_another_waits() -> None:
    """Admitted small, grown past the budget: idle residents go (best keep - drop first) until the rest fit."""
    view, ctl = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.375), 160, BLOCK_TOKENS)
    _run_and_finish(view, "f", "F", 50, 0.0, FAR)
    _run_and_finish(view, "g", "G", 30, 0.0, NEAR)
    view.on_arrival("x", "X", "t", 60 * BLOCK, 0.0)  # live, cannot be shed
    for key in ("F", "G", "X"):
        view.set_residency(key, True)
    assert ctl.plan(view, 1.0, running=1).demoted == []  # over budget (140 > 100), within capacity (160), nobody waits
    view.on_arrival("w", "W", "t", 80 * BLOCK, 2.0)  # demand 220: 60 past the capacity, the whole reserve
    plan = ctl.plan(view, 2.5, running=1)  # G (NEAR) is not yet past its forecast's expiry
    assert plan.demoted == ["F"] and plan.held == ["W"]  # 140 - 50 <= 100; W (80) still does not fit
    assert view.get("G").resident and view.get("F").demoted


def test_residents_over_the_whole_capacity_shed_though_nobody_waits() -> None:
    """Admitted small, grown past the whole capacity, nobody waiting: the residents evict each other
    anyway, so idle ones go best first until the rest fit the capacity; live ones stay."""
    view, ctl = SessionView(BLOCK), _controller(100)
    _run_and_finish(view, "f", "F", 50, 0.0, FAR)
    _run_and_finish(view, "g", "G", 30, 0.0, NEAR)
    view.on_arrival("x", "X", "t", 60 * BLOCK, 0.0)  # live, cannot be shed
    for key in ("F", "G", "X"):
        view.set_residency(key, True)
    plan = ctl.plan(view, 1.0, running=1)
    assert plan.demoted == ["F"] and plan.used == 90 and plan.held == []  # 140 > 100: F (far) goes; 90 fits
    assert view.get("G").resident and view.get("X").resident
    assert ctl.plan(view, 1.5, running=1).demoted == []  # within the capacity now


def test_residents_over_the_whole_capacity_shed_even_when_demotion_does_not_pay() -> None:
    """Past the capacity the residents evict each other anyway: the forecast picks who goes."""
    view, ctl = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.2), 100, BLOCK_TOKENS)
    _run_and_finish(view, "a", "A", 60, 0.0, NEAR)
    _run_and_finish(view, "b", "B", 55, 0.0, Forecast.from_samples([1.0, 2.5, 4.0]))
    for key in ("A", "B"):
        view.set_residency(key, True)
    for key in ("A", "B"):
        keep, drop = ctl.keep_and_drop(view.get(key), view.working_set(key), 0.5, served=9)
        assert keep < drop  # neither demotion pays by the cost rule
    view.on_arrival("w", "W", "t", 10 * BLOCK, 0.5)
    plan = ctl.plan(view, 0.5, running=8)
    assert plan.demoted == ["B"]  # the larger keep - drop; then 60 <= capacity, and 60 + 10 <= budget 80
    assert plan.admitted == {"W"} and view.get("A").resident
    view2, ctl2 = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.5), 100, BLOCK_TOKENS)
    _run_and_finish(view2, "a", "A", 60, 0.0, NEAR)  # over the budget (50), within the capacity
    view2.set_residency("A", True)
    view2.on_arrival("w", "W", "t", 10 * BLOCK, 0.5)
    assert ctl2.plan(view2, 0.5, running=8).demoted == [] and view2.get("A").resident


def test_starvation_bound_by_wait_time_and_passes() -> None:
    for kw, steps in (({"max_wait_s": 5.0}, 5), ({"max_passes": 3, "max_wait_s": 1e9}, 4)):
        view, ctl = SessionView(BLOCK), _controller(100, **kw)
        view.on_arrival("a", "A", "t", 90 * BLOCK, 0.0)
        assert ctl.plan(view, 0.0, running=0).admitted == {"A"}
        view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
        admitted_at = None
        for i in range(1, 10):
            plan = ctl.plan(view, float(i), running=1)
            if "B" in plan.admitted:
                admitted_at = i
                assert plan.forced == ["B"]
                break
        assert admitted_at == steps
        assert ctl.longest_wait_s <= float(steps)


def test_engine_never_idles_on_the_controller() -> None:
    view, ctl = SessionView(BLOCK), _controller(10)
    view.on_arrival("a", "A", "t", 50 * BLOCK, 0.0)  # larger than the whole budget
    assert ctl.plan(view, 0.0, running=0).admitted == {"A"}


def test_controller_and_view_import_no_vllm() -> None:
    """Pure decision logic: unit-testable without vLLM (checked in a fresh interpreter)."""
    code = "import sys, cachewise.runtime.residency; sys.exit(any(m.split('.')[0] in ('vllm', 'torch') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_settings_parse_and_reject() -> None:
    assert ResidencySettings.from_mapping({"headroom": 0.2, "max_passes": 5}).headroom == 0.2
    with pytest.raises(ConfigError, match="unknown cachewise.residency keys"):
        ResidencySettings.from_mapping({"head_room": 0.2})
    with pytest.raises(ConfigError):
        ResidencySettings.from_mapping({"headroom": 1.5})
    assert ResidencySettings.from_mapping({"act_when_thrashing": True}).act_when_thrashing is True
    assert ResidencySettings.from_mapping({"thrash_share": None}).thrash_share is None and ResidencySettings().thrash_share == 0.1
    with pytest.raises(ConfigError):
        ResidencySettings.from_mapping({"thrash_share": 1.5})
    with pytest.raises(ConfigError, match="act_when_thrashing"):
        ResidencySettings.from_mapping({"act_when_thrashing": 1})
    assert ResidencySettings().tier_aside is True and ResidencySettings.from_mapping({"tier_aside": False}).tier_aside is False
    with pytest.raises(ConfigError, match="tier_aside"):
        ResidencySettings.from_mapping({"tier_aside": "no"})


@pytest.mark.parametrize("host", [0, 60])
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.sampled_from([NEAR, FAR, None])), min_size=1, max_size=8))
def test_demotion_happens_only_when_a_session_waits_and_then_it_fits(host: int, sessions: list) -> None:
    """Rules 2-3 and 6 once memory is short (no standing aside: ``thrash_share`` None)."""
    view, ctl = SessionView(BLOCK), ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0), 100, BLOCK_TOKENS, host_blocks=host)
    for i, (blocks, forecast) in enumerate(sessions):
        _run_and_finish(view, f"r{i}", f"S{i}", blocks, 0.0, forecast)
        view.set_residency(f"S{i}", True)
    view.on_arrival("x", "X", "t", BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_scheduled("x")
    grown = sum(view.working_set(s.key) for s in view if s.resident)
    plan = ctl.plan(view, 100.0, running=1)  # nobody waits: shed only past the whole capacity, down to it
    left = sum(view.working_set(s.key) for s in view if s.resident)
    assert plan.demoted == [] if grown <= ctl.admitted_capacity else left <= ctl.admitted_capacity
    assert all(left + view.working_set(k) > ctl.admitted_capacity for k in plan.demoted[-1:])  # no more than needed
    view.on_arrival("w", "W", "t", 40 * BLOCK, 100.0)
    before = sum(view.working_set(s.key) for s in view if s.resident)
    plan = ctl.plan(view, 200.0, running=1)
    resident = sum(view.working_set(s.key) for s in view if s.resident)
    assert plan.used == pytest.approx(resident) and plan.gpu <= plan.used
    if plan.demoted:  # to make the waiting session fit, or because the resident sessions outgrew the cache
        assert ("W" in plan.admitted and resident <= ctl.admitted_budget) or before > ctl.admitted_budget
        for key in plan.demoted:
            keep, drop = ctl.keep_and_drop(view.get(key), view.working_set(key), 200.0, served=1)
            assert keep > drop or before > ctl.admitted_capacity  # past the whole capacity the best go regardless
    if "W" in plan.admitted and "W" not in plan.forced:
        assert resident <= ctl.admitted_budget and plan.gpu <= ctl.budget
    if host:  # rule 6: W needs only the GPU room the live X leaves, and room on GPU + host for all
        assert ("W" in plan.admitted) == (before + 40 <= 160 or bool(plan.demoted)) and plan.gpu == (41 if "W" in plan.admitted else 1)


def _tiered(host: int) -> ResidencyController:
    """Rule 6 acting: memory short from the start, and no standing aside while GPU + host hold the demand."""
    return ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0, tier_aside=False), 100, BLOCK_TOKENS, host_blocks=host)


def _idle_a_beside_live_x(view: SessionView, a_blocks: int, forecast: Forecast, x_blocks: int) -> None:
    """Resident A (``a_blocks``, finished, back per ``forecast``) and resident X running ``x_blocks``."""
    _run_and_finish(view, "a", "A", a_blocks, 0.0, forecast)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", x_blocks * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_scheduled("x")


def test_host_tier_admits_beside_idle_residents_that_the_gpu_alone_would_hold_for() -> None:
    """Rule 6: A (idle, back soon) keeps its admission but needs no GPU room; B is admitted at once.
    Without the tier (the old rule) B waits for A's room (test_keeps_a_session_that_is_back_soon)."""
    for host, admitted in ((0, False), (100, True)):
        view, ctl = SessionView(BLOCK), _tiered(host)
        _idle_a_beside_live_x(view, 60, NEAR, 10)
        view.on_arrival("b", "B", "t", 50 * BLOCK, 0.0)
        plan = ctl.plan(view, 0.5, running=8)
        assert plan.demoted == [] and view.get("A").resident
        assert ("B" in plan.admitted) == admitted and plan.held == ([] if admitted else ["B"])
        assert (plan.used, plan.gpu) == ((120, 60) if admitted else (70, 10))


def test_host_tier_holds_while_the_sessions_that_need_the_gpu_fill_it() -> None:
    """The GPU check: live sessions and prefetches in flight count; demoting idle ones frees nothing there."""
    view, ctl = SessionView(BLOCK), _tiered(1000)
    _idle_a_beside_live_x(view, 10, FAR, 40)
    view.on_arrival("b", "B", "t", 55 * BLOCK, 0.0)
    plan = ctl.plan(view, 1.0, running=1, loading={"A"})  # A's prefetch in flight: 10 + 40 + 55 > 100
    assert plan.held == ["B"] and plan.demoted == [] and plan.gpu == 50
    plan = ctl.plan(view, 1.5, running=1)  # the prefetch ended: 40 + 55 <= 100
    assert "B" in plan.admitted and plan.demoted == [] and plan.gpu == 95 and plan.used == 105


def test_host_tier_admitted_budget_demotes_by_the_cost_rule_as_without_a_tier() -> None:
    """The admitted set against GPU + host: past it, idle sessions whose demotion pays go, as in rule 2."""
    view, ctl = SessionView(BLOCK), _tiered(20)
    _idle_a_beside_live_x(view, 60, FAR, 10)
    view.on_arrival("b", "B", "t", 55 * BLOCK, 1.0)
    plan = ctl.plan(view, 2.0, running=1)  # GPU: 10 + 55 fits; admitted: 70 + 55 > 120 -> A (far) is demoted
    assert plan.demoted == ["A"] and "B" in plan.admitted and (plan.used, plan.gpu) == (65, 65)


def test_host_tier_an_admitted_session_that_comes_back_waits_for_gpu_room() -> None:
    """Rule 6: A (admitted, idle on the host) is back while X fills the GPU: A waits for GPU room (with
    no tier a resident session's requests are never held); when X is done A goes first, ahead of a
    later session B (program-level FCFS), without being admitted again."""
    for host in (0, 200):
        view = SessionView(BLOCK)
        settings_ = ResidencySettings(thrash_share=None, headroom=0.0, admission_order="fcfs", tier_aside=False)
        ctl = ResidencyController(settings_, 100, BLOCK_TOKENS, host_blocks=host)
        _run_and_finish(view, "a", "A", 50, 0.0, NEAR)
        view.set_residency("A", True)
        view.on_arrival("x", "X", "t", 60 * BLOCK, 0.5)
        view.set_residency("X", True)
        view.on_scheduled("x")
        view.on_arrival("a2", "A", "t", 51 * BLOCK, 1.0)  # A is back
        view.on_arrival("b", "B", "t", 10 * BLOCK, 1.5)
        plan = ctl.plan(view, 2.0, running=1)
        if host:
            assert plan.held == ["A", "B"] and plan.admitted == set() and plan.gpu == 60 and view.get("A").resident
        else:
            assert plan.admitted == {"A"} and plan.held == ["B"]  # the old rule: A is resident, never held
        view.on_finished("x", 60 * BLOCK, [], 3.0)
        plan = ctl.plan(view, 3.5, running=0)
        assert "A" in plan.admitted
        if host:  # A was never out: no sample of Q; nobody demoted (without a tier, X, idle now, is shed: 111 > 100)
            assert plan.demoted == [] and plan.gpu == 61 and "B" in plan.admitted and ctl.queueing_delay_s == 0.0


def test_host_tier_a_returning_admitted_session_may_use_the_headroom_a_new_one_may_not() -> None:
    view = SessionView(BLOCK)
    settings_ = ResidencySettings(thrash_share=None, headroom=0.2, admission_order="fcfs", tier_aside=False)
    ctl = ResidencyController(settings_, 100, BLOCK_TOKENS, host_blocks=200)  # GPU budget 80
    _run_and_finish(view, "a", "A", 29, 0.0, NEAR)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 60 * BLOCK, 0.5)
    view.set_residency("X", True)
    view.on_scheduled("x")
    view.on_arrival("a2", "A", "t", 30 * BLOCK, 1.0)  # back: 60 + 30 <= capacity 100, not <= budget 80
    view.on_arrival("b", "B", "t", 15 * BLOCK, 1.5)  # new: 60 + 30 + 15 is 5 past the capacity: reserve 5, 105 > 95
    plan = ctl.plan(view, 2.0, running=1)
    assert "A" in plan.admitted and plan.held == ["B"] and plan.gpu == 90


@pytest.mark.parametrize(
    ("host", "tier_aside", "aside"),
    [(100, True, True), (100, False, False), (10, True, False), (0, True, False)],
)
def test_host_tier_stands_aside_while_gpu_and_host_hold_the_demand(host: int, tier_aside: bool, aside: bool) -> None:
    """``tier_aside``: X runs 60 blocks, A (40, idle, far) is resident, B (55) arrives; the GPU holds 100.
    The demand 155 fits GPU + host 200: B is admitted beside them and A keeps its place (a prefix that
    leaves the GPU waits on the host; B's request waits in vLLM's queue for GPU room). Past GPU + host
    (host 10), without a tier, or with ``tier_aside`` off, rule 6 acts as before: B fails the GPU
    check (60 + 55 > 100) and waits; demoting A would free no room it needs, so no one is demoted."""
    settings_ = ResidencySettings(thrash_share=None, headroom=0.0, tier_aside=tier_aside)
    view, ctl = SessionView(BLOCK), ResidencyController(settings_, 100, BLOCK_TOKENS, host_blocks=host)
    _idle_a_beside_live_x(view, 40, FAR, 60)
    view.on_arrival("b", "B", "t", 55 * BLOCK, 1.0)
    plan = ctl.plan(view, 2.0, running=1)
    assert ("B" in plan.admitted, plan.held) == ((True, []) if aside else (False, ["B"]))
    assert view.get("A").resident and plan.demoted == []


def _area_queue(labels: dict[str, float] | None, order: str = "area") -> tuple[set[str], list[str]]:
    """A (10 blocks) and B (30 blocks) come back after a finished call with ``labels`` (seconds of work
    left), C (20 blocks) is new; the model's new-session label is 60 s; a 40-block room. (admitted, held)."""
    view, ctl = SessionView(BLOCK), _controller(40, admission_order=order)
    for key, blocks in (("A", 10), ("B", 30)):
        view.on_arrival(f"{key}0", key, "t", blocks * BLOCK, 0.0)
        view.on_scheduled(f"{key}0")
        remaining = None if labels is None else (math.log1p(labels[key]), math.log1p(60.0))
        view.on_forecast(f"{key}0", key, "t", FAR, None, remaining)
        view.on_finished(f"{key}0", blocks * BLOCK, [f"{key}{j}".encode() for j in range(blocks)], 1.0)
        view.on_arrival(f"{key}1", key, "t", blocks * BLOCK, 2.0)
    view.on_arrival("c0", "C", "t", 20 * BLOCK, 2.0)
    plan = ctl.plan(view, 3.0, running=0)
    return plan.admitted, plan.held


def test_area_order_admits_the_smallest_predicted_kv_area_first() -> None:
    """Rule 2, ``area`` (the default): working set x predicted remaining seconds. B (30 x 5 s = 150)
    goes first though it is the largest, then C at the new-session label (20 x 60 = 1,200), then A
    (10 x 600 = 6,000); strict order, so C and A wait behind B's room. With A at 30 s (300) A goes
    before C and fits beside B. A short remaining time alone does not decide: B at 50 s (1,500) goes
    after C (1,200) and before A at 200 s (2,000). Without remaining-work labels every session ties
    and the order is ``smallest``'s; ``smallest`` does not read the labels."""
    assert ResidencySettings().admission_order == "area"
    assert _area_queue({"A": 600.0, "B": 5.0}) == ({"B"}, ["C", "A"])
    assert _area_queue({"A": 30.0, "B": 5.0}) == ({"A", "B"}, ["C"])
    assert _area_queue({"A": 200.0, "B": 50.0}) == ({"C"}, ["B", "A"])
    assert _area_queue(None) == ({"A", "C"}, ["B"]) == _area_queue(None, "smallest")
    assert _area_queue({"A": 600.0, "B": 5.0}, "smallest") == ({"A", "C"}, ["B"])


@settings(max_examples=500, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(1, 5000), st.data())
def test_threshold_blocks_gives_the_uncapped_shares_verdict(share: float, blocks: int, data: st.DataObject) -> None:
    """The scheduler's capped prefix lookup (rule 2's readmit_cached): stopping after ``n`` blocks gives
    the same ``share >= readmit`` verdict, float comparison included, and ``n`` is the fewest such."""
    n = threshold_blocks(share, blocks)
    cached = data.draw(st.integers(0, blocks))
    assert (cached / blocks >= share) == (cached >= n)
    assert (min(cached, n) / blocks >= share) == (cached / blocks >= share)
    assert n == 0 or n > blocks or (n - 1) / blocks < share
