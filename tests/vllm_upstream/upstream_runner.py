"""Run some of vLLM's own test files (from the fetched sdist) in a subprocess, with or without a
CacheWise pytest plugin, and read back per-test outcomes and the plugin's JSON report.

Shared by ``test_vllm_prefix_caching.py`` (GPU block pool) and ``test_vllm_offload_policy.py``
(CPU-tier cache policy). Runs from the sdist root so vLLM's ``tests.*`` imports resolve, with
``--noconftest`` (vLLM's top-level ``tests/conftest.py`` needs its test-only dependencies) and
offline Hugging Face settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 3600


def outcomes(junit: Path) -> dict[str, str]:
    """``classname::name -> passed|failed|error|skipped`` from a JUnit XML report."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        result[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed"}.get(outcome, outcome)
    return result


def run_vllm_tests(
    root: Path, files: list[Path], out: Path, plugin: str | None, mode: str | None
) -> tuple[dict[str, str], dict]:
    """Outcomes of vLLM's ``files``, plain (``mode`` None) or with ``-p plugin`` in ``mode``
    (``CACHEWISE_UPSTREAM_MODE``), and the plugin's report ({} when plain)."""
    tag = "vllm" if mode is None else mode.partition(":")[0]
    junit = out / f"junit-{tag}.xml"
    cmd = [sys.executable, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider", "--noconftest",
           f"--junitxml={junit}"]
    # Offline: tests that need the Hugging Face Hub fail fast (they fail either way without network).
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    report = out / f"cachewise-report-{tag}.json"
    if mode is not None:
        assert plugin is not None
        cmd += ["-p", plugin]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["CACHEWISE_UPSTREAM_REPORT"] = str(report)
        env["CACHEWISE_UPSTREAM_MODE"] = mode
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if not junit.is_file():
        pytest.fail(f"pytest run produced no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return outcomes(junit), (json.loads(report.read_text()) if mode is not None else {})


def expected_differences(path: Path, mode: str) -> dict[str, str]:
    """Test name -> reason, of the entries of the YAML list ``path`` listing ``mode``."""
    entries = yaml.safe_load(path.read_text()) or []
    for e in entries:
        if not (isinstance(e, dict) and e.get("test") and e.get("reason") and e.get("modes")):
            raise AssertionError(f"{path}: every entry needs test, modes and reason: {e!r}")
    return {e["test"]: e["reason"] for e in entries if mode in e["modes"]}


def compare(baseline: dict[str, str], with_cw: dict[str, str], expected: dict[str, str], path: Path) -> tuple[int, int, int]:
    """Fails on a baseline-passing test that does not pass with CacheWise unless ``expected``
    lists it, and on a listed test that passes (strict); returns (passed, baseline_passed, expected_differences)."""
    passed = sorted(t for t, o in baseline.items() if o == "passed")
    name = {t: t.rpartition("::")[2] for t in passed}
    differ = {t: with_cw.get(t, "missing") for t in passed if with_cw.get(t) != "passed"}
    unexpected = {t: o for t, o in differ.items() if name[t] not in expected}
    stale = sorted(n for n in expected if any(name[t] == n and t not in differ for t in passed))
    assert not unexpected, f"tests that pass on plain vLLM but not with CacheWise (not expected): {unexpected}"
    assert not stale, f"listed in {path.name} as expected differences but passed: {stale}"
    return len(passed) - len(differ), len(passed), len(differ)
