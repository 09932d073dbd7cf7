"""vLLM 0.33.0's own ``tests/v1/core/test_prefix_caching.py``, unedited, with CacheWise active.

The file comes from vLLM's sdist at test time (``fetch_vllm_tests.py``; skipped with a
message where it cannot be fetched) and is run twice in subprocesses, from the sdist root
so its ``tests.*`` imports resolve:

* plain vLLM;
* with ``-p cachewise_fallback_plugin``: CacheWise's hooks installed and every KV-cache
  manager built on a ``ScoredBlockPool`` in fallback mode.

Every test that passes without CacheWise must pass with it, and the plugin must have been
in the path (scored pools built, requests released through the hook, no hook errors).
vLLM's top-level ``tests/conftest.py`` needs vLLM's test-only dependencies (tblib, ...), so
both runs use ``--noconftest``; ``test_prefix_caching.py`` uses no fixture from it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("cachewise_fetch_vllm_tests", HERE / "fetch_vllm_tests.py")
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)

pytestmark = pytest.mark.vllm
RUN_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def vllm_tests_root() -> Path:
    try:
        return fetch.ensure_vllm_tests()
    except fetch.FetchError as exc:
        pytest.skip(f"vLLM {fetch.VLLM_VERSION} sdist tests unavailable: {exc}")


def _outcomes(junit: Path) -> dict[str, str]:
    """``classname::name -> passed|failed|error|skipped`` from a JUnit XML report."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        result[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed"}.get(outcome, outcome)
    return result


def _run(root: Path, out: Path, with_cachewise: bool) -> dict[str, str]:
    junit = out / f"junit-{'cachewise' if with_cachewise else 'vllm'}.xml"
    cmd = [sys.executable, "-m", "pytest", str(fetch.TEST_FILE), "-q", "-p", "no:cacheprovider", "--noconftest",
           f"--junitxml={junit}"]
    # Offline: tests that need the Hugging Face Hub fail fast (they fail either way without network).
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if with_cachewise:
        cmd += ["-p", "cachewise_fallback_plugin"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["CACHEWISE_UPSTREAM_REPORT"] = str(out / "cachewise-report.json")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if not junit.is_file():
        pytest.fail(f"pytest run produced no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return _outcomes(junit)


def test_vllm_prefix_caching_passes_with_cachewise_fallback(vllm_tests_root: Path, tmp_path: Path) -> None:
    baseline = _run(vllm_tests_root, tmp_path, with_cachewise=False)
    with_cw = _run(vllm_tests_root, tmp_path, with_cachewise=True)
    passed = sorted(t for t, o in baseline.items() if o == "passed")
    assert passed, f"no vLLM test passed even without CacheWise: {baseline}"
    broken = {t: with_cw.get(t, "missing") for t in passed if with_cw.get(t) != "passed"}
    report = json.loads((tmp_path / "cachewise-report.json").read_text())
    print(f"vLLM tests passed: {len(passed)} of {len(baseline)} without CacheWise; "
          f"{sum(o == 'passed' for o in with_cw.values())} with CacheWise; plugin report {report}")
    assert not broken, f"tests that pass on plain vLLM but not with CacheWise: {broken}"
    assert report["scored_pools"] > 0 and report["released"] > 0, report
    assert report["active_pools"] == 0 and report["fallbacks"] == 0, report
