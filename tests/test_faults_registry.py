"""Fault injection on the model registry: a URL that refuses connections, one that accepts and
never answers, and a default store that does not exist — each bounded in time, with a
fallback (engine) or one error line (``score``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewise.cli import main
from cachewise.scoring.exported import ModelLoadError, load_exported

URI = "models:/cachewise-reuse@champion"


@pytest.fixture
def silent_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An HTTP 'registry' that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    yield url
    server.close()
    # A download given up after its budget runs on and, when it ends, puts MLflow's HTTP retry
    # budget (environment variables) back as it found it: let it end here, not during the next test.
    for thread in [t for t in threading.enumerate() if t.name == "cachewise-registry"]:
        thread.join(60)


def test_refused_connection_fails_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: refused
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot download from MLflow|did not answer"):
        load_exported(URI, registry_timeout_s=5)
    assert time.monotonic() - start < 10  # MLflow's own retries took 250 s


def test_a_registry_that_never_answers_is_given_up_after_the_timeout(silent_registry: str) -> None:
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="did not answer within 2 s|cannot download"):
        load_exported(URI, registry_timeout_s=2)
    assert time.monotonic() - start < 6


def test_missing_default_store_is_an_error_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=f"no MLflow registry at {tmp_path / 'mlflow.db'}"):
        load_exported(URI)
    assert not list(tmp_path.iterdir())


@pytest.mark.vllm
def test_engine_start_with_a_silent_registry_is_bounded_and_falls_back(silent_registry: str, caplog) -> None:
    from cachewise.runtime.cpu_engine import make_scheduler, make_vllm_config
    from cachewise.runtime.plugin import register

    register()
    config = make_vllm_config(24, 16, additional_config={"cachewise": {"model": URI, "registry_timeout_s": 2}})
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vllm.cachewise"):
        scheduler = make_scheduler(config)
    assert time.monotonic() - start < 20  # was 256 s with MLflow's default retries
    assert not scheduler.kv_cache_manager.block_pool.active
    warnings = [r.getMessage() for r in caplog.records if r.name == "vllm.cachewise"]
    assert len(warnings) == 1 and "did not answer within 2 s" in warnings[0] and "default eviction order" in warnings[0]


def test_score_with_a_refusing_registry_exits_2_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.monotonic()
    assert main(["score", "--traces", str(tmp_path), "--model", URI, "--registry-timeout", "3"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("score: error:") and URI in err[0]


@pytest.mark.vllm
def test_out_of_range_metrics_port_never_stops_the_scheduler(caplog, tmp_path: Path) -> None:
    from cachewise.runtime.cpu_engine import make_scheduler, make_vllm_config
    from cachewise.runtime.plugin import register

    register()
    with caplog.at_level(logging.WARNING, logger="vllm.cachewise"):
        scheduler = make_scheduler(
            make_vllm_config(24, 16, additional_config={"cachewise": {"mode": "fallback", "metrics_port": 99999}})
        )
    assert scheduler.kv_cache_manager.block_pool is not None
    warnings = [r.getMessage() for r in caplog.records if r.name == "vllm.cachewise"]
    assert len(warnings) == 1 and "metrics_port must be 1..65535, got 99999" in warnings[0]
