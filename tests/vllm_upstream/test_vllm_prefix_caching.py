"""vLLM 0.33.0's own ``tests/v1/core/test_prefix_caching.py``, unedited, with CacheWise active.

The file comes from vLLM's sdist at test time (``fetch_vllm_tests.py``: a cached copy, else
PyPI, a package registry CI may reach; skipped with a message where it cannot be fetched) and
is run in subprocesses, from the sdist root so its ``tests.*`` imports resolve:

* plain vLLM (the baseline, run once per session);
* with ``-p cachewise_fallback_plugin``: CacheWise's hooks installed and every KV-cache
  manager built on a ``ScoredBlockPool`` in fallback mode: every test that passes without
  CacheWise must pass with it;
* the same in *learned* mode, once with a real exported model (trained on the synthetic
  corpus by the pipeline's code) and once with a random predictor: every baseline-passing test
  must pass except the reviewed expected differences of ``expected_differences.yaml`` (tests
  whose assertion is vLLM's exact LRU victim), strictly: a listed test that passes is reported
  as a failure. It prints ``upstream[learned]: passed=K baseline_passed=N
  expected_differences=D active_pools=P`` per predictor.

The plugin must have been in the path (scored pools built, requests released through the
hook, no hook errors; in learned mode active pools).
vLLM's top-level ``tests/conftest.py`` needs vLLM's test-only dependencies (tblib, ...), so
both runs use ``--noconftest``; ``test_prefix_caching.py`` uses no fixture from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


EXPECTED = Path(__file__).resolve().parent / "expected_differences.yaml"


@pytest.fixture(scope="module")
def run(vllm_tests_root: Path, fetch, upstream):
    """``run(out, mode)``: outcomes of vLLM's test file, plain (``mode`` None) or with the plugin in ``mode``, and its report."""
    return lambda out, mode: upstream.run_vllm_tests(vllm_tests_root, [fetch.TEST_FILE], out, "cachewise_fallback_plugin", mode)


@pytest.fixture(scope="module")
def baseline(run, tmp_path_factory) -> dict[str, str]:
    """Outcomes on plain vLLM (shared by every mode)."""
    outcomes, _ = run(tmp_path_factory.mktemp("upstream-vllm"), None)
    assert any(o == "passed" for o in outcomes.values()), f"no vLLM test passed even without CacheWise: {outcomes}"
    return outcomes


def test_vllm_prefix_caching_passes_with_cachewise_fallback(run, baseline: dict[str, str], tmp_path: Path) -> None:
    with_cw, report = run(tmp_path, "fallback")
    passed = sorted(t for t, o in baseline.items() if o == "passed")
    broken = {t: with_cw.get(t, "missing") for t in passed if with_cw.get(t) != "passed"}
    print(f"vLLM tests passed: {len(passed)} of {len(baseline)} without CacheWise; "
          f"{sum(o == 'passed' for o in with_cw.values())} with CacheWise; plugin report {report}")
    assert not broken, f"tests that pass on plain vLLM but not with CacheWise: {broken}"
    assert report["scored_pools"] > 0 and report["released"] > 0, report
    assert report["active_pools"] == 0 and report["fallbacks"] == 0, report


@pytest.mark.parametrize("predictor", ["model", "random"])
def test_vllm_prefix_caching_with_learned_order(
    run, baseline: dict[str, str], upstream, synthetic_model: dict, predictor: str, tmp_path: Path
) -> None:
    mode = f"model:{synthetic_model['model']}" if predictor == "model" else "random:0"
    with_cw, report = run(tmp_path, mode)
    expected = upstream.expected_differences(EXPECTED, predictor)  # test name -> reason, entries listing this predictor
    ok, n_passed, n_differ = upstream.compare(baseline, with_cw, expected, EXPECTED)
    print(f"\nupstream[learned]: passed={ok} baseline_passed={n_passed} expected_differences={n_differ}"
          f" active_pools={report['active_pools']} (predictor={predictor}; plugin report {report})")
    assert report["active_pools"] > 0 and report["released"] > 0, report
    assert report["fallbacks"] == 0, report
