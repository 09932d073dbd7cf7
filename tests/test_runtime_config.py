"""The ``cachewise`` entry of vLLM's ``--additional-config``: parsing and its errors."""

from __future__ import annotations

import json

import pytest

from cachewise.runtime.config import CacheWiseSettings, ConfigError, PoolConfig, SchedulerSettings


def test_full_settings_parse() -> None:
    s = CacheWiseSettings.from_mapping(
        {"model": "models:/cachewise-reuse@champion", "tool_parser": "hermes", "max_idle_s": 900, "ghost_window": 10,
         "metrics_port": "9400", "scheduler": {"max_passes": 2, "max_wait_s": 5}}
    )
    assert s.mode == "learned" and s.model == "models:/cachewise-reuse@champion" and s.tool_parser == "hermes"
    assert s.pool == PoolConfig(max_idle_s=900.0, ghost_window=10) and s.metrics_port == 9400
    assert s.scheduler == SchedulerSettings(max_passes=2, max_wait_s=5.0)
    assert CacheWiseSettings.from_mapping({"mode": "fallback"}).model is None


def test_old_harmful_window_key_is_read_as_ghost_window_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="vllm.cachewise"):
        s = CacheWiseSettings.from_mapping({"model": "m", "harmful_window": 7})
    assert s.pool.ghost_window == 7
    assert [r.getMessage() for r in caplog.records] == [
        "CacheWise: additional-config key 'harmful_window' is deprecated; use 'ghost_window'"
    ]
    both = CacheWiseSettings.from_mapping({"model": "m", "harmful_window": 7, "ghost_window": 3})
    assert both.pool.ghost_window == 3  # the new name wins


def test_json_1e400_is_rejected_not_read_as_infinity() -> None:
    raw = json.loads('{"model": "m", "max_idle_s": 1e400}')
    with pytest.raises(ConfigError, match="max_idle_s"):
        CacheWiseSettings.from_mapping(raw)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"mode": "learned"}, "cachewise.model is required"),
        ({"mode": "lru", "model": "m"}, "mode must be one of"),
        ({"model": "m", "max_idle": 1}, "unknown cachewise keys ['max_idle']"),
        ({"model": "m", "max_idle_s": "long"}, "max_idle_s must be a finite number"),
        ({"model": "m", "max_idle_s": 0}, "max_idle_s must be a finite number > 0"),
        ({"model": "m", "max_idle_s": float("inf")}, "max_idle_s must be a finite number"),  # JSON 1e400
        ({"model": "m", "metrics_port": 99999}, "metrics_port must be 1..65535, got 99999"),
        ({"model": "m", "metrics_port": 0}, "metrics_port must be 1..65535"),
        ({"model": "m", "metrics_port": 80.5}, "metrics_port must be an integer"),
        ({"model": "m", "ghost_window": 1e400}, "ghost_window must be a finite number"),
        ({"model": "m", "harmful_window": -1}, "ghost_window must be >= 0"),  # the old name, checked as the new
        ({"model": "m", "registry_timeout_s": 0}, "registry_timeout_s must be a finite number > 0"),
        ({"model": "m", "scheduler": {"max_wait_s": float("inf")}}, "max_wait_s must be a finite number"),
        ({"model": "m", "scheduler": {"passes": 1}}, "unknown cachewise.scheduler keys ['passes']"),
        ({"model": "m", "scheduler": {"lookahead": 0}}, "invalid scheduler settings"),
        ({"model": "m", "scheduler": []}, "must be a JSON object"),
        ("learned", "must be a JSON object"),
    ],
)
def test_bad_settings_name_the_problem(raw, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CacheWiseSettings.from_mapping(raw)
