"""One wiring for serving and the replay (``cachewise.runtime.plugin.wired``), one CPU builder, one clock.

* a scheduler of any class built with an explicit binding gets that binding's pool, and its
  prefix ranker reads the pool's clock (the replay's simulated clock), not the wall clock;
* built from ``--additional-config`` with the plugin registered, the scheduler wrapper inside
  an explicit wiring adds nothing: one pool, one start-up line;
* the replay builds its engine through the same builder with a configured ``scheduler_cls``,
  and the replay config refuses a class that is not a vLLM scheduler.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cachewise.replay.config import ReplayConfigError, load_config
from cachewise.replay.engine import EngineParams, VllmEngine
from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.cpu_engine import export_tiny_model, make_request, make_scheduler, make_vllm_config, run_to_completion
from cachewise.runtime.hooks import PolicyBinding
from cachewise.runtime.plugin import register
from cachewise.runtime.policy import ManualClock, ReusePrediction
from cachewise.runtime.scheduler import PrefixAwareScheduler
from cachewise.runtime.sessions import SessionView

PREFIX_AWARE = "cachewise.runtime.scheduler.PrefixAwareScheduler"
BLOCK = 16


class _Constant:
    def on_request_finished(self, request, now: float) -> ReusePrediction:
        return ReusePrediction(now + 5.0, float("inf"))


def test_explicit_binding_gives_its_pool_and_its_clock_to_pool_and_scheduler() -> None:
    clock = ManualClock()
    clock.now = 1000.0
    config = make_vllm_config(32, BLOCK, scheduler_cls=PREFIX_AWARE)
    scheduler = make_scheduler(config, PolicyBinding(_Constant(), clock))
    pool = scheduler.kv_cache_manager.block_pool
    assert type(scheduler) is PrefixAwareScheduler
    assert isinstance(pool, ScoredBlockPool) and pool.clock is clock
    assert scheduler.prefix_ranker._clock is clock
    scheduler.add_request(make_request("a", range(4 * BLOCK), BLOCK, 2, arrival_time=clock.now))
    assert len(run_to_completion(scheduler)) == 1


def test_the_wrapper_inside_an_explicit_wiring_adds_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    register()
    model = export_tiny_model(tmp_path / "m")
    config = make_vllm_config(32, BLOCK, additional_config={"cachewise": {"model": str(model)}})
    with caplog.at_level(logging.INFO, logger="vllm.cachewise"):
        scheduler = make_scheduler(config)
    assert isinstance(scheduler.kv_cache_manager.block_pool, ScoredBlockPool)
    assert sum("CacheWise active" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("scheduler_cls", [None, PREFIX_AWARE, "cachewise.runtime.scheduler.ResidencyScheduler"])
def test_every_wired_engine_has_one_session_view_written_by_the_hooks(tmp_path: Path, scheduler_cls: str | None) -> None:
    """vLLM's scheduler, the prefix-aware one and the residency one: one view, created by the
    wiring, shared by pool, predictor (and its call builder) and scheduler, written by the hooks."""
    model = export_tiny_model(tmp_path / "m")
    config = make_vllm_config(64, BLOCK, scheduler_cls=scheduler_cls, additional_config={"cachewise": {"model": str(model)}})
    scheduler = make_scheduler(config)
    pool = scheduler.kv_cache_manager.block_pool
    view = pool.sessions
    assert isinstance(view, SessionView) and pool.predictor.sessions is view and pool.predictor.calls.sessions is view
    assert getattr(scheduler, "sessions", view) is view
    scheduler.add_request(make_request("a", range(4 * BLOCK), BLOCK, 2))
    assert view.session_of("a") == "?a"  # no client id, no thread known yet: provisional
    (first,) = run_to_completion(scheduler)
    (key,) = [s.key for s in view]
    assert not key.startswith("?") and view.get(key).idle_since is not None and view.get(key).forecast is not None
    scheduler.add_request(make_request("b", [*first.all_token_ids, *range(900, 900 + 2 * BLOCK)], BLOCK, 2))
    assert view.session_of("b") == key and view.get(key).idle_since is None  # the thread index named it at arrival
    run_to_completion(scheduler)
    assert len(view) == 1 and view.get(key).finished_calls == 2 and not view.get(key).live


def test_declared_families_reach_the_view_and_a_certified_model_starts_learned(tmp_path: Path) -> None:
    """The hint ``family`` (else ``guard.family``) is counted at arrival; with the model folder's
    certificate naming that family the pool serves the learned order, and an undeclared request
    sends it back to vLLM's order for good."""
    import json

    model = export_tiny_model(tmp_path / "m")
    sha = json.loads((model / "spec.json").read_text())["model_sha256"]
    (model / "certificate.json").write_text(json.dumps({"model_sha256": sha, "families": {"agent": {"certified": True}}}))

    def scheduler(guard: dict) -> object:
        cfg = {"cachewise": {"model": str(model), "guard": {"sample_rate": 1.0, **guard}}}
        return make_scheduler(make_vllm_config(64, BLOCK, additional_config=cfg))

    agents = scheduler({})
    pool = agents.kv_cache_manager.block_pool
    assert pool.sessions.traffic_within(frozenset({"agent"})) is None  # no request yet
    agents.add_request(make_request("a", range(4 * BLOCK), BLOCK, 2, hint={"family": "agent"}))
    run_to_completion(agents)
    assert pool.sessions.traffic_within(frozenset({"agent"})) is True and pool.serves_learned()
    agents.add_request(make_request("b", range(1000, 1000 + 4 * BLOCK), BLOCK, 2))  # names no family
    run_to_completion(agents)
    assert pool.sessions.traffic_within(frozenset({"agent"})) is False and not pool.serves_learned()
    agents.add_request(make_request("c", range(2000, 2000 + 4 * BLOCK), BLOCK, 2, hint={"family": "agent"}))
    run_to_completion(agents)
    assert not pool.serves_learned() and pool.stats.guard_switches == 2  # for good

    server = scheduler({"family": "agent"})  # the server names the family of requests that do not
    server.add_request(make_request("a", range(4 * BLOCK), BLOCK, 2))
    run_to_completion(server)
    assert server.kv_cache_manager.block_pool.serves_learned()
    chat = scheduler({"family": "agent"})
    chat.add_request(make_request("a", range(4 * BLOCK), BLOCK, 2, hint={"family": "chat"}))  # the client's name wins
    run_to_completion(chat)
    assert not chat.kv_cache_manager.block_pool.serves_learned()


