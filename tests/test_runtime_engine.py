"""The plugin in vLLM's real engine path on CPU: activation by ``--additional-config``, failure modes, metrics.

Engines are built as ``EngineCore`` builds its scheduler (``cachewise.runtime.cpu_engine``:
a local ``config.json``, ``skip_tokenizer_init``, no weights) after the plugin's
``register()``, and stepped with fake model outputs until their requests finish.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.config import PoolConfig
from cachewise.runtime.cpu_engine import export_tiny_model as _export
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.learned import LearnedPredictor
from cachewise.runtime.plugin import register
from cachewise.runtime.policy import ReusePrediction

pytestmark = pytest.mark.vllm

BLOCK = 16


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logs() -> Iterator[Records]:
    """Everything CacheWise logs during the test (its logger sits under vLLM's)."""
    handler, logger = Records(), logging.getLogger("vllm.cachewise")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture(scope="module", autouse=True)
def plugin() -> None:
    register()
    register()  # vLLM may call it several times; must be re-entrant


def _serve(scheduler, n: int = 6, start: int = 0) -> None:
    """Requests with distinct prompts, enough to evict (each 4 prompt blocks + output)."""
    for i in range(n):
        scheduler.add_request(make_request(f"r{start + i}", range(1000 * (start + i), 1000 * (start + i) + 4 * BLOCK), BLOCK, 3))
        run_to_completion(scheduler)


def _fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("cachewise_fallbacks_total", {"reason": reason}) or 0.0


def test_no_settings_leaves_vllm_untouched() -> None:
    scheduler = make_scheduler(make_vllm_config(32, BLOCK))
    assert type(scheduler.kv_cache_manager.block_pool) is BlockPool


def test_learned_settings_build_the_learned_pool_and_log_one_startup_line(tmp_path: Path, logs: Records) -> None:
    model = _export(tmp_path / "m")
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, additional_config={"cachewise": {"model": str(model)}}))
    pool = scheduler.kv_cache_manager.block_pool
    assert isinstance(pool, ScoredBlockPool) and pool.active and isinstance(pool.predictor, LearnedPredictor)
    _serve(scheduler)
    assert pool.stats.predictions == 6 and pool.stats.evictions > 0 and pool.stats.total_fallbacks == 0
    startup = [m for m in logs.at(logging.INFO) if m.startswith("CacheWise active")]
    assert startup == [f"CacheWise active: learned eviction order, model={model}, tool_parser=auto, max_idle_s=3600, pool=24 blocks"]
    assert not logs.at(logging.WARNING)


def _corrupt_model_txt(folder: Path) -> str:
    _export(folder)
    (folder / "model.txt").write_text("this is not a model\n")
    return str(folder)


def _corrupt_spec(folder: Path) -> str:
    _export(folder)
    (folder / "spec.json").write_text("{not json")
    return str(folder)


def _old_feature_set(folder: Path) -> str:
    return str(_export(folder, {"feature_set_version": "0"}))


def _missing(folder: Path) -> str:
    return str(folder / "does-not-exist")


@pytest.mark.parametrize(
    "make_model, expect",
    [
        (_missing, "no such model folder"),
        (_corrupt_model_txt, "differs from the spec's model_sha256"),
        (_corrupt_spec, "not a readable JSON spec"),
        (_old_feature_set, "feature_set_version"),
    ],
    ids=["missing", "corrupt-model", "corrupt-spec", "feature-set-mismatch"],
)
def test_model_load_failures_fall_back_with_one_warning(make_model, expect: str, tmp_path: Path, logs: Records) -> None:
    before = _fallbacks("load")
    settings = {"cachewise": {"model": make_model(tmp_path / "m")}}
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, additional_config=settings))
    pool = scheduler.kv_cache_manager.block_pool
    assert isinstance(pool, ScoredBlockPool) and not pool.active
    _serve(scheduler)  # keeps serving, in vLLM's order
    warnings = logs.at(logging.WARNING)
    assert len(warnings) == 1 and expect in warnings[0] and "vLLM's default eviction order" in warnings[0]
    assert pool.stats.fallbacks["load"] == 1 and _fallbacks("load") == before + 1
    assert pool.stats.evictions > 0 and pool.stats.released == 6


def test_unreachable_registry_falls_back(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = {"cachewise": {"model": "models:/cachewise-reuse@champion"}}
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, additional_config=settings))
    assert not scheduler.kv_cache_manager.block_pool.active
    warnings = logs.at(logging.WARNING)
    assert len(warnings) == 1 and "cannot download from MLflow" in warnings[0]


def test_invalid_settings_fall_back(logs: Records) -> None:
    settings = {"cachewise": {"mode": "learned", "modle": "typo"}}
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, additional_config=settings))
    pool = scheduler.kv_cache_manager.block_pool
    assert isinstance(pool, ScoredBlockPool) and not pool.active and pool.stats.fallbacks["load"] == 1
    warnings = logs.at(logging.WARNING)
    assert len(warnings) == 1 and "unknown cachewise keys ['modle']" in warnings[0]


class Failing:
    """A predictor that raises, or returns an unusable score."""

    def __init__(self, result: object) -> None:
        self.result = result
        self.calls = 0

    def on_request_finished(self, request, now: float):
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize(
    "result, reason",
    [(RuntimeError("boom"), "predictor_error"), (ReusePrediction(math.nan, 1.0), "invalid_score"), ("junk", "invalid_score")],
    ids=["raises", "nan", "junk"],
)
def test_predictor_failures_are_counted_warned_once_and_never_reach_vllm(result, reason: str, logs: Records) -> None:
    predictor = Failing(result)
    with use_policy(predictor):
        scheduler = make_scheduler(make_vllm_config(24, BLOCK))
    pool = scheduler.kv_cache_manager.block_pool
    _serve(scheduler)
    assert predictor.calls == 6 and pool.stats.fallbacks[reason] == 6 and pool.active
    assert len(logs.at(logging.WARNING)) == 1
    assert pool.stats.evictions > 0 and pool.get_num_free_blocks() == 23


