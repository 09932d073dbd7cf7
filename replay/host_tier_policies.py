"""Replay policies with a host-memory KV tier (vLLM's native CPU offloading), and how a run gets its tier.

``vllm_offload``       vLLM as shipped with ``--kv-offloading-backend native``: its GPU LRU,
                       no residency, the host tier's ``lru`` policy;
``vllm_offload_arc``   the same with the host tier's ``arc`` policy;
``cachewise_offload``  ``cachewise`` (learned eviction + residency controller) with the host tier
                       running CacheWise's CPU policy
                       (:class:`~cachewise.runtime.cpu_policy.CacheWiseCachePolicy`, attached to
                       the residency scheduler's session view); no prefetch;
``cachewise_prefetch`` ``cachewise_offload`` plus prefetch (:mod:`cachewise.runtime.prefetch`):
                       a demoted session's prefix is loaded back from the host before its
                       predicted return (``PrefetchSettings`` defaults, enabled).

Each is registered in the replay's policy :data:`~cachewise.replay.policies.REGISTRY` with its
base policy's spec (``lru`` or ``cachewise``): the same predictor, scheduler and guard; the
only difference is the tier. The runner asks :func:`host_tier_for` for the run's
``kv_transfer_config`` and simulated worker (:mod:`cachewise.replay.host_tier`). Host capacity:
``host_kv_frac`` times the run's GPU KV blocks (``replay.host_kv_frac``, ``--host-kv-frac``);
at 0 no tier is built and each policy is exactly its base policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from vllm.config import KVTransferConfig
from vllm.v1.kv_cache_interface import FullAttentionSpec

from cachewise.replay import residency_policies  # noqa: F401 - registers the base policy "cachewise"
from cachewise.runtime.config import PrefetchSettings
from cachewise.replay.host_tier import LLAMA_8B_KV_BYTES_PER_TOKEN, TransferModel, TransferWorker, offload_transfer_config
from cachewise.replay.policies import REGISTRY, register_policy

HOST_TIER_POLICIES: dict[str, tuple[str, str]] = {
    "vllm_offload": ("lru", "lru"),
    "vllm_offload_arc": ("lru", "arc"),
    "cachewise_offload": ("cachewise", "cachewise"),
    "cachewise_prefetch": ("cachewise", "cachewise"),
}
"""Policy -> (base policy, host-tier eviction policy of :func:`~cachewise.replay.host_tier.offload_transfer_config`)."""

PREFETCH_POLICIES = frozenset({"cachewise_prefetch"})
"""Tier policies whose residency scheduler prefetches (the others: ``prefetch_settings`` disabled)."""

for _name, (_base, _) in HOST_TIER_POLICIES.items():
    register_policy(_name, REGISTRY[_base])


@dataclass(frozen=True)
class HostTierSettings:
    """``host_kv_frac``: host capacity in GPU KV capacities; ``transfer``: the measured link costs;
    ``kv_bytes_per_token``: real KV bytes per trace token (default Llama-3.1-8B bf16)."""

    host_kv_frac: float
    transfer: TransferModel
    kv_bytes_per_token: int = LLAMA_8B_KV_BYTES_PER_TOKEN

    def __post_init__(self) -> None:
        if not self.host_kv_frac >= 0:
            raise ValueError(f"host_kv_frac must be >= 0, got {self.host_kv_frac}")


@dataclass(frozen=True)
class HostTier:
    """A run's host tier: vLLM's ``kv_transfer_config``, the simulated worker, and the scheduler
    class to build (a residency scheduler's settings get the tier's reload cost)."""

    kv_transfer_config: KVTransferConfig
    worker: TransferWorker
    scheduler_cls: str | type | None


def host_tier_for(
    policy: str, settings: HostTierSettings | None, gpu_blocks: int, block_size: int, token_scale: int, scheduler_cls: str | type | None
) -> HostTier | None:
    """The run's host tier; None when ``policy`` has no tier, no settings were given, or
    ``host_kv_frac`` is 0.

    A residency scheduler (``residency_settings`` set, as the replay's are) gets
    ``host_reload_s_per_token`` = the measured load time of one replay token (bytes over the
    link's bandwidth plus its per-chunk cost), so its cost rule prices a demotion as a reload,
    and prefetch settings enabled for :data:`PREFETCH_POLICIES` (disabled otherwise)."""
    if policy not in HOST_TIER_POLICIES or settings is None or settings.host_kv_frac == 0:
        return None
    host_chunks = max(1, round(settings.host_kv_frac * gpu_blocks))
    # the page size of the replay engine's KV spec (cachewise.replay.engine), for vLLM's chunk count
    page = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32).page_size_bytes
    config = offload_transfer_config(host_chunks, page, HOST_TIER_POLICIES[policy][1])
    worker = TransferWorker(settings.transfer, chunk_bytes=block_size * token_scale * settings.kv_bytes_per_token)
    residency = getattr(scheduler_cls, "residency_settings", None)
    if residency is not None:
        link = settings.transfer.load
        per_token = token_scale * settings.kv_bytes_per_token / (link.bandwidth_gb_s * 1e9) + link.t_chunk_s / block_size
        tiered = replace(residency, host_reload_s_per_token=per_token)
        prefetch = PrefetchSettings(enabled=policy in PREFETCH_POLICIES)
        scheduler_cls = type(
            f"{scheduler_cls.__name__}HostTier", (scheduler_cls,), {"residency_settings": tiered, "prefetch_settings": prefetch}
        )
    return HostTier(config, worker, scheduler_cls)
