"""The forecast judge: the model's return forecasts against the no-model ones, scored on returns."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import REGISTRY

from cachewise.runtime.config import ConfigError, ResidencySettings
from cachewise.runtime.forecast_judge import ForecastJudge, quantile_loss
from cachewise.runtime.metrics import publish_residency
from cachewise.runtime.residency import ResidencyController
from cachewise.runtime.sessions import Forecast, SessionView

BLOCK = 16
CAP = 600.0


def _around(gap: float, spread: float = 1.2) -> Forecast:
    """A forecast whose quantiles span ``gap / spread`` .. ``gap * spread`` (log-symmetric)."""
    lo, hi = math.log(gap / spread), math.log(gap * spread)
    return Forecast.from_samples([math.exp(lo + (hi - lo) * i / 40) for i in range(41)])


BROAD = Forecast.from_samples([0.5, 2.0, 8.0, 30.0, 120.0, 500.0])  # a tool class's whole spread


def test_quantile_loss_is_zero_for_an_exact_point_forecast_and_grows_with_the_miss() -> None:
    point = Forecast((5.0,) * 21)
    assert quantile_loss(point, 5.0, CAP) == 0.0
    assert 0 < quantile_loss(point, 7.0, CAP) < quantile_loss(point, 30.0, CAP)
    assert quantile_loss(point, 1.0, CAP) < quantile_loss(point, 0.1, CAP)


def test_quantile_loss_caps_gaps_and_quantiles_at_the_horizon() -> None:
    """Beyond the cap every gap is "not back within the horizon": a forecast of "never" loses nothing
    to one of 2x the cap when the session is back after 3x the cap, and "never" scores 0 there."""
    assert quantile_loss(Forecast.never(), 3 * CAP, CAP) == 0.0
    assert quantile_loss(Forecast((2 * CAP,) * 21), 3 * CAP, CAP) == 0.0
    assert quantile_loss(Forecast.never(), 1.0, CAP) > 0.0


def _feed(judge: ForecastJudge, model: callable, n: int, seed: int = 0) -> list[bool]:
    """``n`` returns with gaps drawn from BROAD's spread; ``model(gap)`` gives the model's forecast."""
    rng = random.Random(seed)
    verdicts = []
    for _ in range(n):
        gap = math.exp(rng.uniform(math.log(0.5), math.log(500.0)))
        judge.score(model(gap), BROAD, gap)
        verdicts.append(judge.trusted)
    return verdicts


def test_trusts_a_model_that_knows_the_gaps_after_min_returns_and_not_before() -> None:
    judge = ForecastJudge(CAP, z=2.0, min_returns=32)
    verdicts = _feed(judge, _around, 200)
    assert not any(verdicts[:31]) and verdicts[31] and all(verdicts[31:])
    assert judge.mean_difference < 0 and judge.switches == 1


@pytest.mark.parametrize(
    "model",
    [
        lambda gap: _around(500.0 / gap),  # inverted: long where the gap is short
        lambda gap: _around(math.exp(random.Random(int(gap * 1e6)).uniform(math.log(0.5), math.log(500.0)))),  # random
        lambda gap: BROAD,  # the reference itself: no better
    ],
    ids=["inverted", "random", "same"],
)
def test_never_trusts_a_model_that_is_not_better(model) -> None:
    judge = ForecastJudge(CAP)
    assert not any(_feed(judge, model, 2000))


@pytest.mark.parametrize("inverted", [False, True])
def test_starting_trusted_keeps_a_good_model_and_leaves_an_inverted_one_after_min_returns(inverted: bool) -> None:
    """The residency default (``judge_start_trusted``): acts on the model until it measurably loses."""
    assert ResidencySettings().judge_start_trusted
    judge = ForecastJudge(CAP, min_returns=32, trusted=True)
    verdicts = _feed(judge, (lambda gap: _around(500.0 / gap)) if inverted else _around, 200)
    assert all(verdicts[:31])
    if inverted:
        first_out = verdicts.index(False)
        assert 31 <= first_out < 60 and not any(verdicts[first_out:]) and judge.switches == 1
    else:
        assert all(verdicts) and judge.switches == 0


def test_leaves_a_model_that_turns_measurably_worse_but_not_on_one_bad_return() -> None:
    judge = ForecastJudge(CAP, min_returns=32, half_life=64)
    assert _feed(judge, _around, 100)[-1]
    judge.score(_around(500.0), BROAD, 0.5)  # one confident miss
    assert judge.trusted
    verdicts = _feed(judge, lambda gap: _around(500.0 / gap), 300, seed=1)
    assert not verdicts[-1] and judge.switches == 2


def test_standard_error_is_infinite_before_two_returns_and_settings_are_checked() -> None:
    judge = ForecastJudge(CAP, min_returns=0)
    assert judge.standard_error == math.inf
    judge.score(_around(5.0), BROAD, 5.0)
    assert not judge.trusted  # one return: no standard error yet
    with pytest.raises(ValueError):
        ForecastJudge(math.inf)
    with pytest.raises(ConfigError):
        ResidencySettings(thrash_share=None, judge_half_life=0)
    with pytest.raises(ConfigError):
        ResidencySettings(thrash_share=None, judge="yes")  # type: ignore[arg-type]


def _finish(view: SessionView, rid: str, session: str, now: float, forecast: Forecast, reference: Forecast | None) -> None:
    view.on_arrival(rid, session, "t", 4 * BLOCK, now - 1.0)
    view.on_scheduled(rid)
    view.on_forecast(rid, session, "t", forecast, reference)
    view.on_finished(rid, 4 * BLOCK, [f"{session}{i}".encode() for i in range(4)], now)


def test_the_view_scores_each_return_with_the_forecasts_of_the_last_finish() -> None:
    view = SessionView(BLOCK)
    view.judge = judge = ForecastJudge(CAP, min_returns=0)
    _finish(view, "a1", "A", 10.0, _around(2.0), BROAD)
    view.on_arrival("a2", "A", "t", 4 * BLOCK, 12.0)  # back after 2 s
    assert judge.scored == 1
    assert judge.mean_difference == pytest.approx(quantile_loss(_around(2.0), 2.0, CAP) - quantile_loss(BROAD, 2.0, CAP))
    view.on_arrival("a3", "A", "t", 4 * BLOCK, 13.0)  # a second live request is not a return
    _finish(view, "b1", "B", 10.0, _around(2.0), None)  # no reference: nothing to score against
    view.on_arrival("b2", "B", "t", 4 * BLOCK, 12.0)
    assert judge.scored == 1


def test_a_session_named_only_at_its_finish_is_scored_when_its_provisional_session_merges() -> None:
    view = SessionView(BLOCK)
    view.judge = judge = ForecastJudge(CAP, min_returns=0)
    _finish(view, "a1", "A", 10.0, _around(3.0), BROAD)
    view.on_arrival("a2", None, None, 4 * BLOCK, 13.0)  # no session id: provisional
    assert judge.scored == 0
    view.on_scheduled("a2")
    view.on_forecast("a2", "A", "t", _around(3.0), BROAD)
    view.on_finished("a2", 4 * BLOCK, [f"A{i}".encode() for i in range(4)], 14.0)
    assert judge.scored == 1
    assert judge.mean_difference == pytest.approx(quantile_loss(_around(3.0), 3.0, CAP) - quantile_loss(BROAD, 3.0, CAP))


def test_the_controller_acts_while_the_judge_trusts_the_forecasts_though_the_guard_does_not() -> None:
    """Rule 5 with the judge: the guard distrusts, the judge trusts: holds and demotes as when trusted."""
    view = SessionView(BLOCK, lambda: False)
    view.judge = judge = ForecastJudge(CAP, min_returns=0)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0), 100, 256)
    view.on_arrival("a", "A", "t", 60 * BLOCK, 0.0)
    view.on_arrival("b", "B", "t", 50 * BLOCK, 1.0)
    assert ctl.plan(view, 2.0, running=0).held == [] and not ctl.following_model  # passes through
    _feed(judge, _around, 40)
    assert view.forecasts_trusted
    view.on_arrival("c", "C", "t", 10 * BLOCK, 3.0)
    plan = ctl.plan(view, 4.0, running=2)
    assert ctl.following_model and plan.held == ["C"]  # A and B live over budget: C waits


def _one_idle_one_waiting(
    judge_good: bool, fallback: bool = True, forecasts: str = "model"
) -> tuple[ResidencyController, SessionView, object]:
    """Guard distrusting; the judge fed a good or an inverted model; of 100 blocks, C live holds 20 and A
    idle 60 (the model: back in ~1 s; the reference: not back within the horizon); B arrives needing 50."""
    view = SessionView(BLOCK, lambda: False)
    view.judge = judge = ForecastJudge(CAP, min_returns=0)
    _feed(judge, _around if judge_good else (lambda gap: _around(500.0 / gap)), 200)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0, judge_fallback=fallback, forecasts=forecasts), 100, 256)
    view.on_arrival("a1", "A", "t", 60 * BLOCK, 0.0)
    view.on_arrival("c1", "C", "t", 20 * BLOCK, 0.0)
    assert ctl.plan(view, 0.5, running=0).admitted == {"A", "C"}
    view.on_scheduled("a1")
    view.on_scheduled("c1")
    view.on_forecast("a1", "A", "t", _around(1.0), Forecast.never())
    view.on_finished("a1", 60 * BLOCK, [f"A{i}".encode() for i in range(60)], 1.0)
    view.on_arrival("b1", "B", "t", 50 * BLOCK, 1.5)
    return ctl, view, ctl.plan(view, 2.0, running=4)


def test_while_the_judge_distrusts_the_model_the_controller_acts_on_the_reference_forecasts() -> None:
    """Rule 5, "Reference forecasts": the same state, the judge's verdict alone differs. Trusting the model,
    A (back in ~1 s) is kept and B waits; distrusting it, the reference (A not back) demotes A for B; with
    ``judge_fallback`` off, the controller passes through (B admitted, nothing demoted)."""
    ctl, view, plan = _one_idle_one_waiting(judge_good=True)
    assert view.forecasts_trusted and ctl.following_model and not ctl.on_reference
    assert plan.held == ["B"] and plan.demoted == []
    ctl, view, plan = _one_idle_one_waiting(judge_good=False)
    assert view.reference_preferred and not ctl.following_model and ctl.on_reference and ctl.acting
    assert plan.demoted == ["A"] and plan.admitted == {"B"} and ctl.passthrough_steps == 0
    assert ctl.forecast_of(view.get("A")) is view.get("A").reference
    publish_residency(ctl.following_model, view.judge, ctl.on_reference, short=False)
    assert REGISTRY.get_sample_value("cachewise_residency_memory_short") == 0.0
    publish_residency(ctl.following_model, view.judge, ctl.on_reference, ctl.short)
    assert REGISTRY.get_sample_value("cachewise_residency_memory_short") == 1.0
    assert REGISTRY.get_sample_value("cachewise_residency_reference_forecasts") == 1.0
    assert REGISTRY.get_sample_value("cachewise_residency_following_model") == 0.0
    ctl, view, plan = _one_idle_one_waiting(judge_good=False, fallback=False)
    assert not ctl.acting and plan.demoted == [] and plan.admitted == {"B"} and ctl.passthrough_steps == 2


def test_with_forecasts_reference_the_controller_acts_on_the_reference_while_following_the_model() -> None:
    """``forecasts: reference``: the judge trusts the model (following it, no pass-through), yet admission and
    demotion read the reference: A (the model: back in ~1 s; the reference: not back) is demoted for B.
    A session with no reference is judged by the model's forecast. The default is ``reference``."""
    assert ResidencySettings().forecasts == "reference"
    ctl, view, plan = _one_idle_one_waiting(judge_good=True, forecasts="reference")
    assert view.forecasts_trusted and ctl.following_model and not ctl.on_reference
    assert plan.demoted == ["A"] and plan.admitted == {"B"}
    assert ctl.forecast_of(view.get("A")) is view.get("A").reference
    view.on_scheduled("b1")
    view.on_forecast("b1", "B", "t", _around(2.0), None)
    view.on_finished("b1", 50 * BLOCK, [f"B{i}".encode() for i in range(50)], 3.0)
    b = view.get("B")
    assert b.forecast is not None and b.reference is None and ctl.forecast_of(b) is b.forecast
    with pytest.raises(ConfigError, match="forecasts"):
        ResidencySettings(thrash_share=None, forecasts="oracle")


def test_the_reference_mode_needs_a_scored_return_and_leaves_when_the_model_is_trusted_again() -> None:
    """No return scored: no verdict, pass through (as before the judge). Judge distrusting: reference.
    The guard trusting again: the model's forecasts, with no restoring (the residents are the budget's)."""
    trusted = [False]
    view = SessionView(BLOCK, lambda: trusted[0])
    view.judge = judge = ForecastJudge(CAP, min_returns=0)
    ctl = ResidencyController(ResidencySettings(thrash_share=None, headroom=0.0), 100, 256)
    view.on_arrival("a", "A", "t", 10 * BLOCK, 0.0)
    ctl.plan(view, 1.0, running=0)
    assert not ctl.acting and not view.reference_preferred
    _feed(judge, lambda gap: _around(500.0 / gap), 200)
    ctl.plan(view, 2.0, running=1)
    assert ctl.on_reference and ctl.restoring is False  # resumed from pass-through; residents fit: restored
    trusted[0] = True
    ctl.plan(view, 3.0, running=1)
    assert ctl.following_model and not ctl.on_reference and not ctl.restoring