def test_too_many_failures_in_a_row_revert_to_vllm_order(logs: Records) -> None:
    with use_policy(Failing(RuntimeError("boom")), config=PoolConfig(max_consecutive_failures=3)):
        scheduler = make_scheduler(make_vllm_config(24, BLOCK))
    pool = scheduler.kv_cache_manager.block_pool
    _serve(scheduler)
    assert not pool.active and pool.stats.fallbacks["predictor_error"] == 3 and pool.stats.fallbacks["disabled"] == 1
    warnings = logs.at(logging.WARNING)
    assert len(warnings) == 2 and "reverting to vLLM's eviction order" in warnings[1]


def test_learned_predictor_rejects_non_finite_model_output(tmp_path: Path) -> None:
    scheduler = make_scheduler(
        make_vllm_config(24, BLOCK, additional_config={"cachewise": {"model": str(_export(tmp_path / "m"))}})
    )
    pool = scheduler.kv_cache_manager.block_pool
    pool.predictor.model.predict_one = lambda vec: math.inf
    _serve(scheduler, n=2)
    assert pool.stats.fallbacks["invalid_score"] == 2 and pool.stats.predictions == 0


def test_a_failing_hook_never_blocks_a_free(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    with use_policy(None):
        scheduler = make_scheduler(make_vllm_config(24, BLOCK))
    pool = scheduler.kv_cache_manager.block_pool

    def broken(request, chains):
        raise KeyError("bug")

    monkeypatch.setattr(pool, "on_request_released", broken)
    _serve(scheduler, n=3)
    assert pool.stats.fallbacks["hook_error"] == 3 and pool.get_num_free_blocks() == 23
    assert len(logs.at(logging.WARNING)) == 1


@pytest.mark.parametrize(
    "scheduler_cls",
    ["vllm.v1.core.sched.async_scheduler.AsyncScheduler", "cachewise.runtime.scheduler.PrefixAwareAsyncScheduler"],
)
def test_async_scheduler_engine_uses_the_scored_pool(scheduler_cls: str, tmp_path: Path) -> None:
    """vLLM's default on GPU is the AsyncScheduler (the CPU platform turns async off, so it is named here)."""
    settings = {"cachewise": {"model": str(_export(tmp_path / "m"))}}
    scheduler = make_scheduler(make_vllm_config(24, BLOCK, additional_config=settings, scheduler_cls=scheduler_cls))
    assert type(scheduler).__name__ == scheduler_cls.rsplit(".", 1)[1]
    pool = scheduler.kv_cache_manager.block_pool
    assert isinstance(pool, ScoredBlockPool) and pool.active
    _serve(scheduler)
    assert pool.stats.predictions == 6 and pool.stats.evictions > 0


def test_metrics_are_exported_and_stat_lines_logged(logs: Records) -> None:
    class Soon:
        def on_request_finished(self, request, now):
            return ReusePrediction(now + 1.0, now + 10.0)

    before = {n: REGISTRY.get_sample_value(n) or 0.0 for n in ("cachewise_evictions_total", "cachewise_predictions_total")}
    with use_policy(Soon(), config=PoolConfig(log_interval_s=1e-9)):
        scheduler = make_scheduler(make_vllm_config(24, BLOCK))
    pool = scheduler.kv_cache_manager.block_pool
    _serve(scheduler)
    # ask again for a prefix that lost blocks: a ghost hit
    prompts = [make_request(f"p{i}", range(1000 * i, 1000 * i + 4 * BLOCK), BLOCK) for i in range(6)]
    cached = pool.cached_block_hash_to_block  # looked up directly: a lookup through the pool would count
    victim = next(p for p in prompts if any(cached.get_one_block(make_block_hash_with_group_id(h, 0)) is None for h in p.block_hashes))
    assert pool.stats.ghost_hits == 0
    scheduler.add_request(make_request("again", victim.prompt_token_ids, BLOCK, 3))
    run_to_completion(scheduler)
    assert pool.stats.ghost_hits >= 1
    assert REGISTRY.get_sample_value("cachewise_evictions_total") == before["cachewise_evictions_total"] + pool.stats.evictions
    assert REGISTRY.get_sample_value("cachewise_predictions_total") == before["cachewise_predictions_total"] + 7
    assert REGISTRY.get_sample_value("cachewise_scorer_latency_seconds_count") >= 7
    assert REGISTRY.get_sample_value("cachewise_ghost_hits_total") >= 1
    lines = [m for m in logs.at(logging.INFO) if m.startswith("CacheWise pool[24 blocks]: evictions=")]
    assert lines and f"predictions={pool.stats.predictions}" in lines[-1]


def test_cli_reports_the_pool_it_would_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cachewise.runtime.cpu_engine import main

    assert main([json.dumps({"cachewise": {"model": str(_export(tmp_path / "m"))}}), "--num-blocks", "32"]) == 0
    assert capsys.readouterr().out.strip() == "scheduler: Scheduler; block pool: ScoredBlockPool (learned order)"
    assert main([json.dumps({"cachewise": {"mode": "fallback"}}), "--num-blocks", "32"]) == 0
    assert "ScoredBlockPool (fallback: vLLM order)" in capsys.readouterr().out
