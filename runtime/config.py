"""CacheWise's runtime settings: the ``"cachewise"`` entry of vLLM's ``--additional-config``.

Example::

    vllm serve MODEL --additional-config '{"cachewise": {
        "model": "models:/cachewise-reuse@champion", "mode": "learned",
        "tool_parser": "hermes", "max_idle_s": 1800}}'

Every key is optional except ``model`` in ``learned`` mode. Unknown keys, wrong types,
non-finite numbers (JSON ``1e400`` parses as infinity) and out-of-range values (a
``metrics_port`` outside 1..65535) raise :class:`ConfigError` naming the key; the plugin turns that into a fallback to vLLM's
order with one warning (a typo must not take the server down, but must be visible).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cachewise.runtime.memory_shortage import THRASH_SHARE

CONFIG_KEY = "cachewise"
DEPRECATED_KEYS = {"harmful_window": "ghost_window"}
"""Old top-level key -> its new name: still read (the new name wins when both are given), with one warning."""
logger = logging.getLogger("vllm.cachewise")
MODES = ("learned", "fallback")
GUARD_STARTS = ("certified", "lru", "learned")
MAX_PORT = 65535


class ConfigError(ValueError):
    """The ``cachewise`` settings are malformed."""


@dataclass(frozen=True)
class GuardConfig:
    """The online guard (:mod:`cachewise.runtime.guard`): ``cachewise.guard`` in the settings.

    ``enabled``: compare the learned order with vLLM's LRU while serving and serve LRU while
    the learned order is measurably worse (on by default).
    ``sample_rate``: fraction of the block-hash space simulated under both orders, raised to
    ``min_sampled_blocks / num_blocks`` (at most 1) for small pools.
    ``half_life``: window of the hit-rate estimates, in sampled block accesses.
    ``margin``: hit-rate difference (fraction, 0.005 = 0.5 points) that makes it switch.
    ``z``: standard errors of the estimated difference required beyond ``margin`` to switch.
    ``min_accesses``: sampled accesses before the first switch (a floor under the estimate).
    ``min_dwell``: sampled accesses served in vLLM's order after a switch before the learned
    order may serve again (leaving the learned order is never delayed).
    ``start``: the order served until the estimates say otherwise: ``certified`` (the default:
    vLLM's, except that the learned order serves from the first access while every request so
    far declared a traffic family the model's traffic certificate names; the guard module's
    "Certified traffic"), ``lru`` (vLLM's; the learned order must first be measured better) or
    ``learned``.
    ``family``: the traffic family of a request whose client names none (hint ``family``), e.g.
    ``claude_code`` on a server that only agents of that family use (None: undeclared).
    ``preview_frac``: size of the *preview* cache, as a fraction of the pool's blocks: the same
    sampled stream simulated under both orders in a cache that small is under pressure long
    before the pool, and may give the learned order its first entry (0: no preview).
    """

    enabled: bool = True
    start: str = "certified"
    sample_rate: float = 0.0625
    min_sampled_blocks: int = 1024
    half_life: int = 4096
    margin: float = 0.005
    z: float = 2.0
    min_accesses: int = 128
    min_dwell: int = 1024
    preview_frac: float = 0.1
    family: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"cachewise.guard.enabled must be true or false, got {self.enabled!r}")
        if not (0 < self.sample_rate <= 1) or self.sample_rate * 65536 < 1:
            raise ConfigError(f"cachewise.guard.sample_rate must be in [1/65536, 1], got {self.sample_rate}")
        if self.half_life < 1 or self.min_accesses < 0 or self.min_dwell < 0 or self.min_sampled_blocks < 0:
            raise ConfigError(f"cachewise.guard: half_life must be >= 1, min_accesses/min_dwell >= 0 ({self})")
        if self.start not in GUARD_STARTS:
            raise ConfigError(f"cachewise.guard.start must be one of {GUARD_STARTS}, got {self.start!r}")
        if not (self.z >= 0) or math.isinf(self.z):
            raise ConfigError(f"cachewise.guard.z must be a finite number >= 0, got {self.z}")
        if not (0 <= self.margin < 1):
            raise ConfigError(f"cachewise.guard.margin must be in [0, 1), got {self.margin}")
        if not (0 <= self.preview_frac < 1):
            raise ConfigError(f"cachewise.guard.preview_frac must be in [0, 1), got {self.preview_frac}")
        if self.family is not None and not (isinstance(self.family, str) and self.family):
            raise ConfigError(f"cachewise.guard.family must be a non-empty string or null, got {self.family!r}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> GuardConfig:
        """Parse ``cachewise.guard``; unknown keys and wrong types raise :class:`ConfigError`."""
        return cls(**_sub_mapping(cls, raw, "guard", verbatim=("enabled", "start", "family")))


@dataclass(frozen=True)
class PoolConfig:
    """Settings of one :class:`~cachewise.runtime.block_pool.ScoredBlockPool`.

    ``max_idle_s``: cap on any prediction's ``expire_at - now`` (no prefix is immortal).
    ``ghost_window``: how many recently evicted block hashes are remembered to count ghost
    hits, lookup misses on one of them (None: the pool's number of blocks). The old name
    ``harmful_window`` is still accepted, with a deprecation warning.
    ``max_consecutive_failures``: after this many predictor failures in a row the pool
    switches to vLLM's order for good (one warning).
    ``log_interval_s``: seconds (wall clock) between stat log lines; 0 disables them.
    ``guard``: the online guard's settings (:class:`GuardConfig`).
    """

    max_idle_s: float = 3600.0
    ghost_window: int | None = None
    max_consecutive_failures: int = 64
    log_interval_s: float = 60.0
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if not (0 < self.max_idle_s < math.inf):
            raise ConfigError(f"max_idle_s must be a finite number > 0, got {self.max_idle_s}")
        if self.ghost_window is not None and self.ghost_window < 0:
            raise ConfigError(f"ghost_window must be >= 0, got {self.ghost_window}")
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
        return cls(**_sub_mapping(cls, raw, "scheduler"))

    def __post_init__(self) -> None:
        if self.lookahead < 1 or self.max_passes < 0 or not (0 <= self.max_wait_s < math.inf):
            raise ConfigError(f"invalid scheduler settings {self}")


@dataclass(frozen=True)
class ResidencySettings:
    """Settings of the residency controller (``cachewise.residency``; :mod:`cachewise.runtime.residency`).

    ``headroom``: fraction of the KV cache kept free of resident working sets for their growth,
    as far as the demand exceeds the cache (admission budget ``blocks - min(headroom * blocks,
    demand - blocks)``, :mod:`cachewise.runtime.residency`). ``thrash_share``: the controller stands aside --
    admits every waiting session, demotes no one, as vLLM's scheduler -- until memory proves short
    (latched): the live requests' present KV exceeds ``blocks``, or the blocks recomputed (a returning
    request's prefix its session had held, not found cached) pass this share of the blocks prefilled,
    over a window of about ``blocks`` prefilled blocks, and of ``blocks`` itself; ``None``: it never
    stands aside. The test is the engine's one (:mod:`cachewise.runtime.memory_shortage`): the GPU
    pool's guard enters its preview on the same latch, with this share. ``max_wait_s`` / ``max_passes``: starvation
    bound: a session held that long (seconds since its oldest waiting request arrived, or
    plans: ``replan_s`` below) is admitted regardless. ``horizon_s``: how far ahead the cost rule
    looks (a return later than that counts as "not back"). ``prefill_a0``, ``prefill_a_tok``,
    ``prefill_a_ctx``: prefill cost model ``a0 + a_tok n + a_ctx n^2 / 2`` (seconds, n
    tokens) of recomputing a dropped working set; ``decode_b0``, ``decode_b_seq``, ``decode_b_ctx``:
    decode step model ``b0 + b_seq n + b_ctx T`` (seconds, n sequences holding T tokens), whose share
    ``b0 / step`` is what the engine gains from one more session in its batch (the cost rule's weight
    of a held session's wait); defaults: Llama-3.1-8B on an H200 (``replay/cost_coefficients.json``). ``host_reload_s_per_token``: with a host tier running
    the CacheWise CPU policy, a demoted session's prefix is loaded back, not recomputed: the
    cost rule's recompute time becomes ``min(prefill, n * host_reload_s_per_token)``
    (Llama-3.1-8B bf16 on the H200's PCIe Gen5: 128 KiB / 54.8 GB/s = 2.4e-6 s/token,
    ``replay/transfer_coefficients.json``); 0: no tier (recompute). ``pressure_window_s``: the
    cost rule prices a demotion by the chance the pool evicts the session's blocks before it is
    back, from the pool's eviction rate over this many seconds (:mod:`cachewise.runtime.residency`;
    default 10 s: several of an agent's typical ~1 s return gaps, so the rate follows bursts of
    admissions without resting on one step). ``act_when_thrashing`` (default false): while the guard
    distrusts the model, the controller passes through (rule 5) -- until the resident working sets
    exceed the GPU plus the host tier; from then on it acts on the model (the exception to rule 5 in
    :mod:`cachewise.runtime.residency`, which gives up rule 5's "exactly vLLM's scheduling" there).
    ``tier_aside`` (default true): with a host tier, the controller also stands aside at every plan at
    which the demand (the resident and the waiting sessions' working sets) fits the GPU plus the host:
    no held prefix would be lost there, and live requests wait for GPU room in vLLM's own queue
    ("Standing aside" in :mod:`cachewise.runtime.residency`); false: only until memory proves short.
    ``judge`` (default true): the controller acts while the guard trusts the model *or* the forecast
    judge (:mod:`cachewise.runtime.forecast_judge`) finds the model's return forecasts measurably
    better than the no-model ones on the returns seen (quantile loss; ``judge_z`` standard errors,
    after ``judge_min_returns`` returns, over a window of half-life ``judge_half_life`` returns; its
    gaps capped at ``horizon_s``); false: the guard alone decides (rule 5). ``judge_fallback`` (default
    true): while neither verdict trusts the model but the judge has scored returns, the controller acts
    on the no-model *reference* forecasts the judge scored the model against, instead of passing
    through (rule 5, "Reference forecasts"); false: it passes through. ``admission_order`` (rule 2):
    ``area`` (default: the smallest predicted KV *area* first -- working set x the seconds the
    export's remaining-work model predicts the session still runs; ties, and every session
    without that model, smallest working set first), ``smallest`` (the smallest working set
    first) or ``fcfs`` (program-level FCFS). ``preempt_area_ratio`` (rule 2, ``area`` only): a head that
    the demotions that pay cannot make room for may also take the room of idle residents whose predicted
    area is more than this many times its own, largest first (0: off). ``readmit_cached`` (rule 2): a held
    session whose waiting request finds at least this share of its prompt still cached on the GPU goes
    before the other held sessions (0: off; off with a host tier).
    ``forecasts``: the return forecasts that admission and demotion act on (rules 1-3) while the
    controller acts: ``reference`` (default: always the no-model reference forecasts the judge scores the
    model against; they are built only where the judge runs, so with ``judge`` false, and for a session with
    none, the model's) or ``model`` (the model's; while the judge distrusts them, the reference, rule 5);
    the GPU pool's eviction order and the prefetcher use the model's in both.
    ``replan_s`` (default 0.1 s): the scheduler plans again at every step at which the requests
    changed -- one arrived, finished, was scheduled or preempted -- and otherwise once this many
    seconds have passed since its last plan; in between it holds the last plan's held sessions
    (:class:`cachewise.runtime.scheduler.ResidencyMixin`). 0: every step.
    """

    headroom: float = 0.1
    thrash_share: float | None = THRASH_SHARE  # stand aside until recompute passes this share of the prefill (None: never)
    max_wait_s: float = 1800.0
    max_passes: int = 100000
    horizon_s: float = 600.0
    prefill_a0: float = 0.008534235488234275
    prefill_a_tok: float = 2.038725126120883e-05
    prefill_a_ctx: float = 1.4758954005404623e-09
    decode_b0: float = 0.009047549684172713
    decode_b_seq: float = 2.4475066323684295e-05
    decode_b_ctx: float = 2.503178243879027e-08
    host_reload_s_per_token: float = 0.0  # host tier: seconds per token to load a dropped prefix back (0: recompute)
    pressure_window_s: float = 10.0
    act_when_thrashing: bool = False  # rule 5's exception: act on the model once pass-through outgrew GPU + host
    tier_aside: bool = True  # host tier: stand aside at every plan at which the demand fits GPU + host
    admission_order: str = "area"  # rule 2: smallest predicted KV "area" (blocks x remaining s), "smallest" working set, or "fcfs"
    preempt_area_ratio: float = 3.0  # rule 2, "area": demote an idle resident whose area exceeds this x the head's (0: off)
    readmit_cached: float = 0.5  # rule 2: a held session whose request finds this share of its prompt cached goes first (0: off)
    judge: bool = True  # rule 5: also act while the forecast judge finds the model's forecasts better
    judge_start_trusted: bool = True
    judge_z: float = 2.0
    judge_min_returns: int = 32
    judge_half_life: float = 256.0
    judge_fallback: bool = True  # rule 5: act on the reference forecasts, not pass through, while the judge distrusts
    forecasts: str = "reference"  # rules 1-3 act on the no-model "reference" return forecasts or the "model"'s
    replan_s: float = 0.1  # plan again when the requests changed or this long after the last plan (0: every step)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ResidencySettings:
        """Parse ``cachewise.residency``; unknown keys and non-numbers raise :class:`ConfigError`."""
        return cls(**_sub_mapping(cls, raw, "residency", verbatim=("act_when_thrashing", "tier_aside", "judge", "judge_start_trusted", "judge_fallback", "admission_order", "forecasts")))

    def __post_init__(self) -> None:
        finite_positive = 0 < self.horizon_s < math.inf and 0 < self.pressure_window_s < math.inf
        preempt_ok = 0 <= self.preempt_area_ratio < math.inf and 0 <= self.readmit_cached <= 1 and 0 <= self.replan_s < math.inf
        if not (0 <= self.headroom < 1) or not (self.thrash_share is None or 0 <= self.thrash_share <= 1) or not (0 <= self.max_wait_s < math.inf) or self.max_passes < 0 or not finite_positive or not preempt_ok:
            raise ConfigError(f"invalid residency settings {self}")
        costs = (self.prefill_a0, self.prefill_a_tok, self.prefill_a_ctx, self.decode_b0, self.decode_b_seq, self.decode_b_ctx)
        if not all(0 <= c < math.inf for c in (*costs, self.host_reload_s_per_token)):
            raise ConfigError("residency prefill, decode and reload cost coefficients must be finite and >= 0")
        for flag in ("judge", "judge_start_trusted", "judge_fallback", "tier_aside"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"cachewise.residency.{flag} must be true or false, got {getattr(self, flag)!r}")
        if not (0 <= self.judge_z < math.inf) or self.judge_min_returns < 0 or not (0 < self.judge_half_life < math.inf):
            raise ConfigError("cachewise.residency: judge_z must be finite and >= 0, judge_min_returns >= 0, judge_half_life > 0")
        if self.admission_order not in ("area", "smallest", "fcfs"):
            raise ConfigError(
                f"cachewise.residency.admission_order must be 'area', 'smallest' or 'fcfs', got {self.admission_order!r}"
            )
        if self.forecasts not in ("model", "reference"):
            raise ConfigError(f"cachewise.residency.forecasts must be 'model' or 'reference', got {self.forecasts!r}")
        if not isinstance(self.act_when_thrashing, bool):
            raise ConfigError(f"cachewise.residency.act_when_thrashing must be true or false, got {self.act_when_thrashing!r}")


@dataclass(frozen=True)
class PrefetchSettings:
    """Prefetch of demoted sessions' prefixes from the host tier (``cachewise.prefetch``;
    :mod:`cachewise.runtime.prefetch`). Runs only with the residency scheduler and the
    CacheWise CPU-tier policy attached to vLLM's offloading connector.

    ``enabled``: off by default. A demoted idle session is prefetched when
    ``P(back within load_s + lead_s | idle so far) >= min_p_back`` (its forecast; ``load_s`` =
    its working set in tokens x ``residency.host_reload_s_per_token``) and its working set fits
    the residency budget with no session waiting for admission. ``max_inflight``: prefetch
    requests in vLLM at once. ``max_wait_s``: a prefetch not started after this long (no GPU
    room) is aborted; one is also aborted when its session's request arrives first.
    """

    enabled: bool = False
    min_p_back: float = 0.5
    lead_s: float = 1.0
    max_inflight: int = 4
    max_wait_s: float = 5.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PrefetchSettings:
        """Parse ``cachewise.prefetch``; unknown keys and wrong types raise :class:`ConfigError`."""
        return cls(**_sub_mapping(cls, raw, "prefetch", verbatim=("enabled",)))

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"cachewise.prefetch.enabled must be true or false, got {self.enabled!r}")
        if not (0 < self.min_p_back <= 1) or not (0 <= self.lead_s < math.inf) or self.max_inflight < 1:
            raise ConfigError(f"invalid prefetch settings {self} (min_p_back in (0, 1], lead_s >= 0, max_inflight >= 1)")
        if not (0 < self.max_wait_s < math.inf):
            raise ConfigError(f"cachewise.prefetch.max_wait_s must be a finite number > 0, got {self.max_wait_s}")


@dataclass(frozen=True)
class CacheWiseSettings:
    """Everything under ``additional_config["cachewise"]``.

    ``registry_timeout_s``: wall-clock budget (retries included) for fetching a ``models:/``
    model from the MLflow registry at start-up; None: the loader's default
    (:data:`cachewise.scoring.exported.REGISTRY_TIMEOUT_S`, 10 s). ``metrics_port``: 1..65535.
    ``log_dir``: when set, every finished call's feature metadata is appended to a Parquet
    dataset there (:mod:`cachewise.runtime.serving_log`; learned mode only), for retraining.
    """

    mode: str = "learned"
    model: str | None = None
    tool_parser: str = "auto"
    metrics_port: int | None = None
    registry_timeout_s: float | None = None
    log_dir: str | None = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    residency: ResidencySettings = field(default_factory=ResidencySettings)
    prefetch: PrefetchSettings = field(default_factory=PrefetchSettings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"cachewise.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "learned" and not self.model:
            raise ConfigError("cachewise.model is required in learned mode (a path or a models:/ URI)")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= MAX_PORT:
            raise ConfigError(f"cachewise.metrics_port must be 1..{MAX_PORT}, got {self.metrics_port}")
        if self.registry_timeout_s is not None and not 0 < self.registry_timeout_s < math.inf:
            raise ConfigError(f"cachewise.registry_timeout_s must be a finite number > 0, got {self.registry_timeout_s}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CacheWiseSettings:
        """Parse the ``cachewise`` dict; pool keys sit at top level, scheduler and guard keys under
        ``scheduler`` and ``guard``."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"additional_config.cachewise must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        for old, new in DEPRECATED_KEYS.items():
            if old in raw:
                logger.warning("CacheWise: additional-config key %r is deprecated; use %r", old, new)
                raw.setdefault(new, raw.pop(old))
        pool_keys = {f.name for f in fields(PoolConfig)} - {"guard"}
        own_keys = {
            "mode", "model", "tool_parser", "metrics_port", "registry_timeout_s", "log_dir", "scheduler", "residency", "guard",
            "prefetch",
        }
        unknown = set(raw) - pool_keys - own_keys
        if unknown:
            raise ConfigError(
                f"unknown cachewise keys {sorted(unknown)}; valid keys: {sorted(pool_keys | own_keys)}"
            )
        try:
            guard_raw = raw.pop("guard", None)
            guard = GuardConfig.from_mapping({} if guard_raw is None else guard_raw)
            pool = PoolConfig(**{k: _typed(PoolConfig, k, raw.pop(k)) for k in pool_keys if k in raw}, guard=guard)
            sched_raw = raw.pop("scheduler", None)
            scheduler = SchedulerSettings.from_mapping({} if sched_raw is None else sched_raw)
            residency_raw = raw.pop("residency", None)
            residency = ResidencySettings.from_mapping({} if residency_raw is None else residency_raw)
            prefetch_raw = raw.pop("prefetch", None)
            prefetch = PrefetchSettings.from_mapping({} if prefetch_raw is None else prefetch_raw)
            port = raw.pop("metrics_port", None)
            port = int(port) if isinstance(port, str) and port.strip().isdigit() else port  # "9400" as on a CLI
            timeout = raw.pop("registry_timeout_s", None)
            log_dir = raw.pop("log_dir", None)
            if log_dir is not None and not (isinstance(log_dir, str) and log_dir):
                raise ConfigError(f"cachewise.log_dir must be a non-empty path string, got {log_dir!r}")
            return cls(
                mode=str(raw.pop("mode", "learned")),
                model=None if raw.get("model") is None else str(raw.pop("model")),
                tool_parser=str(raw.pop("tool_parser", "auto")),
                metrics_port=None if port is None else _typed(cls, "metrics_port", port, int),
                registry_timeout_s=None if timeout is None else _typed(cls, "registry_timeout_s", timeout, float),
                log_dir=log_dir,
                pool=pool,
                scheduler=scheduler,
                residency=residency,
                prefetch=prefetch,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cachewise settings: {exc}") from exc


def _sub_mapping(cls: type, raw: Any, name: str, verbatim: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field values of dataclass ``cls`` from ``cachewise.<name>``: numbers typed by
    :func:`_typed`, ``verbatim`` fields as given (their ``__post_init__`` checks them)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"cachewise.{name} must be a JSON object")
    known = {f.name for f in fields(cls)}
    if set(raw) - known:
        raise ConfigError(f"unknown cachewise.{name} keys {sorted(set(raw) - known)}; valid: {sorted(known)}")
    return {k: v if k in verbatim else _typed(cls, k, v, prefix=f"{name}.") for k, v in raw.items()}


def _typed(cls: type, key: str, value: Any, kind: type | None = None, prefix: str = "") -> Any:
    """``value`` as a finite number of the type of field ``key`` of dataclass ``cls`` (or ``kind``; None kept)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"cachewise.{prefix}{key} must be a finite number, got {value!r}")
    if kind is None:
        kind = float if isinstance(next(f.default for f in fields(cls) if f.name == key), float) else int
    if kind is int and value != int(value):
        raise ConfigError(f"cachewise.{prefix}{key} must be an integer, got {value!r}")
    return kind(value)
