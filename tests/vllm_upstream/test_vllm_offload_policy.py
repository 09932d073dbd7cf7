"""vLLM 0.33.0's own CPU-tier cache-policy tests, unedited, run against CacheWise's policy.

The files (``tests/v1/kv_offload/cpu/policies/test_factory.py``: the ``CachePolicy`` interface
and its out-of-tree loading; ``tests/v1/kv_offload/cpu/test_manager.py``: the
``CPUOffloadingManager`` driving a policy through stores, loads, pins, evictions, resets)
come from vLLM's sdist as the prefix-caching tests do (``fetch_vllm_tests.py``; skipped with
a message where it cannot be fetched) and run in subprocesses:

* plain vLLM (baseline);
* with ``-p cachewise_cpu_policy_plugin`` in ``fallback`` mode (the name ``"lru"`` resolves,
  through vLLM's ``cache_policy_module_path`` loading, to
  :class:`cachewise.runtime.cpu_policy.CacheWiseCachePolicy` with no session view) and in
  ``random`` mode (a session view with random forecasts attached: predicted eviction order).

Every baseline-passing test must pass except the reviewed entries of
``expected_differences_offload.yaml`` (strict: a listed test that passes fails the run).
Prints ``upstream[offload:<mode>]: passed=K baseline_passed=N expected_differences=D ...``.
Select with ``pytest tests/vllm_upstream -k offload``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

FILES = [Path("tests/v1/kv_offload/cpu/policies/test_factory.py"), Path("tests/v1/kv_offload/cpu/test_manager.py")]
EXPECTED = Path(__file__).resolve().parent / "expected_differences_offload.yaml"
PLUGIN = "cachewise_cpu_policy_plugin"


@pytest.fixture(scope="module")
def offload_tests_root(vllm_tests_root: Path, fetch) -> Path:
    missing = [str(f) for f in FILES if not (vllm_tests_root / f).is_file()]
    assert not missing, f"vLLM {fetch.VLLM_VERSION} sdist has no {missing}"
    return vllm_tests_root


@pytest.fixture(scope="module")
def offload_baseline(offload_tests_root: Path, upstream, tmp_path_factory) -> dict[str, str]:
    outcomes, _ = upstream.run_vllm_tests(offload_tests_root, FILES, tmp_path_factory.mktemp("offload-vllm"), None, None)
    assert sum(o == "passed" for o in outcomes.values()) >= 50, f"too few vLLM offload tests passed on plain vLLM: {outcomes}"
    return outcomes


@pytest.mark.parametrize("mode", ["fallback", "random:0"])
def test_vllm_offload_tests_with_cachewise_cpu_policy(
    offload_tests_root: Path, offload_baseline: dict[str, str], upstream, mode: str, tmp_path: Path
) -> None:
    with_cw, report = upstream.run_vllm_tests(offload_tests_root, FILES, tmp_path, PLUGIN, mode)
    kind = mode.partition(":")[0]
    ok, n_passed, n_differ = upstream.compare(offload_baseline, with_cw, upstream.expected_differences(EXPECTED, kind), EXPECTED)
    print(f"\nupstream[offload:{kind}]: passed={ok} baseline_passed={n_passed} expected_differences={n_differ}"
          f" policies={report['policies']} predicted_evictions={report['predicted_evictions']}"
          f" lru_evictions={report['lru_evictions']} fallbacks={report['fallbacks']}")
    assert report["policies"] > 0, report
    assert report["fallbacks"]["error"] == 0, report
    if kind == "fallback":
        assert report["attached"] == 0 and report["predicted_evictions"] == 0 and report["lru_evictions"] > 0, report
    else:
        assert report["attached"] == report["policies"] and report["predicted_evictions"] > 0, report
