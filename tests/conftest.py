"""Shared test fixtures: where the real traces are, and a skip marker for when they are not."""

from __future__ import annotations

import os
from pathlib import Path

# vLLM's core must run on this CPU-only machine; set before anything imports vLLM.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = (REPO_ROOT / ".." / "shared" / "traces").resolve()

requires_shared_traces = pytest.mark.skipif(
    not SHARED_TRACES.is_dir(),
    reason=f"real traces not found at {SHARED_TRACES} (only present inside the CacheWise workplace)",
)


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """Path to ../shared/traces; tests using it are skipped where it is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"real traces not found at {SHARED_TRACES}")
    return SHARED_TRACES
