"""The server's counters, scraped from its Prometheus ``/metrics`` text.

:func:`scrape` returns one number per series, keyed ``name`` or ``name{label=value,...}``
(labels sorted, ``engine`` and ``model_name`` dropped; series that then coincide are
summed). Only counters and gauges of interest are kept: vLLM's prefix-cache queries and
hits, request counts, preemptions, and every ``cachewise_*`` series. :func:`delta` is
``after - before`` per key. O(size of the metrics text).
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

PREFIXES = ("vllm:prefix_cache_", "vllm:num_preemptions", "vllm:request_success", "cachewise_")
_DROPPED_LABELS = {"engine", "model_name"}


def parse(text: str) -> dict[str, float]:
    """The series of interest in a metrics exposition text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIXES) or sample.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k not in _DROPPED_LABELS)
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[str, float] | None:
    """The server's series of interest, or None when it has no usable ``/metrics``."""
    try:
        response = await client.get(f"{base_url.rstrip('/')}/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse(response.text)
    except ValueError:
        return None


def delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """``after - before`` per series (series new in ``after`` count from 0)."""
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items())}


def hit_rate(counters: dict[str, float] | None) -> float | None:
    """Prefix-cache hit rate (hit tokens / queried tokens) of a :func:`delta`, or None."""
    if not counters:
        return None
    queries = counters.get("vllm:prefix_cache_queries_total", 0.0)
    return counters.get("vllm:prefix_cache_hits_total", 0.0) / queries if queries else None
