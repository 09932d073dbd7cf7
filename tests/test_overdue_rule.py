"""One overdue rule (:mod:`cachewise.scoring.overdue`) everywhere it applies.

For a prefix or session idle ``e`` seconds past every prediction, each component must expect
``overdue_remaining(e)`` more seconds of idleness: the idle conditioner (scalar and
vectorised), the eviction order's re-key, the guard's learned shadow, the forecast's
remaining gap, the residency controller and the host-tier policy for a session without a
forecast. Each check reads the component's own output, so a component that spelled the
rule differently (``2 e``, another floor) fails here. ``e`` covers values below and above the
floor.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from cachewise.runtime.config import GuardConfig, PoolConfig, ResidencySettings
from cachewise.runtime.policy import ManualClock, ReusePrediction
from cachewise.runtime.sessions import FORECAST_LEVELS, Forecast, SessionView
from cachewise.scoring.idle import N_LEVELS, IdleConditioner
from cachewise.scoring.overdue import MIN_OVERDUE_STEP_S, overdue_remaining

IDLE = (0.0, 0.25, MIN_OVERDUE_STEP_S, 7.5, 3600.0)


def test_the_rule_is_idle_as_long_again_with_a_floor() -> None:
    assert [overdue_remaining(e) for e in IDLE] == [1.0, 1.0, 1.0, 7.5, 3600.0]


@pytest.mark.parametrize("e", IDLE)
def test_idle_conditioner_past_the_residual_range(e: float) -> None:
    cond = IdleConditioner(tuple(np.linspace(-1.0, 1.0, N_LEVELS)))
    mu = -50.0  # log1p(e) - mu is past every residual: F = 1
    assert cond.expected_gap_one(mu, e) == e + overdue_remaining(e)
    assert cond.expected_gap(np.array([mu, mu]), np.array([e, e])).tolist() == [e + overdue_remaining(e)] * 2


@pytest.mark.parametrize("e", IDLE)
def test_forecast_past_every_quantile(e: float) -> None:
    forecast = Forecast((0.0,) * len(FORECAST_LEVELS))
    assert forecast.remaining_quantile(e, 0.5) == overdue_remaining(e)
    assert forecast.expected_hold(e, 1e9) == overdue_remaining(e)
    assert forecast.p_back_within(e, overdue_remaining(e)) == 1.0
    assert forecast.p_back_within(e, 0.99 * overdue_remaining(e)) == 0.0


@pytest.mark.parametrize("e", IDLE)
def test_residency_without_a_forecast(e: float) -> None:
    from cachewise.runtime.residency import ResidencyController

    view = SessionView(16)
    view.on_arrival("r", "s", "s", 16, 0.0)
    view.on_finished("r", 16, (), 0.0)
    controller = ResidencyController(ResidencySettings(thrash_share=None, horizon_s=1e9), 100, 16)
    keep, _ = controller.keep_and_drop(view.get("s"), 1.0, e, served=0)
    assert keep == overdue_remaining(e)


@pytest.mark.parametrize("e", IDLE)
def test_host_tier_policy_without_a_forecast(e: float) -> None:
    from cachewise.runtime.cpu_policy import CacheWiseCachePolicy

    view = SessionView(16)
    view.on_arrival("r", "s", "s", 16, 0.0)
    view.on_finished("r", 16, (), 0.0)
    policy = CacheWiseCachePolicy(cache_capacity=4)
    policy.attach(view, ManualClock())
    assert policy.session_score("s", e) == (overdue_remaining(e), False)


@pytest.mark.parametrize("e", IDLE)
def test_guard_shadow_ranks_an_overdue_prefix_at_now_plus_the_rule(e: float) -> None:
    from cachewise.runtime.guard import LearnedShadow

    for delta, victim in ((-1e-6, b"overdue"), (1e-6, b"far")):
        shadow = LearnedShadow()
        shadow.insert(b"overdue", 0.0, 1, (0.0, float("inf")))  # due at once, idle since 0
        far = e + overdue_remaining(e) + delta
        shadow.insert(b"far", 0.0, 2, (far, float("inf")))
        assert shadow.evict(e) == victim, (delta, far)


@pytest.mark.parametrize("e", IDLE)
def test_eviction_order_rekeys_an_overdue_block_to_now_plus_the_rule(e: float) -> None:
    from vllm.v1.core.kv_cache_utils import init_none_hash
    from vllm.utils.hashing import sha256

    from cachewise.runtime.block_pool import ScoredBlockPool

    init_none_hash(sha256)
    clock = ManualClock()
    gaps = iter([0.0, 1e9])  # expiries capped at max_idle_s, set far beyond both  # first request: back at once (overdue right away); second: far away

    class Scripted:
        def on_request_finished(self, request: object, now: float) -> ReusePrediction:
            return ReusePrediction(now + next(gaps), float("inf"))

    config = PoolConfig(log_interval_s=0, max_idle_s=1e12, guard=GuardConfig(enabled=False))
    pool = ScoredBlockPool(3, True, 16, predictor=Scripted(), clock=clock, config=config)
    held = []
    for tag in (b"a", b"b"):
        (block,) = pool.get_new_blocks(1)
        pool.cache_full_blocks(SimpleNamespace(block_hashes=[hashlib.sha256(tag).digest()]), [block], 0, 1, 16, 0)
        pool.on_request_released(SimpleNamespace(is_finished=lambda: True), [([block], True)])
        pool.free_blocks([block])
        held.append(block)
    clock.now = e
    (victim,) = pool.get_new_blocks(1)  # processes due timers: block a is re-keyed, block b (far) goes
    assert victim is held[1]
    reuse, _ = pool._order.prediction(held[0].block_id)
    assert reuse == e + overdue_remaining(e)
