"""The runtime benchmark's ``--ops`` count (README "Never worse than vLLM: the online guard", its cost
bullet) repeats and sees the scored pool's extra work: the same count twice (to 0.1%: the scorer-latency
histogram's bucket search depends on the measured time), more operations than vLLM's pool."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import init_none_hash

BENCH = Path(__file__).parent / "benchmarks" / "bench_runtime.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_runtime", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_counts_are_deterministic_and_see_the_scored_pools_work() -> None:
    init_none_hash(sha256)
    bench = _bench()
    vllm = bench.count_ops("vllm", 2048, 64, 32, requests=4, batches=8)
    scored = bench.count_ops("scored", 2048, 64, 32, requests=4, batches=8)
    again = bench.count_ops("scored", 2048, 64, 32, requests=4, batches=8)
    assert again == pytest.approx(scored, rel=1e-3)
    assert vllm["evict_ops"] > 0 and vllm["release_ops"] > 0
    assert scored["evict_ops"] > vllm["evict_ops"] and scored["release_ops"] > vllm["release_ops"]
    assert scored["evict_calls"] > vllm["evict_calls"]