def test_without_binding_or_settings_vllm_pool_stays() -> None:
    register()
    scheduler = make_scheduler(make_vllm_config(32, BLOCK))
    assert not isinstance(scheduler.kv_cache_manager.block_pool, ScoredBlockPool)


def test_replay_engine_uses_the_configured_scheduler_class() -> None:
    params = EngineParams(block_size=BLOCK, max_num_seqs=8, max_num_batched_tokens=256)
    clock = ManualClock()
    engine = VllmEngine(64, 1024, params, PREFIX_AWARE, PolicyBinding(_Constant(), clock))
    assert type(engine.scheduler) is PrefixAwareScheduler
    assert engine.scheduler.prefix_ranker._clock is engine.block_pool.clock is clock
    engine.add("r", np.arange(3 * BLOCK), np.array([1, 2]), None, 0.0)
    while engine.has_work():
        engine.step()
    assert VllmEngine(64, 1024, params).scheduler.__class__.__name__ == "Scheduler"


def test_replay_config_checks_scheduler_cls(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml", {"scheduler_cls": PREFIX_AWARE}).scheduler_cls == PREFIX_AWARE
    with pytest.raises(ReplayConfigError, match="cannot import"):
        load_config(tmp_path / "absent.yaml", {"scheduler_cls": "cachewise.runtime.scheduler.NoSuch"})
    with pytest.raises(ReplayConfigError, match="not a subclass of vLLM's Scheduler"):
        load_config(tmp_path / "absent.yaml", {"scheduler_cls": "cachewise.runtime.policy.ManualClock"})
