"""pytest plugin (``-p cachewise_fallback_plugin``): CacheWise active for a whole session.

Used to run vLLM's own tests unedited: the plugin's hooks are installed (as vLLM's plugin
loader would) and every KV-cache manager built during the session gets a ``ScoredBlockPool``.
``CACHEWISE_UPSTREAM_MODE`` picks its mode:

* ``fallback`` (default): no predictor, vLLM's order (CacheWise metrics on);
* ``model:<dir>``: *learned* mode with the exported model in ``<dir>``, through the same
  :class:`~cachewise.runtime.learned.LearnedPredictor` and call builder a served engine uses
  (no tokenizer: no parsed tool calls; vLLM's tests send none);
* ``random:<seed>``: *learned* mode with a predictor that answers random (seeded) reuse and
  expiry times, or no opinion, for every request: an order unrelated to vLLM's LRU.

In the learned modes the online guard (:mod:`cachewise.runtime.guard`) is off: it starts in
vLLM's order and would keep it through these short tests, and the point is to run vLLM's
tests against the learned order itself.

At the end it writes, to the JSON file named by ``CACHEWISE_UPSTREAM_REPORT``, how many
scored pools were built, how many were active (learned mode) and what they counted, so the
caller can check the plugin was really in the path.
"""

from __future__ import annotations

import json
import os
import random
from contextlib import ExitStack

import pytest

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.config import GuardConfig, PoolConfig
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.plugin import register
from cachewise.runtime.policy import ReusePrediction, ReusePredictor

_pools: list[ScoredBlockPool] = []
_stack = ExitStack()


class RandomPredictor:
    """Seeded random predictions: no opinion 1 time in 5, else reuse in 0-20 s, expiry in 0-200 s."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def on_request_finished(self, request, now: float) -> ReusePrediction | None:
        if self._rng.random() < 0.2:
            return None
        return ReusePrediction(now + self._rng.uniform(0, 20), now + self._rng.uniform(0, 200))


def predictor_for(mode: str) -> ReusePredictor | None:
    """The predictor of ``CACHEWISE_UPSTREAM_MODE`` (module doc); raises ``ValueError`` on a bad mode."""
    kind, _, arg = mode.partition(":")
    if kind == "fallback":
        return None
    if kind == "random":
        return RandomPredictor(int(arg or 0))
    if kind == "model":
        from cachewise.runtime.learned import LearnedPredictor
        from cachewise.runtime.request_calls import CallBuilder
        from cachewise.runtime.tool_calls import get_parser
        from cachewise.scoring.exported import load_exported

        calls = CallBuilder(model="upstream-test", hash_block_size=16, parser=get_parser("none"), tokenizer=None)
        return LearnedPredictor(load_exported(arg), calls)
    raise ValueError(f"CACHEWISE_UPSTREAM_MODE: unknown mode {mode!r} (fallback | model:<dir> | random:<seed>)")


def pytest_configure(config: pytest.Config) -> None:
    register()
    predictor = predictor_for(os.environ.get("CACHEWISE_UPSTREAM_MODE", "fallback"))
    config = PoolConfig(guard=GuardConfig(enabled=False))
    _stack.enter_context(use_policy(predictor, on_pool=_pools.append, config=config))


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()
    path = os.environ.get("CACHEWISE_UPSTREAM_REPORT")
    if path:
        report = {
            "scored_pools": len(_pools),
            "active_pools": sum(p.active for p in _pools),
            "released": sum(p.stats.released for p in _pools),
            "evictions": sum(p.stats.evictions for p in _pools),
            "predictions": sum(p.stats.predictions for p in _pools),
            "fallbacks": sum(p.stats.total_fallbacks for p in _pools),
        }
        with open(path, "w") as fh:
            json.dump(report, fh)
