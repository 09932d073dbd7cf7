"""The replay's settings: the ``replay:`` section of params.yaml, overridden by CLI flags.

Every key has a default here, so a missing section or key falls back to it; an unknown
key, or a value of the wrong type, raises :class:`ReplayConfigError` naming it (a typo must
not silently change a benchmark). ``engine.max_num_batched_tokens`` is one real step's budget in
*trace* tokens; a replay step stands for ``workload.token_scale`` real steps (one replay token
per decoding request), so the engine takes the same number as its budget in *replay* tokens
(:mod:`cachewise.replay.costmodel`); ``engine.block_size`` is in *replay* tokens, so a block stands for ``block_size x token_scale`` trace tokens (256 by default; the
benchmark ``tests/benchmarks/bench_replay.py --block-check`` compares against token_scale 1).
``residency`` holds the residency controller's settings
(:class:`~cachewise.runtime.config.ResidencySettings`, the served ``cachewise.residency``) but
for its cost coefficients, which the replay sets from its measured models (naming one is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from cachewise.runtime.config import GUARD_STARTS, GuardConfig, ResidencySettings
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.engine import EngineParams
from cachewise.replay import host_tier_policies  # noqa: F401 - registers vllm_offload, cachewise_offload, ...
from cachewise.replay.policies import known_policies
from cachewise.replay.residency_policies import register_caps
from cachewise.replay.workload import WorkloadParams

SECTION = "replay"
DEFAULT_POLICIES = (
    "lru", "lru_arrival", "per_tool_mean", "ttl", "heuristic", "recorded_gap", "learned", "learned_nohints", "infinite"
)


class ReplayConfigError(ValueError):
    """The ``replay`` settings are malformed."""


@dataclass(frozen=True)
class EngineSettings:
    """vLLM scheduler shape (``replay.engine``): ``block_size`` in replay tokens, the rest in trace tokens."""

    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    def for_scale(self, token_scale: int) -> EngineParams:
        """The engine parameters in replay tokens: a replay step stands for ``token_scale`` real
        steps, so its budget of ``max_num_batched_tokens`` replay tokens is theirs in trace tokens."""
        return EngineParams(
            block_size=self.block_size, max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens
        )


@dataclass(frozen=True)
class SweepSettings:
    """The grid of ``--sweep`` (``replay.sweep``)."""

    capacity_fracs: tuple[float, ...] = (0.25, 0.5, 0.75)
    concurrency: tuple[int, ...] = (32,)


@dataclass(frozen=True)
class ReplayConfig:
    """All replay settings (see the module doc and ``cachewise replay --help``)."""

    events: str = "data/events.parquet"
    out: str = "data/replay"
    cost_coefficients: str = "replay/cost_coefficients.json"
    model_shape: str = "llama-3.1-8b-bf16"
    model: str | None = "models/cachewise-reuse"
    policies: tuple[str, ...] = DEFAULT_POLICIES
    split: str = "test"
    sources: tuple[str, ...] | None = None
    max_sessions: int | None = 48
    seed: int = 0
    seeds: int = 5
    workers: int = 1
    allow_train_tasks: bool = False
    capacity_frac: float = 0.5
    concurrency: int = 32
    arrival_rate: float | None = None
    ttl_quantile: float = 0.9
    scheduler_cls: str | None = None
    host_kv_frac: float = 2.0
    guard_start: str = GuardConfig.start  # the served default
    transfer_coefficients: str = "replay/transfer_coefficients.json"
    workload: WorkloadParams = field(default_factory=lambda: WorkloadParams(token_scale=16))
    engine: EngineSettings = field(default_factory=EngineSettings)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    residency: ResidencySettings = field(default_factory=ResidencySettings)

    def __post_init__(self) -> None:
        register_caps(self.policies)  # capN: a fixed admission cap of N sessions
        unknown = [p for p in self.policies if p not in known_policies()]
        if unknown:
            why = " (Belady's MIN is computed for every run: min_* columns)" if "belady" in unknown else ""
            raise ReplayConfigError(f"unknown policies {unknown}{why}; known: {', '.join(known_policies())}, capN")
        if self.split not in ("test", "all"):
            raise ReplayConfigError(f"split must be 'test' or 'all', got {self.split!r}")
        if self.workers < 1:
            raise ReplayConfigError(f"workers must be >= 1, got {self.workers}")
        if self.seeds < 1:
            raise ReplayConfigError(f"seeds must be >= 1, got {self.seeds}")
        if not 0 < self.ttl_quantile < 1:
            raise ReplayConfigError(f"ttl_quantile must be in (0, 1), got {self.ttl_quantile}")
        if self.scheduler_cls is not None:
            _check_scheduler_cls(self.scheduler_cls)
        if not self.host_kv_frac >= 0:
            raise ReplayConfigError(f"host_kv_frac must be >= 0, got {self.host_kv_frac}")
        if self.guard_start not in GUARD_STARTS:
            raise ReplayConfigError(f"guard_start must be one of {GUARD_STARTS}, got {self.guard_start!r}")

    def arrivals(self, concurrency: int | None = None) -> ArrivalParams:
        """The session overlay at ``concurrency`` (default: the configured one)."""
        return ArrivalParams(concurrency or self.concurrency, self.arrival_rate, self.seed)


def _check_scheduler_cls(name: str) -> None:
    """Raise :class:`ReplayConfigError` unless ``name`` is a vLLM ``Scheduler`` (sub)class's dotted name."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.core.sched.scheduler import Scheduler

    try:
        cls = resolve_obj_by_qualname(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ReplayConfigError(f"scheduler_cls: cannot import {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ReplayConfigError(f"scheduler_cls: {name!r} is not a subclass of vLLM's Scheduler")


_NESTED = {"workload": WorkloadParams, "engine": EngineSettings, "sweep": SweepSettings, "residency": ResidencySettings}
COST_MODEL_KEYS = frozenset({"prefill_a0", "prefill_a_tok", "prefill_a_ctx", "host_reload_s_per_token"})
"""``replay.residency`` keys the replay sets itself from its measured cost and transfer models."""
_TUPLES = {"policies", "capacity_fracs", "concurrency", "sources"}


def _values(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """``raw`` checked against the fields of ``cls`` (lists of tuple fields become tuples)."""
    if not isinstance(raw, dict):
        raise ReplayConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ReplayConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in raw.items()}
    hints = get_type_hints(cls)
    for key, value in values.items():
        if key in _NESTED and cls is ReplayConfig:
            continue
        hint = hints[key]
        options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
        allowed = tuple(get_origin(t) or t for t in options)
        if float in allowed:
            allowed += (int,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ReplayConfigError(f"{where}.{key}: {value!r} is not of type {hints[key]}")
    return values


def _replace(obj: Any, values: dict[str, Any], where: str) -> Any:
    try:
        return replace(obj, **values)
    except (TypeError, ValueError) as exc:
        raise ReplayConfigError(f"{where}: {exc}") from exc


def load_config(params_path: str | Path | None, overrides: dict[str, Any]) -> ReplayConfig:
    """Settings from ``params_path`` (its ``replay:`` section; absent file or section = defaults),
    with ``overrides`` (non-None CLI values, by field name) applied on top."""
    raw: dict[str, Any] = {}
    if params_path is not None and Path(params_path).exists():
        try:
            doc = yaml.safe_load(Path(params_path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ReplayConfigError(f"{params_path}: not valid YAML: {exc}") from exc
        raw = dict(doc.get(SECTION) or {})
    where = f"{params_path}:{SECTION}"
    values = _values(ReplayConfig, raw, where)
    defaults = ReplayConfig()
    for key, cls in _NESTED.items():
        if key in values:
            if key == "residency" and isinstance(values[key], dict) and COST_MODEL_KEYS & set(values[key]):
                raise ReplayConfigError(
                    f"{where}.residency: {sorted(COST_MODEL_KEYS & set(values[key]))} come from the replay's "
                    "cost_coefficients / transfer_coefficients, not from this section"
                )
            values[key] = _replace(
                getattr(defaults, key), _values(cls, values[key], f"{where}.{key}"), f"{where}.{key}"
            )
    config = _replace(defaults, values, where)
    workload_keys = {f.name for f in fields(WorkloadParams)}
    given = {k: v for k, v in overrides.items() if v is not None}
    nested = {k: v for k, v in given.items() if k in workload_keys}
    flat = {k: v for k, v in given.items() if k not in workload_keys}
    if nested:
        flat["workload"] = _replace(config.workload, nested, "command line")
    return _replace(config, flat, "command line")
