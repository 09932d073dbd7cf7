"""CacheWise's counters: per-pool statistics, Prometheus export, periodic log lines.

Each :class:`~cachewise.runtime.block_pool.ScoredBlockPool` counts into a plain
:class:`PoolStats` (cheap enough for the eviction path) and hands deltas to the
process-wide Prometheus metrics in :func:`publish` once per released request and per log
tick. The metrics live in ``prometheus_client``'s default registry of the process that runs
the scheduler (vLLM's engine core). vLLM's ``/metrics`` serves them when that registry is
shared with the API server: in-process engines, or any setup with
``PROMETHEUS_MULTIPROC_DIR`` set (vLLM sets it itself with ``--api-server-count > 1``);
otherwise set ``metrics_port`` in the cachewise settings to serve them from the engine
process (:func:`serve_metrics`).

Exported names: ``cachewise_evictions_total``, ``cachewise_ghost_hits_total``,
``cachewise_predictions_total``, ``cachewise_fallbacks_total{reason}``,
``cachewise_order_fallback_blocks_total``, ``cachewise_scorer_latency_seconds``, and for the
online guard (:mod:`cachewise.runtime.guard`): ``cachewise_guard_learned_order`` (1 while the
learned order serves, 0 while vLLM's LRU does), ``cachewise_guard_hit_rate{order}``
(estimated hit rate of ``learned`` and ``lru`` over the guard's window, the pool's
``observed`` one on the same sampled blocks, and ``preview_learned`` / ``preview_lru`` in the
guard's preview cache), ``cachewise_guard_switches_total``, ``cachewise_guard_certified`` (1 while
the learned order serves on the model's traffic certificate); for the
residency controller (:mod:`cachewise.runtime.residency`, rule 5):
``cachewise_residency_following_model`` (1 while it acts on the model's forecasts),
``cachewise_residency_reference_forecasts`` (1 while it acts on the no-model reference forecasts
because the forecast judge distrusts the model's; both 0: it passes through as vLLM's scheduler) and
``cachewise_residency_passthrough_steps_total``, ``cachewise_residency_memory_short`` (0 while it stands
aside until memory proves short, 1 after); for the forecast judge
(:mod:`cachewise.runtime.forecast_judge`): ``cachewise_forecast_judge_trusted`` and
``cachewise_forecast_judge_loss_difference`` (model minus no-model mean quantile loss). Gauges
are per process: with several pools in one process the last one published wins.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from cachewise.runtime.forecast_judge import ForecastJudge

# Under the "vllm" logger so that vLLM's own logging setup (handler, level, format) shows our lines.
logger = logging.getLogger("vllm.cachewise")

# "incompatible": vLLM's own classes kept (untested vLLM version, or CacheWise failed to build on it).
FALLBACK_REASONS = ("load", "predictor_error", "invalid_score", "hook_error", "disabled", "incompatible")


@dataclass
class PoolStats:
    """Counts since the pool was built (monotone; never reset)."""

    released: int = 0  # requests whose blocks were handed back through the release hook
    evictions: int = 0  # cached blocks whose hash was dropped to reuse the block
    ghost_hits: int = 0  # lookup misses on a hash evicted within the last ghost_window evictions
    predictions: int = 0  # predictor calls that returned a usable prediction
    no_opinion: int = 0  # predictor calls that returned None
    held: int = 0  # requests released unfinished (preempted), kept as imminent
    fallbacks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FALLBACK_REASONS, 0))
    order_fallback_blocks: int = 0  # blocks handed out in vLLM's order for lack of a candidate
    scorer_seconds: float = 0.0  # total time spent in the predictor
    guard_learned: bool | None = None  # which order the guard serves (None: no guard)
    guard_switches: int = 0  # times the guard changed order
    guard_certified: bool = False  # the learned order serves on the traffic certificate (guard, "Certified traffic")
    guard_hit_rate_learned: float = 0.0  # estimated over the guard's window (sampled blocks)
    guard_hit_rate_lru: float = 0.0
    guard_hit_rate_observed: float = 0.0  # the pool's own hit rate on the same sampled accesses
    guard_preview_hit_rate_learned: float = 0.0  # the same, in the guard's preview cache
    guard_preview_hit_rate_lru: float = 0.0
    guard_sampled_accesses: int = 0

    @property
    def total_fallbacks(self) -> int:
        return sum(self.fallbacks.values())


_lock = threading.Lock()
_prom: dict[str, Counter | Gauge | Histogram] = {}


def _metrics() -> dict[str, Counter | Gauge | Histogram]:
    """The process-wide Prometheus metrics, created on first use (idempotent)."""
    with _lock:
        if not _prom:
            _prom["evictions"] = Counter("cachewise_evictions", "Cached KV blocks evicted by CacheWise pools")
            _prom["ghost_hits"] = Counter(
                "cachewise_ghost_hits",
                "Prefix-cache lookup misses on a block hash the pool evicted within its last ghost_window evictions",
            )
            _prom["predictions"] = Counter("cachewise_predictions", "Reuse predictions made (one per finished request)")
            _prom["fallbacks"] = Counter(
                "cachewise_fallbacks", "Times CacheWise fell back to vLLM's order", ["reason"]
            )
            _prom["order_fallback_blocks"] = Counter(
                "cachewise_order_fallback_blocks", "Blocks handed out in vLLM's order for lack of a scored candidate"
            )
            _prom["guard_switches"] = Counter(
                "cachewise_guard_switches", "Times the online guard switched between the learned order and vLLM's LRU"
            )
            _prom["guard_learned"] = Gauge(
                "cachewise_guard_learned_order", "1 while the guard serves the learned order, 0 while it serves vLLM's LRU"
            )
            _prom["guard_certified"] = Gauge(
                "cachewise_guard_certified", "1 while the guard serves the learned order on the model's traffic certificate"
            )
            _prom["guard_hit_rate"] = Gauge(
                "cachewise_guard_hit_rate",
                "Guard's windowed hit rate on sampled blocks: estimated per order (learned, lru; preview_learned, "
                "preview_lru in its preview cache) and observed",
                ["order"],
            )
            _prom["residency_following"] = Gauge(
                "cachewise_residency_following_model",
                "1 while the residency controller acts on the model's forecasts; 0 while the guard and the forecast "
                "judge distrust the model (it acts on the reference forecasts or passes through as vLLM's scheduler)",
            )
            _prom["residency_reference"] = Gauge(
                "cachewise_residency_reference_forecasts",
                "1 while the residency controller acts on the no-model reference forecasts (the forecast judge "
                "distrusts the model's), 0 otherwise",
            )
            _prom["residency_short"] = Gauge(
                "cachewise_residency_memory_short",
                "1 once memory proved short (live requests past the KV cache, or recompute past thrash_share); "
                "0 while the residency controller stands aside as vLLM's scheduler",
            )
            _prom["residency_passthrough"] = Counter(
                "cachewise_residency_passthrough_steps", "Scheduler steps the residency controller passed through (guard)"
            )
            _prom["judge_trusted"] = Gauge(
                "cachewise_forecast_judge_trusted",
                "1 while the forecast judge trusts the model's return forecasts over the no-model ones, 0 otherwise",
            )
            _prom["judge_difference"] = Gauge(
                "cachewise_forecast_judge_loss_difference",
                "Forecast judge's windowed mean quantile loss of the model's return forecasts minus the no-model ones'"
                " (negative: the model forecasts better)",
            )
            _prom["scorer_latency"] = Histogram(
                "cachewise_scorer_latency_seconds",
                "Time of one reuse prediction (per finished request)",
                buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1),
            )
        return _prom


def count_fallback(reason: str) -> None:
    """One ``cachewise_fallbacks_total{reason}`` outside any pool (e.g. no pool could be built)."""
    _metrics()["fallbacks"].labels(reason=reason).inc()


def observe_latency(seconds: float) -> None:
    """Record one predictor call's latency in the histogram."""
    _metrics()["scorer_latency"].observe(seconds)


