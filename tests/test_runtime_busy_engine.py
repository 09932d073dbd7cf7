"""The cost rule on a busy engine (runtime/residency.py, "A busy engine").

Two terms of one premise: a recompute stalls everything the engine serves (``S``: requests
running, resident sessions' requests queued for it, and idle resident sessions), and a held session's wait
costs the engine only what one more session in its batch gains it (``w = b0 / step`` of the
decode step model). Each is shown to decide a demotion the other way round.
"""

from __future__ import annotations

import pytest

from cachewise.runtime.config import ConfigError, ResidencySettings
from cachewise.runtime.residency import ResidencyController, deferral_keep_and_drop
from cachewise.runtime.sessions import Forecast, SessionView

BLOCK = 16
BLOCK_TOKENS = 256
BACK_SOON = Forecast.from_samples([1.0, 2.0, 3.0])
BACK_LATER = Forecast.from_samples([5.0, 10.0, 20.0])


def _case(forecast: Forecast, waiting: int, capacity: int = 100, **settings: float) -> tuple[SessionView, ResidencyController]:
    """Idle resident A (60 blocks, no pool reader: a return recomputes all of it), live resident X (10
    blocks), and ``waiting`` sessions of 50 blocks that fit only in A's room (capacity 100)."""
    view = SessionView(BLOCK)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0, **settings), capacity, BLOCK_TOKENS)
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_scheduled("a")
    view.on_forecast("a", "A", "t", forecast)
    view.on_finished("a", 60 * BLOCK, [f"A{i}".encode() for i in range(60)], 0.0)
    view.set_residency("A", True)
    view.on_arrival("x", "X", "t", 10 * BLOCK, 0.0)
    view.set_residency("X", True)
    view.on_scheduled("x")
    for i in range(waiting):
        view.on_arrival(f"b{i}", f"B{i}", "t", 50 * BLOCK, 0.0)
    return view, ctl


def test_a_recompute_is_charged_to_what_the_engine_serves_not_to_held_sessions() -> None:
    """One request running (X), sessions held for room: S = 1 + A = 2 however many are held (they wait
    for room, not for the engine), and A, back in 5-20 s, gives its room. Forty resident sessions with a
    request queued for the engine, or forty requests running: S = 42, the same recompute delays them
    all, and A is kept (the rule of session 14 charged 1 + the running requests, 2, and demoted it)."""
    for held in (1, 40):
        view, ctl = _case(BACK_LATER, held)
        plan = ctl.plan(view, 0.5, running=1)
        assert ctl.served == 2 and plan.demoted == ["A"]
    view, ctl = _case(BACK_LATER, 1, capacity=150)
    for i in range(40):  # resident, one token (a block) each, queued for the engine: B still needs A's room
        view.on_arrival(f"q{i}", f"Q{i}", "t", 1, 0.0)
        view.set_residency(f"Q{i}", True)
    plan = ctl.plan(view, 0.5, running=1)
    assert ctl.served == 42 and plan.demoted == [] and plan.held == ["B0"]
    view, ctl = _case(BACK_LATER, 1)
    plan = ctl.plan(view, 0.5, running=40)
    assert ctl.served == 41 and plan.demoted == [] and plan.held == ["B0"]


def test_return_costs_scale_with_what_the_engine_serves() -> None:
    view, ctl = _case(BACK_LATER, 1)
    points = [1.0, 2.0, 700.0]  # the last beyond the horizon (600 s): not charged
    one, many = ctl.return_costs(60, points, served=1), ctl.return_costs(60, points, served=42)
    assert one[0] > 0.0 and many[:2] == pytest.approx([42 * c for c in one[:2]]) and many[2] == 0.0
    assert ctl.return_costs(60, points, served=0) == one  # j itself is always stalled


def test_the_wait_weight_is_the_fixed_share_of_the_decode_step() -> None:
    """w = b0 / (b0 + b_seq n + b_ctx T); 1 with nothing running or a zero step model."""
    ctl = ResidencyController(ResidencySettings(thrash_share=None, decode_b0=0.01, decode_b_seq=0.001, decode_b_ctx=1e-6), 100, BLOCK_TOKENS)
    ctl.observe_batch(10, 20)  # 10 sequences, 20 blocks = 5,120 tokens
    assert ctl.wait_weight == pytest.approx(0.01 / (0.01 + 0.01 + 5120e-6))
    ctl.observe_batch(0, 20)
    assert ctl.wait_weight == 1.0
    zero = ResidencyController(ResidencySettings(thrash_share=None, decode_b0=0.0, decode_b_seq=0.0, decode_b_ctx=0.0), 100, BLOCK_TOKENS)
    zero.observe_batch(10, 20)
    assert zero.wait_weight == 1.0


def test_on_a_busy_engine_a_session_back_soon_keeps_its_room() -> None:
    """A, back in 1-3 s, one session waiting: with the default (H200) decode model and X's small
    context the engine gains almost a whole session from the waiting one (w ~ 0.99) and A's demotion
    pays; with a step whose per-context cost equals its fixed cost (w = 0.5) a wait costs half as much
    and A is kept."""
    view, ctl = _case(BACK_SOON, 1)
    plan = ctl.plan(view, 0.5, running=1)
    assert ctl.wait_weight > 0.95 and plan.demoted == ["A"]
    view, ctl = _case(BACK_SOON, 1, decode_b0=0.01, decode_b_seq=0.0, decode_b_ctx=0.01 / (10 * BLOCK_TOKENS))
    plan = ctl.plan(view, 0.5, running=1)
    assert ctl.wait_weight == pytest.approx(0.5) and plan.demoted == [] and plan.held == ["B0"]


def test_the_deferral_weighs_the_wait() -> None:
    """keep(τ) = w E[min(R, τ)]: back in 1-2 s with probability 1/2, a return cost of 1 s. With w = 1
    every deferral's wait outweighs its saved cost (least at τ = 1 s and 2 s: 0.75): demoting pays.
    With w = 1/4 waiting 2 s costs 0.44 against 1 s saved half the time: keeping is better."""
    points, costs = [1.0, 2.0, 900.0, 1000.0], [1.0] * 4
    keep, drop = deferral_keep_and_drop(points, costs, 600.0)
    assert keep - drop == pytest.approx(0.75) and drop in (0.25, 0.5)
    keep, drop = deferral_keep_and_drop(points, costs, 600.0, weight=0.25)
    assert (keep, drop) == pytest.approx((0.25 * (1 + 2 + 2 + 2) / 4, 0.5)) and keep - drop < 0


@pytest.mark.parametrize("key", ["decode_b0", "decode_b_seq", "decode_b_ctx"])
def test_decode_coefficients_are_checked(key: str) -> None:
    with pytest.raises(ConfigError, match="decode"):
        ResidencySettings(**{key: -1e-6})
    with pytest.raises(ConfigError, match="decode"):
        ResidencySettings(**{key: float("inf")})
