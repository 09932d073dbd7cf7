"""vLLM general plugin: ``vllm.general_plugins: cachewise = cachewise.runtime.plugin:register``.

vLLM calls :func:`register` in every process (front end, engine core, workers), possibly
several times. It installs the pool hooks (:mod:`cachewise.runtime.hooks`) and wraps
``vllm.v1.core.sched.scheduler.Scheduler.__init__`` (hence every subclass, the async
scheduler included). Nothing changes unless the engine's
``VllmConfig.additional_config`` has a ``"cachewise"`` entry: the wrapper reads it while
the scheduler is being built, so the KV-cache manager constructed inside gets a
``ScoredBlockPool``.

Serving::

    vllm serve MODEL --additional-config '{"cachewise": {"model": "models:/cachewise-reuse@champion"}}'

Start-up logs one line saying CacheWise is active, with which model, or that it runs in
fallback mode (vLLM's eviction order) and why. Failures to build the predictor (missing
or corrupt model, unreachable registry, feature-spec version mismatch, bad settings) log
ONE warning, count one ``cachewise_fallbacks_total{reason="load"}`` and leave vLLM serving
in its default order. Loading never runs unchecked bytes through LightGBM's parser
(:mod:`cachewise.scoring.exported`), and a ``models:/`` download gives up after
``registry_timeout_s`` (default 10 s).

Versions: on a vLLM outside the tested series (:mod:`cachewise.runtime.vllm_compat`), or
when anything of CacheWise's own fails while its hooks, the scheduler wrapper's binding or
the scored pool are built, vLLM's own classes stay in place: one warning, one
``cachewise_fallbacks_total{reason="incompatible"}``, and the engine starts as without
the plugin.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from cachewise.runtime.config import CONFIG_KEY, CacheWiseSettings, ConfigError
from cachewise.runtime.metrics import serve_metrics
from cachewise.runtime.sessions import SessionView
from cachewise.runtime.vllm_compat import bound_argument, keep_vllm_classes, untested_reason, vllm_version

try:  # imports vLLM internals: a vLLM that lacks them must still start (without CacheWise)
    from cachewise.runtime.hooks import PolicyBinding, bound, current_binding, install_hooks
except Exception as exc:  # noqa: BLE001
    _HOOKS_IMPORT_ERROR: str | None = f"cannot import CacheWise's hooks ({type(exc).__name__}: {exc})"
else:
    _HOOKS_IMPORT_ERROR = None

logger = logging.getLogger("vllm.cachewise")

# Why CacheWise stays out of this process (None: it may patch vLLM); set by register().
_problem: str | None = None


def register() -> None:
    """Entry point: install the hooks (idempotent; does nothing visible without settings); never raises.

    On a vLLM outside :data:`~cachewise.runtime.vllm_compat.TESTED_SERIES`, or when the hooks
    cannot be installed, nothing of vLLM's is replaced: only ``Scheduler.__init__`` is
    wrapped, so that an engine started *with* ``cachewise`` settings says once why CacheWise
    is inactive and counts ``cachewise_fallbacks_total{reason="incompatible"}``.
    """
    global _problem
    try:
        _problem = _problem or untested_reason() or _HOOKS_IMPORT_ERROR
        if _problem is None:
            try:
                install_hooks()
            except Exception as exc:  # noqa: BLE001 - nothing was patched (install_hooks looks up first)
                _problem = f"cannot install CacheWise's hooks on vLLM {vllm_version()} ({type(exc).__name__}: {exc})"
        from vllm.v1.core.sched.scheduler import Scheduler

        if not getattr(Scheduler.__init__, "_cachewise_hook", False):
            Scheduler.__init__ = _wrap_scheduler_init(Scheduler.__init__)  # type: ignore[method-assign]
    except Exception as exc:  # noqa: BLE001 - the plugin must never stop vLLM from starting
        keep_vllm_classes(f"cannot register on vLLM {vllm_version()} ({type(exc).__name__}: {exc})")


def settings_of(vllm_config: Any) -> dict | None:
    """The raw ``cachewise`` settings of an engine config, or None when absent."""
    extra = getattr(vllm_config, "additional_config", None)
    if not isinstance(extra, dict) or CONFIG_KEY not in extra:
        return None
    return extra[CONFIG_KEY]


_wiring: ContextVar[bool] = ContextVar("cachewise_wiring", default=False)


@contextmanager
def wired(vllm_config: Any, binding: PolicyBinding | None = None) -> Iterator[None]:
    """The one place an engine's CacheWise components are wired: a scheduler of any class
    built inside the block gets the pool (and, through it, the predictor) of ``binding`` when
    given -- the replay's policy on its clock, a test's predictor -- else of the config's
    ``additional_config["cachewise"]`` (:func:`binding_for`), else of a binding already
    active (:func:`~cachewise.runtime.hooks.use_policy`), else vLLM's own. Every wired engine
    gets its one :class:`~cachewise.runtime.sessions.SessionView`, created here
    (:func:`with_sessions`) and shared by the pool, the predictor, the schedulers and the
    CPU-tier policy. Scheduler settings (``scheduler``, ``residency``) are read from
    ``additional_config`` by the scheduler classes themselves, whoever wires. Used by the
    ``Scheduler.__init__`` wrapper (serving) and by
    :func:`cachewise.runtime.cpu_engine.make_scheduler` (tests, replay); re-entrant: a wrapper
    running inside an explicit wiring adds nothing. Never raises for CacheWise's own
    failures: they leave vLLM's classes (one warning, one count).
    """
    if _wiring.get():
        yield
        return
    token = _wiring.set(True)
    try:
        with ExitStack() as stack:
            raw = settings_of(vllm_config) if binding is None else None
            outer = current_binding() if binding is None and raw is None and _HOOKS_IMPORT_ERROR is None else None
            if outer is not None and outer.sessions is None:
                stack.enter_context(bound(with_sessions(outer, vllm_config)))
            elif binding is not None or raw is not None:
                problem = _problem or untested_reason() or _HOOKS_IMPORT_ERROR
                try:
                    if problem is None:
                        chosen = binding if binding is not None else binding_for(raw, vllm_config)
                        stack.enter_context(bound(with_sessions(chosen, vllm_config)))
                except Exception as exc:  # noqa: BLE001 - e.g. hooks that cannot be installed
                    problem = f"cannot set CacheWise up on vLLM {vllm_version()} ({type(exc).__name__}: {exc})"
                if problem is not None:
                    keep_vllm_classes(problem)
            yield
    finally:
        _wiring.reset(token)


def with_sessions(binding: PolicyBinding, vllm_config: Any) -> PolicyBinding:
    """``binding`` with the engine's new session view (block size: the config's cache block
    size), which the binding's predictor also reports to when it has a ``sessions`` attribute
    (the learned predictor and its call builder; the replay's forecasting predictors)."""
    view = SessionView(vllm_config.cache_config.block_size)
    if hasattr(binding.predictor, "sessions"):
        binding.predictor.sessions = view
    return replace(binding, sessions=view)


def _wrap_scheduler_init(original: Callable[..., None]) -> Callable[..., None]:
    """``original`` run under :func:`wired` for its config."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        with wired(bound_argument(original, "vllm_config", self, *args, **kwargs)):
            original(self, *args, **kwargs)

    __init__._cachewise_hook = True  # type: ignore[attr-defined]
    return __init__


def binding_for(raw: Any, vllm_config: Any) -> PolicyBinding:
    """The pool binding for raw ``cachewise`` settings; never raises (failures give fallback)."""
    try:
        settings = CacheWiseSettings.from_mapping(raw)
    except ConfigError as exc:
        return _fallback(f"invalid settings: {exc}", CacheWiseSettings(mode="fallback"))
    if settings.metrics_port is not None:
        try:
            serve_metrics(settings.metrics_port)
        except (OSError, OverflowError, ValueError) as exc:  # busy port, or one the OS refuses
            logger.warning("CacheWise: cannot serve metrics on port %d: %s", settings.metrics_port, exc)
    if settings.mode == "fallback":
        return PolicyBinding(None, config=settings.pool, on_pool=_announce(settings, "fallback mode by setting"))
    try:
        predictor = build_learned_predictor(settings, vllm_config)
    except Exception as exc:  # noqa: BLE001 - any load failure means: serve in vLLM's order
        return _fallback(f"cannot load model {settings.model!r}: {type(exc).__name__}: {exc}", settings)
    return PolicyBinding(predictor, config=settings.pool, on_pool=_announce(settings, None))


def build_learned_predictor(settings: CacheWiseSettings, vllm_config: Any) -> Any:
    """A :class:`~cachewise.runtime.learned.LearnedPredictor` for the engine (raises on failure)."""
    from cachewise.runtime.request_calls import LazyTokenizer
    from cachewise.scoring.exported import load_exported

    model = load_exported(settings.model, registry_timeout_s=settings.registry_timeout_s)
    model_config = vllm_config.model_config
    return learned_predictor(
        model,
        settings,
        model_name=str(model_config.served_model_name or model_config.model),
        hash_block_size=vllm_config.cache_config.block_size,
        tokenizer=None if model_config.skip_tokenizer_init else LazyTokenizer(_tokenizer_loader(model_config)),
    )


def learned_predictor(
    model: Any,
    settings: CacheWiseSettings,
    model_name: str,
    hash_block_size: int,
    tokenizer: Any = None,
    calls_cls: type | None = None,
    **calls_kwargs: Any,
) -> Any:
    """The one wiring of a loaded model into a predictor, for serving and the replay alike:
    ``calls_cls`` (default :class:`~cachewise.runtime.request_calls.CallBuilder`; the replay
    passes its recorded-token subclass) built with the settings' tool parser, the scorer, and
    the serving log of ``settings.log_dir``. ``calls_kwargs`` go to ``calls_cls`` (e.g. the
    replay's ``arrival_clock``)."""
    from cachewise.runtime.learned import LearnedPredictor
    from cachewise.runtime.request_calls import CallBuilder
    from cachewise.runtime.tool_calls import get_parser

    calls = (calls_cls or CallBuilder)(
        model=model_name,
        hash_block_size=hash_block_size,
        parser=get_parser(settings.tool_parser),
        tokenizer=tokenizer,
        **calls_kwargs,
    )
    return LearnedPredictor(model, calls, on_call=_serving_log(settings))


def _serving_log(settings: CacheWiseSettings) -> Callable[[Any], None] | None:
    """``ServingLog.record`` for ``settings.log_dir``; None (one warning) when it cannot be opened."""
    if settings.log_dir is None:
        return None
    from cachewise.runtime.serving_log import ServingLog

    try:
        log = ServingLog(settings.log_dir)
    except OSError as exc:
        logger.warning("CacheWise: cannot open serving log dir %s (%s); serving without logs", settings.log_dir, exc)
        return None
    logger.info("CacheWise serving log: %s (engine %s)", settings.log_dir, log.engine_id)
    return log.record


def _tokenizer_loader(model_config: Any) -> Callable[[], Any]:
    def load() -> Any:
        from vllm.tokenizers import cached_tokenizer_from_config

        return cached_tokenizer_from_config(model_config)

    return load


def _fallback(reason: str, settings: CacheWiseSettings) -> PolicyBinding:
    logger.warning("CacheWise: %s; serving with vLLM's default eviction order", reason)
    return PolicyBinding(None, config=settings.pool, fallback_reason=reason, on_pool=_announce(settings, reason))


def _announce(settings: CacheWiseSettings, fallback: str | None) -> Callable[[Any], None]:
    """The start-up line, logged when the engine's pool is built."""

    def on_pool(pool: Any) -> None:
        if fallback is None:
            logger.info(
                "CacheWise active: learned eviction order, model=%s, tool_parser=%s, max_idle_s=%g, pool=%d blocks",
                settings.model,
                settings.tool_parser,
                settings.pool.max_idle_s,
                pool.num_gpu_blocks,
            )
        else:
            logger.info(
                "CacheWise active in fallback mode (vLLM's eviction order, CacheWise metrics on): %s; pool=%d blocks",
                fallback,
                pool.num_gpu_blocks,
            )

    return on_pool
