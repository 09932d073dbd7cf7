"""pytest plugin (``-p cachewise_cpu_policy_plugin``): vLLM's CPU-tier ``"lru"`` policy is CacheWise's.

Used to run vLLM's own offloading tests unedited against
:class:`cachewise.runtime.cpu_policy.CacheWiseCachePolicy`: vLLM's ``CachePolicyFactory``
resolves the name ``"lru"`` (the default of every ``CPUOffloadingManager`` those tests
build) to the CacheWise class, through vLLM's own out-of-tree path
(``get_cache_policy_cls(POLICY_NAME, MODULE_PATH)``, i.e. ``cache_policy_module_path``).
``CACHEWISE_UPSTREAM_MODE`` picks what the policy sees:

* ``fallback`` (default): no session view attached: vLLM's LRU order, counted as fallbacks;
* ``random:<seed>``: a real :class:`~cachewise.runtime.sessions.SessionView` attached in
  which every request the tests make is put, on first sight, in one of four sessions that is
  idle with a seeded random return forecast (or none, 1 time in 5): chunks are evicted in
  predicted order, an order unrelated to vLLM's LRU.

At the end it writes, to the JSON file named by ``CACHEWISE_UPSTREAM_REPORT``, how many
CacheWise policies were built and what they counted, so the caller can check it was in the path.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

from cachewise.runtime import cpu_policy
from cachewise.runtime.sessions import FORECAST_LEVELS, Forecast, SessionView

_built: list[cpu_policy.CacheWiseCachePolicy] = []
_original_registry: dict = {}


class RandomSessions(SessionView):
    """A session view that files every unknown request, on first sight, under a random idle session."""

    def __init__(self, seed: int) -> None:
        super().__init__(block_size=16)
        self._rng = random.Random(seed)
        self.now = 0.0

    def session_of(self, request_id: str) -> str | None:
        rng = self._rng
        key = f"s{rng.randrange(4)}"
        rid = f"{request_id}#{rng.random()}"
        self.on_arrival(rid, key, None, 16, self.now)
        forecast = None
        if rng.random() >= 0.2:
            base = rng.uniform(0.1, 100.0)
            forecast = Forecast(tuple(base * (1 + i) for i in range(len(FORECAST_LEVELS))))
        self.on_forecast(rid, key, key, forecast)
        self.on_finished(rid, 16, (), self.now)
        return key


def _loader(mode: str):
    kind, _, arg = mode.partition(":")
    if kind not in ("fallback", "random"):
        raise ValueError(f"CACHEWISE_UPSTREAM_MODE: unknown mode {mode!r} (fallback | random:<seed>)")
    seeds = iter(range(int(arg or 0), 1 << 30))

    class Tracked(cpu_policy.CacheWiseCachePolicy):
        def __init__(self, cache_capacity: int) -> None:
            super().__init__(cache_capacity)
            _built.append(self)
            if kind == "random":
                self.attach(RandomSessions(next(seeds)), lambda: 1.0)

    def load() -> type:
        cls = CachePolicyFactory.get_cache_policy_cls(cpu_policy.POLICY_NAME, cpu_policy.MODULE_PATH)
        assert cls is cpu_policy.CacheWiseCachePolicy, cls
        return Tracked

    return load


def pytest_configure(config: pytest.Config) -> None:
    _original_registry.update(CachePolicyFactory._registry)
    CachePolicyFactory._registry["lru"] = _loader(os.environ.get("CACHEWISE_UPSTREAM_MODE", "fallback"))


def pytest_unconfigure(config: pytest.Config) -> None:
    CachePolicyFactory._registry.clear()
    CachePolicyFactory._registry.update(_original_registry)
    path = os.environ.get("CACHEWISE_UPSTREAM_REPORT")
    if path:
        report = {
            "policies": len(_built),
            "attached": sum(p.view is not None for p in _built),
            "predicted_evictions": sum(p.stats.predicted_evictions for p in _built),
            "lru_evictions": sum(p.stats.lru_evictions for p in _built),
            "fallbacks": {k: sum(p.stats.fallbacks[k] for p in _built) for k in ("no_view", "no_prediction", "error")},
        }
        with open(path, "w") as fh:
            json.dump(report, fh)
