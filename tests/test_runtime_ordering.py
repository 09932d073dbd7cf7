"""Eviction order inside vLLM's real scheduler: with a real exported model, and rule by rule.

The model test trains a tiny LightGBM model on the project's own feature definition
(:class:`~cachewise.features.online.FeatureState`) over calls whose idle time depends on
the tool they ran (test runs ~2 min, reads ~2 s, ended turns ~20 min), writes it in the
export format and loads it with :func:`cachewise.scoring.exported.load_exported`. The engine
is vLLM's ``Scheduler`` built with ``--additional-config`` through the plugin. A session
waiting on a long test run must keep its prefix while a finished session, freed *later*
(so vLLM's LRU would keep it instead), loses its prefix; plain vLLM on the same traffic does
the opposite.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from cachewise.runtime.policy import ManualClock as Clock
from cachewise.features.online import FeatureState
from cachewise.features.record import FinishedCall, ToolCallInfo
from cachewise.features.spec import spec_fields
from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion, step
from cachewise.runtime.config import GuardConfig, PoolConfig
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.learned import LearnedPredictor
from cachewise.runtime.plugin import register
from cachewise.runtime.policy import ReusePrediction
from cachewise.scoring.exported import load_exported, write_export
from cachewise.scoring.idle import IdleConditioner

# The learned order itself, with the guard off (tests/test_runtime_guard.py covers the guard).
UNGUARDED = PoolConfig(guard=GuardConfig(enabled=False))

pytestmark = pytest.mark.vllm

BLOCK = 16
TEST_RUN = {"name": "Bash", "arguments": {"command": "python -m pytest tests/ -x"}}
READ = {"name": "Read", "arguments": {"file_path": "src/app.py"}}
IDLE_S = {"test": 120.0, "read": 2.0, "ended": 1200.0}


def _training_rows(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors and log1p(idle) labels of synthetic agent threads (tool decides the idle time)."""
    rng = random.Random(seed)
    state = FeatureState()
    rows, labels = [], []
    for thread in range(60):
        t, prompt = 1000.0 * thread, 2000
        for _ in range(12):
            kind = rng.choice(["test", "read", "read", "ended"])
            tools = {"test": (TEST_RUN,), "read": (READ,), "ended": ()}[kind]
            finish = t + rng.uniform(1, 4)
            call = FinishedCall(
                thread_key=f"t{thread}", session_key=f"s{thread}", request_time=t, finish_time=finish,
                prompt_tokens=prompt, output_tokens=80, ended_turn=not tools, model="tiny",
                tool_calls=tuple(ToolCallInfo(c["name"], c["arguments"]) for c in tools),
            )
            idle = IDLE_S[kind] * rng.uniform(0.7, 1.3)
            rows.append(state.observe(call))
            labels.append(math.log1p(idle))
            t, prompt = finish + idle, prompt + 500
    return np.array(rows), np.array(labels)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export folder (model.txt + spec.json) of a tiny model trained on tool-dependent idle times."""
    x, y = _training_rows()
    params = {"objective": "regression", "learning_rate": 0.2, "num_leaves": 8, "min_data_in_leaf": 5, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=60)
    folder = tmp_path_factory.mktemp("model")
    residuals = y - booster.predict(x)
    spec = {**spec_fields(), "residual_quantiles": {"model": IdleConditioner.from_residuals(residuals).to_list()}}
    write_export(folder, booster, spec)
    return folder


def _traffic(scheduler, rng_tokens: int) -> None:
    """Session A runs its tests, then session B ends its turn; then a large new prompt needs room."""
    a = make_request("a1", range(rng_tokens, rng_tokens + 4 * BLOCK), BLOCK, max_tokens=2,
                     hint={"tool_calls": [TEST_RUN]}, session_id="A")
    scheduler.add_request(a)
    run_to_completion(scheduler)
    b = make_request("b1", range(rng_tokens + 1000, rng_tokens + 1000 + 4 * BLOCK), BLOCK, max_tokens=2,
                     hint={"tool_calls": []}, session_id="B")
    scheduler.add_request(b)
    run_to_completion(scheduler)
    scheduler.add_request(make_request("c1", range(rng_tokens + 5000, rng_tokens + 5000 + 10 * BLOCK), BLOCK, max_tokens=2))
    run_to_completion(scheduler)


def _cached_tokens(scheduler, start: int) -> int:
    probe = make_request("probe", range(start, start + 4 * BLOCK + 1), BLOCK)
    _, hit, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(probe.block_hashes, probe.num_tokens - 1)
    return hit


def test_learned_order_keeps_the_waiting_session(model_dir: Path) -> None:
    register()
    model = load_exported(model_dir)
    # guard off: three requests are too few for it to measure the learned order better than LRU
    settings = {"cachewise": {"model": str(model_dir), "guard": {"enabled": False}}}
    learned = make_scheduler(make_vllm_config(16, BLOCK, additional_config=settings))
    plain = make_scheduler(make_vllm_config(16, BLOCK))
    pool = learned.kv_cache_manager.block_pool
    assert isinstance(pool, ScoredBlockPool) and pool.active
    assert isinstance(pool.predictor, LearnedPredictor) and pool.predictor.model.source == str(model_dir)
    assert type(plain.kv_cache_manager.block_pool) is not ScoredBlockPool

    for scheduler in (learned, plain):
        _traffic(scheduler, 0)
    assert pool.stats.predictions == 3 and pool.stats.total_fallbacks == 0
    # CacheWise: the session waiting on its tests keeps its prefix, the finished one lost it.
    assert _cached_tokens(learned, 0) == 4 * BLOCK
    assert _cached_tokens(learned, 1000) == 0
    # vLLM's LRU on the same traffic: the older (waiting) session was evicted instead.
    assert _cached_tokens(plain, 0) == 0
    assert _cached_tokens(plain, 1000) == 4 * BLOCK
    # The model really ranks a test run sooner than an ended turn.
    state = FeatureState()
    vecs = [
        state.observe(FinishedCall(f"x{i}", f"x{i}", 0.0, 2.0, 2000, 80, tools, not tools, "tiny"))
        for i, tools in enumerate([(ToolCallInfo("Bash", TEST_RUN["arguments"]),), ()])
    ]
    assert model.predict_one(vecs[0]) < model.predict_one(vecs[1])


class ByRequest:
    """Predicts (reuse_at, expire_at) offsets chosen per request id."""

    def __init__(self, table: dict[str, tuple[float, float] | None]) -> None:
        self.table = table

    def on_request_finished(self, request, now: float) -> ReusePrediction | None:
        entry = self.table[request.request_id]
        return None if entry is None else ReusePrediction(now + entry[0], now + entry[1])


def _scored_scheduler(predictor, clock: Clock, num_blocks: int):
    with use_policy(predictor, clock=clock, config=UNGUARDED):
        return make_scheduler(make_vllm_config(num_blocks, BLOCK))


def _finish(scheduler, rid: str, prompt, max_tokens: int = 2) -> None:
    scheduler.add_request(make_request(rid, prompt, BLOCK, max_tokens=max_tokens))
    run_to_completion(scheduler)


def _hold(scheduler, rid: str, blocks: int) -> None:
    """Admit a long request whose prompt fills ``blocks`` fresh blocks and keep it running (one step)."""
    scheduler.add_request(make_request(rid, range(50000, 50000 + blocks * BLOCK), BLOCK, max_tokens=1000))
    step(scheduler)
    assert len(scheduler.running) == 1


def test_expired_prefix_goes_first_and_overdue_prefixes_are_rekeyed() -> None:
    clock = Clock()
    table = {"old": (5.0, 20.0), "near": (10.0, 50.0), "far": (1000.0, 5000.0)}
    scheduler = _scored_scheduler(ByRequest(table), clock, 16)
    for rid, start in (("old", 0), ("near", 1000), ("far", 2000)):
        _finish(scheduler, rid, range(start, start + 4 * BLOCK))
    # 15 usable blocks: 12 cached (3 chains of 4) + 3 unhashed free.
    clock.now = 30.0  # "old" has expired (20); "near" is overdue (10) but not expired (50)
    _hold(scheduler, "pressure", 3 + 4 + 3)  # the 3 unhashed, 4 cached, then 3 more
    pool = scheduler.kv_cache_manager.block_pool
    assert _cached_tokens(scheduler, 0) == 0, "the expired prefix goes first"
    assert _cached_tokens(scheduler, 1000) == 4 * BLOCK, "an overdue prefix is re-keyed (now + idle), not dropped"
    assert _cached_tokens(scheduler, 2000) == BLOCK, "the far prediction goes next, tail first"
    leaf = pool.cached_block_hash_to_block.get_one_block(_block_key(1000, 3))
    assert pool._order.rekeys >= 1
    assert pool._order.prediction(leaf.block_id)[0] == 30.0 + 30.0, "re-keyed to now + idle time (freed at 0)"


def _block_key(start: int, index: int) -> bytes:
    probe = make_request("k", range(start, start + 4 * BLOCK + 1), BLOCK)
    return probe.block_hashes[index] + (0).to_bytes(4, "big", signed=False)


def test_shared_parent_keeps_the_soonest_reuse_of_its_branches() -> None:
    """A system prompt shared by two branches keeps the sooner branch's key after both are gone.

    Branch x (expired at once, but predicted back in 50 s) is released while branch y still
    holds the shared prefix; y (back in 5000 s) is released last. After both branches are
    evicted the prefix must rank by x's 50 s, ahead of chain W (70 s): W goes, the prefix stays.
    """
    clock = Clock()
    table = {"x": (50.0, 0.0), "y": (5000.0, 1e4), "w": (70.0, 1e4)}
    scheduler = _scored_scheduler(ByRequest(table), clock, 16)
    system = list(range(2 * BLOCK))
    scheduler.add_request(make_request("x", system + list(range(100, 100 + 2 * BLOCK)), BLOCK, max_tokens=2))
    scheduler.add_request(make_request("y", system + list(range(200, 200 + 2 * BLOCK)), BLOCK, max_tokens=4))
    run_to_completion(scheduler)
    _finish(scheduler, "w", range(300, 300 + 2 * BLOCK))
    # cached: system 2 + x 2 + y 2 + w 2 = 8; unhashed free: 7
    _hold(scheduler, "pressure", 7 + 6)
    probe = make_request("p", system + [1], BLOCK)
    _, hit, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(probe.block_hashes, probe.num_tokens - 1)
    assert hit == 2 * BLOCK, "the shared prefix must rank by its sooner branch (50 s), ahead of W (70 s)"
    assert _cached_tokens(scheduler, 300) == 0


def test_preempted_request_is_held_without_asking_the_predictor() -> None:
    clock = Clock()
    clock.now = 7.0
    scheduler = _scored_scheduler(ByRequest({}), clock, 16)
    pool = scheduler.kv_cache_manager.block_pool
    req = make_request("pre", range(4 * BLOCK), BLOCK, max_tokens=50)
    scheduler.add_request(req)
    step(scheduler)
    blocks = list(scheduler.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks[req.request_id])
    scheduler.kv_cache_manager.free(req)  # what Scheduler._preempt_request does, status still RUNNING
    assert pool.stats.held == 1 and pool.stats.predictions == 0 and pool.stats.released == 1
    assert pool._order.prediction(blocks[0].block_id) == (7.0, 7.0 + pool.config.max_idle_s)
