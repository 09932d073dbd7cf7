"""pytest plugin (``-p cachewise_fallback_plugin``): CacheWise active in fallback mode for a whole session.

Used to run vLLM's own tests unedited: the plugin's hooks are installed (as vLLM's plugin
loader would) and every KV-cache manager built during the session gets a
``ScoredBlockPool`` in fallback mode. At the end it writes, to the JSON file named by
``CACHEWISE_UPSTREAM_REPORT``, how many scored pools were built and what they counted, so
the caller can check the plugin was really in the path.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import pytest

from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.plugin import register

_pools: list[ScoredBlockPool] = []
_stack = ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    register()
    _stack.enter_context(use_policy(None, on_pool=_pools.append))


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()
    path = os.environ.get("CACHEWISE_UPSTREAM_REPORT")
    if path:
        report = {
            "scored_pools": len(_pools),
            "active_pools": sum(p.active for p in _pools),
            "released": sum(p.stats.released for p in _pools),
            "evictions": sum(p.stats.evictions for p in _pools),
            "fallbacks": sum(p.stats.total_fallbacks for p in _pools),
        }
        with open(path, "w") as fh:
            json.dump(report, fh)
