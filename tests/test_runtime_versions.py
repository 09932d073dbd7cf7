"""Never crash on a vLLM version: untested versions and construction failures leave vLLM's classes.

The real vLLM 0.32 (vLLM's CPU build) is exercised by the live test (tests/test_live_server.py);
here the failure modes are simulated on the installed vLLM: an unknown version, CacheWise's
pool failing to build (vLLM 0.32's real crash, ``BlockPool.__init__`` refusing
``num_hash_lookahead_tokens``), and hooks that cannot be installed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from vllm.v1.core.block_pool import BlockPool

import cachewise.runtime.hooks as hooks
import cachewise.runtime.plugin as plugin
from cachewise.runtime.block_pool import ScoredBlockPool
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion
from cachewise.runtime.vllm_compat import bound_argument, series_of, untested_reason

SETTINGS = {"cachewise": {"mode": "fallback"}}


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """CacheWise's warnings during the test."""
    records: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler, logger = Handler(), logging.getLogger("vllm.cachewise")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    plugin.register()


def _incompatible() -> float:
    return REGISTRY.get_sample_value("cachewise_fallbacks_total", {"reason": "incompatible"}) or 0.0


def _serves(scheduler) -> None:
    """The engine still serves: a request runs to completion and its blocks come back."""
    free = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    scheduler.add_request(make_request("r0", range(40), 16, 3))
    assert len(run_to_completion(scheduler)) == 1
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == free


@pytest.mark.parametrize(
    ("version", "tested"),
    [("0.33.0", True), ("0.32.0", True), ("0.32.1+cpu", True), ("0.33.0rc1", True), ("0.34.0", False), ("0.3.2", False), ("unknown", False)],
)
def test_tested_series(version: str, tested: bool) -> None:
    assert (untested_reason(version) is None) is tested
    if not tested:
        assert version in untested_reason(version)


def test_series_of_strips_local_and_patch_parts() -> None:
    assert series_of("0.32.0+cpu") == "0.32" and series_of("1.0") == "1.0"


def test_bound_argument_finds_keyword_and_positional() -> None:
    def init(self, vllm_config, kv_cache_config, *, log_stats=False):  # noqa: ANN001, ANN202
        return None

    assert bound_argument(init, "vllm_config", "s", "v", "k") == "v"
    assert bound_argument(init, "vllm_config", "s", kv_cache_config="k", vllm_config="v") == "v"
    assert bound_argument(init, "missing", "s", "v", "k") is None


def _raise(exc: Exception):  # noqa: ANN202
    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise exc

    return fail


INJECTED = {
    # vLLM reports a version outside the tested series.
    "unknown-version": (plugin, "untested_reason", lambda: "vLLM 0.99.0 is not a version CacheWise was tested on", "0.99.0"),
    # vLLM 0.32's real start-up crash, from inside ScoredBlockPool's construction.
    "pool-construction": (
        ScoredBlockPool,
        "__init__",
        _raise(TypeError("BlockPool.__init__() got an unexpected keyword argument 'num_hash_lookahead_tokens'")),
        "num_hash_lookahead_tokens",
    ),
    # A vLLM without one of the methods the hooks wrap.
    "hooks": (hooks, "install_hooks", _raise(AttributeError("no attribute 'pop_blocks_for_free'")), "pop_blocks_for_free"),
}


@pytest.mark.parametrize("case", list(INJECTED))
def test_failures_keep_vllm_pool_with_one_warning_and_one_count(
    case: str, monkeypatch: pytest.MonkeyPatch, warnings_logged: list[str]
) -> None:
    owner, name, replacement, said = INJECTED[case]
    monkeypatch.setattr(owner, name, replacement)
    before = _incompatible()
    scheduler = make_scheduler(make_vllm_config(32, 16, additional_config=SETTINGS))
    assert type(scheduler.kv_cache_manager.block_pool) is BlockPool
    assert _incompatible() == before + 1
    assert len(warnings_logged) == 1 and said in warnings_logged[0] and "CacheWise inactive" in warnings_logged[0]
    _serves(scheduler)


def test_without_settings_nothing_is_counted_or_said(warnings_logged: list[str]) -> None:
    before = _incompatible()
    make_scheduler(make_vllm_config(32, 16))
    assert _incompatible() == before and warnings_logged == []


_UNKNOWN_VERSION_PROCESS = r"""
import json, logging, os
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
import vllm
vllm.__version__ = "0.99.0"   # as a future release would report itself
from vllm.v1.core.block_pool import BlockPool
import vllm.v1.core.kv_cache_coordinator as coordinator
from vllm.v1.core.kv_cache_manager import KVCacheManager
from prometheus_client import REGISTRY
from cachewise.runtime.plugin import register
from cachewise.runtime.cpu_engine import make_scheduler, make_vllm_config
warnings = []
class H(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())
logging.getLogger("vllm.cachewise").addHandler(H())
register(); register()
patched = coordinator.BlockPool is not BlockPool or hasattr(KVCacheManager.free, "_cachewise_hook")
scheduler = make_scheduler(make_vllm_config(32, 16, additional_config={"cachewise": {"mode": "fallback"}}))
print(json.dumps({
    "patched": patched,
    "pool": type(scheduler.kv_cache_manager.block_pool).__name__,
    "incompatible": REGISTRY.get_sample_value("cachewise_fallbacks_total", {"reason": "incompatible"}),
    "warnings": warnings,
}))
"""


def test_unknown_version_process_patches_nothing() -> None:
    """A fresh process on a vLLM reporting an untested version: nothing of vLLM's is replaced."""
    out = subprocess.run([sys.executable, "-c", _UNKNOWN_VERSION_PROCESS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["patched"] is False and result["pool"] == "BlockPool" and result["incompatible"] == 1.0
    assert len(result["warnings"]) == 1 and "vLLM 0.99.0" in result["warnings"][0]