def publish_residency(
    following_model: bool, judge: ForecastJudge | None = None, on_reference: bool = False, short: bool = True
) -> None:
    """One residency step's mode: the gauges (``short``: memory proved short, no longer standing aside),
    and one pass-through step counted when acting on neither the model's nor the reference forecasts;
    the forecast judge's verdict and loss difference when there is one."""
    prom = _metrics()
    prom["residency_following"].set(1.0 if following_model else 0.0)
    prom["residency_reference"].set(1.0 if on_reference else 0.0)
    prom["residency_short"].set(1.0 if short else 0.0)
    if not (following_model or on_reference):
        prom["residency_passthrough"].inc()
    if judge is not None:
        prom["judge_trusted"].set(1.0 if judge.trusted else 0.0)
        prom["judge_difference"].set(judge.mean_difference)


class Publisher:
    """Pushes a pool's :class:`PoolStats` deltas to Prometheus; logs a stat line periodically."""

    _SCALARS = ("evictions", "ghost_hits", "predictions", "order_fallback_blocks", "guard_switches")

    def __init__(self, stats: PoolStats, log_interval_s: float, label: str) -> None:
        self._stats = stats
        self.label = label
        self._sent = PoolStats()
        self._interval = log_interval_s
        self._next_log = time.monotonic() + log_interval_s
        self._logged = PoolStats()
        self._prom: dict[str, Counter | Gauge | Histogram] | None = None  # the process-wide metrics, on first use
        self._rates: tuple[Gauge, ...] | None = None  # guard_hit_rate{order=learned, lru, observed, preview_*}

    def publish(self) -> None:
        """Send the deltas since the last call; log a stat line when the interval elapsed.

        Called once per released request: the metrics and the guard's labelled gauges are looked
        up once per publisher (``labels()`` takes a lock and a dict lookup per call)."""
        prom = self._prom
        if prom is None:
            prom = self._prom = _metrics()
        stats, sent = self._stats, self._sent
        for name in self._SCALARS:
            delta = getattr(stats, name) - getattr(sent, name)
            if delta:
                prom[name].inc(delta)
                setattr(sent, name, getattr(stats, name))
        for reason, count in stats.fallbacks.items():
            delta = count - sent.fallbacks[reason]
            if delta:
                prom["fallbacks"].labels(reason=reason).inc(delta)
                sent.fallbacks[reason] = count
        if stats.guard_learned is not None:
            prom["guard_learned"].set(1.0 if stats.guard_learned else 0.0)
            prom["guard_certified"].set(1.0 if stats.guard_certified else 0.0)
            rates = self._rates
            if rates is None:
                gauge = prom["guard_hit_rate"]
                orders = ("learned", "lru", "observed", "preview_learned", "preview_lru")
                rates = self._rates = tuple(gauge.labels(order=o) for o in orders)
            rates[0].set(stats.guard_hit_rate_learned)
            rates[1].set(stats.guard_hit_rate_lru)
            rates[2].set(stats.guard_hit_rate_observed)
            rates[3].set(stats.guard_preview_hit_rate_learned)
            rates[4].set(stats.guard_preview_hit_rate_lru)
        if self._interval and time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self._interval
            self._log_line()

    def _log_line(self) -> None:
        s, last = self._stats, self._logged
        calls = s.predictions + s.no_opinion - last.predictions - last.no_opinion
        mean_us = (s.scorer_seconds - last.scorer_seconds) / calls * 1e6 if calls else 0.0
        logger.info(
            "CacheWise %s: evictions=%d (+%d) ghost_hits=%d (+%d) predictions=%d (+%d) "
            "no_opinion=%d held=%d fallbacks=%d order_fallback_blocks=%d scorer_mean=%.1fus%s",
            self.label,
            s.evictions,
            s.evictions - last.evictions,
            s.ghost_hits,
            s.ghost_hits - last.ghost_hits,
            s.predictions,
            s.predictions - last.predictions,
            s.no_opinion,
            s.held,
            s.total_fallbacks,
            s.order_fallback_blocks,
            mean_us,
            ""
            if s.guard_learned is None
            else f" guard={'learned' if s.guard_learned else 'lru'} est_hit_learned={100 * s.guard_hit_rate_learned:.1f}%"
            f" est_hit_lru={100 * s.guard_hit_rate_lru:.1f}% switches={s.guard_switches}",
        )
        for f in fields(PoolStats):
            value = getattr(s, f.name)
            setattr(last, f.name, dict(value) if isinstance(value, dict) else value)


_served_ports: set[int] = set()


def serve_metrics(port: int) -> None:
    """Serve the default Prometheus registry on ``port`` from this process (once per port)."""
    with _lock:
        if port in _served_ports:
            return
        start_http_server(port)
        _served_ports.add(port)
    logger.info("CacheWise metrics served on :%d/metrics", port)
