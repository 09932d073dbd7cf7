"""Fixtures shared by the runs of vLLM's own tests: the sdist's test tree and the runner.

pytest imports test files with ``--import-mode=importlib``, so a test file cannot import its
sibling helper modules; this conftest loads ``fetch_vllm_tests.py`` and ``upstream_runner.py``
once and hands them to the tests as fixtures.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cachewise_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fetch = _load("fetch_vllm_tests")
_runner = _load("upstream_runner")


@pytest.fixture(scope="session")
def fetch() -> ModuleType:
    """``fetch_vllm_tests``: the vLLM version, the prefix-caching test file's path, the fetcher."""
    return _fetch


@pytest.fixture(scope="session")
def upstream() -> ModuleType:
    """``upstream_runner``: runs vLLM test files in a subprocess, reads and compares their outcomes."""
    return _runner


@pytest.fixture(scope="session")
def vllm_tests_root() -> Path:
    """The sdist's root with its ``tests/`` tree; where it cannot be fetched the test is skipped, with
    the reason, except in CI (``CI=true``, which reaches the package registries): there it fails."""
    try:
        return _fetch.ensure_vllm_tests()
    except _fetch.FetchError as exc:
        message = f"vLLM {_fetch.VLLM_VERSION} sdist tests unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
