"""CacheWise's runtime settings: the ``"cachewise"`` entry of vLLM's ``--additional-config``.

Example::

    vllm serve MODEL --additional-config '{"cachewise": {
        "model": "models:/cachewise-reuse@champion", "mode": "learned",
        "tool_parser": "hermes", "max_idle_s": 1800}}'

Every key is optional except ``model`` in ``learned`` mode. Unknown keys and wrong types
raise :class:`ConfigError` naming the key; the plugin turns that into a fallback to vLLM's
order with one warning (a typo must not take the server down, but must be visible).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

CONFIG_KEY = "cachewise"
MODES = ("learned", "fallback")


class ConfigError(ValueError):
    """The ``cachewise`` settings are malformed."""


@dataclass(frozen=True)
class PoolConfig:
    """Settings of one :class:`~cachewise.runtime.block_pool.ScoredBlockPool`.

    ``max_idle_s``: cap on any prediction's ``expire_at - now`` (no prefix is immortal).
    ``harmful_window``: how many recently evicted block hashes are remembered to count
    harmful evictions (None: the pool's number of blocks).
    ``max_consecutive_failures``: after this many predictor failures in a row the pool
    switches to vLLM's order for good (one warning).
    ``log_interval_s``: seconds (wall clock) between stat log lines; 0 disables them.
    """

    max_idle_s: float = 3600.0
    harmful_window: int | None = None
    max_consecutive_failures: int = 64
    log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.max_idle_s > 0):
            raise ConfigError(f"max_idle_s must be > 0, got {self.max_idle_s}")
        if self.harmful_window is not None and self.harmful_window < 0:
            raise ConfigError(f"harmful_window must be >= 0, got {self.harmful_window}")
        if self.max_consecutive_failures < 1:
            raise ConfigError("max_consecutive_failures must be >= 1")
        if not (self.log_interval_s >= 0) or math.isinf(self.log_interval_s):
            raise ConfigError(f"log_interval_s must be a finite number >= 0, got {self.log_interval_s}")


@dataclass(frozen=True)
class SchedulerSettings:
    """Bounds of :class:`~cachewise.runtime.scheduler.PrefixAwareScheduler`.

    ``lookahead``: how many waiting requests (from the queue head) are ranked per step.
    A request is *aged* (served in arrival order, ahead of every non-aged request) once it
    was passed over by a later arrival in ``max_passes`` steps or has waited ``max_wait_s``.
    """

    lookahead: int = 64
    max_passes: int = 8
    max_wait_s: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SchedulerSettings:
        """Parse ``cachewise.scheduler``; unknown keys and non-numbers raise :class:`ConfigError`."""
        return _numbers_section(cls, raw, "scheduler")

    def __post_init__(self) -> None:
        if self.lookahead < 1 or self.max_passes < 0 or not (self.max_wait_s >= 0):
            raise ConfigError(f"invalid scheduler settings {self}")


@dataclass(frozen=True)
class ResidencySettings:
    """Settings of the residency controller (``cachewise.residency``; :mod:`cachewise.runtime.residency`).

    ``headroom``: fraction of the KV cache kept free of resident working sets (admission
    budget = ``(1 - headroom) * blocks``). ``max_wait_s`` / ``max_passes``: starvation
    bound: a session held that long (seconds since its oldest waiting request arrived, or
    scheduler steps) is admitted regardless. ``horizon_s``: how far ahead the cost rule
    looks (a return later than that counts as "not back"). ``prefill_a0``, ``prefill_a_tok``,
    ``prefill_a_ctx``: prefill cost model ``a0 + a_tok n + a_ctx n^2 / 2`` (seconds, n
    tokens) of recomputing a dropped working set; defaults: Llama-3.1-8B on an H200
    (``runtime/replay/cost_coefficients.json``).
    """

    headroom: float = 0.1
    max_wait_s: float = 1800.0
    max_passes: int = 100000
    horizon_s: float = 600.0
    prefill_a0: float = 0.008534235488234275
    prefill_a_tok: float = 2.038725126120883e-05
    prefill_a_ctx: float = 1.4758954005404623e-09

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ResidencySettings:
        """Parse ``cachewise.residency``; unknown keys and non-numbers raise :class:`ConfigError`."""
        return _numbers_section(cls, raw, "residency")

    def __post_init__(self) -> None:
        if not (0 <= self.headroom < 1) or not (self.max_wait_s >= 0) or self.max_passes < 0 or not (self.horizon_s > 0):
            raise ConfigError(f"invalid residency settings {self}")
        if min(self.prefill_a0, self.prefill_a_tok, self.prefill_a_ctx) < 0:
            raise ConfigError("residency prefill cost coefficients must be >= 0")


@dataclass(frozen=True)
class CacheWiseSettings:
    """Everything under ``additional_config["cachewise"]``."""

    mode: str = "learned"
    model: str | None = None
    tool_parser: str = "auto"
    metrics_port: int | None = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    residency: ResidencySettings = field(default_factory=ResidencySettings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"cachewise.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "learned" and not self.model:
            raise ConfigError("cachewise.model is required in learned mode (a path or a models:/ URI)")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CacheWiseSettings:
        """Parse the ``cachewise`` dict; pool keys sit at top level, scheduler keys under ``scheduler``."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"additional_config.cachewise must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        pool_keys = {f.name for f in fields(PoolConfig)}
        own_keys = {"mode", "model", "tool_parser", "metrics_port", "scheduler", "residency"}
        unknown = set(raw) - pool_keys - own_keys
        if unknown:
            raise ConfigError(
                f"unknown cachewise keys {sorted(unknown)}; valid keys: {sorted(pool_keys | own_keys)}"
            )
        try:
            pool = PoolConfig(**{k: _typed(PoolConfig, k, raw.pop(k)) for k in pool_keys if k in raw})
            sched_raw = raw.pop("scheduler", None)
            scheduler = SchedulerSettings.from_mapping({} if sched_raw is None else sched_raw)
            residency_raw = raw.pop("residency", None)
            residency = ResidencySettings.from_mapping({} if residency_raw is None else residency_raw)
            port = raw.pop("metrics_port", None)
            return cls(
                mode=str(raw.pop("mode", "learned")),
                model=None if raw.get("model") is None else str(raw.pop("model")),
                tool_parser=str(raw.pop("tool_parser", "auto")),
                metrics_port=None if port is None else int(port),
                pool=pool,
                scheduler=scheduler,
                residency=residency,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cachewise settings: {exc}") from exc


def _numbers_section(cls: type, raw: Any, name: str) -> Any:
    """Dataclass ``cls`` from the numeric sub-mapping ``cachewise.<name>`` (unknown keys, non-numbers: ConfigError)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"cachewise.{name} must be a JSON object")
    known = {f.name for f in fields(cls)}
    if set(raw) - known:
        raise ConfigError(f"unknown cachewise.{name} keys {sorted(set(raw) - known)}; valid: {sorted(known)}")
    return cls(**{k: _typed(cls, k, v) for k, v in raw.items()})


def _typed(cls: type, key: str, value: Any) -> Any:
    """``value`` converted to the type of field ``key`` of dataclass ``cls`` (None kept)."""
    default = next(f.default for f in fields(cls) if f.name == key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"cachewise.{key} must be a number, got {value!r}")
    return float(value) if isinstance(default, float) else int(value)
