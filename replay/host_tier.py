"""The host-memory KV tier in the replay: vLLM's own OffloadingConnector, a simulated copy engine.

The scheduler side is vLLM's, unchanged: the engine is built with a ``kv_transfer_config``
naming the ``OffloadingConnector`` (native CPU backend, :func:`offload_transfer_config`), so
vLLM's ``OffloadingConnectorScheduler`` and ``CPUOffloadingManager`` (with vLLM's ``lru`` or
``arc`` policy, or CacheWise's :class:`~cachewise.runtime.cpu_policy.CacheWiseCachePolicy`
through ``cache_policy_module_path``) decide what is stored, looked up, loaded and evicted.
Only the worker side, which needs a GPU, is simulated by :class:`TransferWorker`: it reads
each step's ``OffloadingConnectorMetadata`` (load and store jobs, jobs to flush) and reports
completions back through ``KVConnectorOutput`` (``kv_connector_worker_meta.completed_jobs``,
``finished_recving`` for loads), as vLLM's ``OffloadingConnectorWorker.get_finished`` does.

Timing (the measured coefficients, ``replay/transfer_coefficients.json``, H200 PCIe Gen5):
``transfer_s = t0 + bytes / bandwidth + chunks * t_chunk`` per job, one FIFO link per
direction (loads host→GPU, stores GPU→host), jobs queued in the order vLLM emits them.
Counted as vLLM counts them:

* loads are asynchronous (vLLM's default, ``sync_load_budget_bytes`` 0): the request waits in
  ``WAITING_FOR_REMOTE_KVS`` while other requests keep stepping; its load time is charged
  to *that request* (it becomes schedulable once the job completes), not to the step.
  :attr:`TransferWorker.load_wait_s` sums, over load jobs, the time from submission to completion
  (queueing behind earlier loads on the link included): what the requests waited for their
  loads, and so the most a perfect prefetch (every load done before its request arrives)
  could take off the sessions' times;
* stores overlap compute and delay nothing, except when vLLM must reuse a GPU block whose
  store is still in flight: it then names the job in ``jobs_to_flush`` and the worker waits
  for it before the forward pass: that wait is charged to *the step* (:attr:`TransferWorker.stall_s`).

Completions are reported at the start of the first step that begins at or after their end
(vLLM reports them with the step's model-runner output; the replay does not know a step's
duration before it has scheduled it, so a completion is seen at most one step late).

Bytes: one replay block stands for ``block_tokens`` trace tokens of ``kv_bytes_per_token``
bytes each (Llama-3.1-8B bf16: 128 KiB per token).

Complexity: O(jobs) per step; memory O(jobs in flight).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.common import (
    OffloadingConnectorMetadata,
    OffloadingWorkerMetadata,
)
from vllm.v1.kv_offload.cpu.spec import CPUOffloadingSpec
from vllm.v1.outputs import KVConnectorOutput

from cachewise.runtime.cpu_policy import MODULE_PATH, POLICY_NAME

LLAMA_8B_KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers * kv heads * head dim * (K, V) * bf16 = 128 KiB


class TransferModelError(ValueError):
    """The transfer coefficient file is missing or malformed (the message names it)."""


@dataclass(frozen=True)
class LinkCost:
    """One direction of the host link: ``seconds(bytes, chunks) = t0 + bytes / bw + chunks * t_chunk``."""

    t0_s: float
    bandwidth_gb_s: float
    t_chunk_s: float

    def seconds(self, num_bytes: float, chunks: int) -> float:
        if chunks <= 0:
            return 0.0
        return self.t0_s + num_bytes / (self.bandwidth_gb_s * 1e9) + chunks * self.t_chunk_s


@dataclass(frozen=True)
class TransferModel:
    """Measured host↔GPU copy costs: ``load`` (host→GPU) and ``store`` (GPU→host)."""

    load: LinkCost
    store: LinkCost


def load_transfer_model(path: str | Path) -> TransferModel:
    """The ``fits`` of ``replay/measure_transfer.py``'s JSON at ``path``; :class:`TransferModelError` naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TransferModelError(f"{path}: transfer coefficient file not found (written by replay/measure_transfer.py)") from exc
    except json.JSONDecodeError as exc:
        raise TransferModelError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    links = {}
    for direction in ("load", "store"):
        fit = (doc.get("fits") or {}).get(direction) if isinstance(doc, dict) else None
        if not isinstance(fit, dict):
            raise TransferModelError(f"{path}: no fits.{direction}")
        try:
            link = LinkCost(float(fit["t0_s"]), float(fit["bandwidth_gb_s"]), float(fit["t_chunk_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransferModelError(f"{path}: fits.{direction} needs numbers t0_s, bandwidth_gb_s, t_chunk_s: {exc}") from exc
        if not (link.bandwidth_gb_s > 0 and math.isfinite(link.bandwidth_gb_s)) or min(link.t0_s, link.t_chunk_s) < 0:
            raise TransferModelError(f"{path}: fits.{direction} = {fit} is not a valid link (bandwidth > 0, times >= 0)")
        links[direction] = link
    return TransferModel(**links)


def offload_transfer_config(
    host_chunks: int, page_bytes: int, eviction_policy: str = "lru", extra: dict[str, Any] | None = None
) -> KVTransferConfig:
    """vLLM's ``kv_transfer_config`` for native CPU offloading with room for ``host_chunks`` chunks
    of one block (``page_bytes``: the engine's KV bytes per block), as ``vllm serve
    --kv-offloading-backend native --kv-transfer-config ...`` builds it.

    ``eviction_policy``: ``lru`` | ``arc`` (vLLM's) | ``cachewise`` (CacheWise's, by module path)."""
    aligned = -(-page_bytes // CPUOffloadingSpec.BLOCK_SIZE_ALIGNMENT) * CPUOffloadingSpec.BLOCK_SIZE_ALIGNMENT
    config: dict[str, Any] = {"cpu_bytes_to_use": host_chunks * aligned, **(extra or {})}
    if eviction_policy == "cachewise":
        config.update(eviction_policy=POLICY_NAME, cache_policy_module_path=MODULE_PATH)
    elif eviction_policy in ("lru", "arc"):
        config["eviction_policy"] = eviction_policy
    else:
        raise ValueError(f"unknown host-tier eviction policy {eviction_policy!r} (lru | arc | cachewise)")
    return KVTransferConfig(kv_connector="OffloadingConnector", kv_role="kv_both", kv_connector_extra_config=config)


@dataclass
class _Job:
    job_id: int
    req_id: str
    is_load: bool
    chunks: int
    done_at: float


@dataclass
class TransferWorker:
    """The simulated worker side of vLLM's OffloadingConnector (module doc).

    ``chunk_bytes``: real bytes one offloaded chunk (one replay block) stands for.
    """

    model: TransferModel
    chunk_bytes: float
    _links: dict[bool, float] = field(default_factory=lambda: {True: 0.0, False: 0.0})  # is_load -> link free at
    _inflight: dict[int, _Job] = field(default_factory=dict)
    bytes_loaded: float = 0.0
    bytes_stored: float = 0.0
    load_s: float = 0.0
    load_wait_s: float = 0.0
    store_s: float = 0.0
    stall_s: float = 0.0
    load_jobs: int = 0
    store_jobs: int = 0

    def submit(self, metadata: Any, now: float) -> float:
        """Queue this step's jobs (``SchedulerOutput.kv_connector_metadata``) at ``now``; returns the
        time the step's forward pass can start (later than ``now`` only when it must flush stores)."""
        if not isinstance(metadata, OffloadingConnectorMetadata):
            return now
        start = now
        for job_id in metadata.jobs_to_flush or ():
            job = self._inflight.get(job_id)
            if job is not None and not job.is_load:
                start = max(start, job.done_at)
        self.stall_s += start - now
        for jobs, is_load in ((metadata.load_jobs, True), (metadata.store_jobs, False)):
            for job_id, job in jobs.items():
                chunks = len(job.src_spec.block_ids if is_load else job.dst_spec.block_ids)
                link = self.model.load if is_load else self.model.store
                seconds = link.seconds(chunks * self.chunk_bytes, chunks)
                begin = max(start, self._links[is_load])
                self._links[is_load] = done = begin + seconds
                self._inflight[job_id] = _Job(job_id, job.req_id, is_load, chunks, done)
                if is_load:
                    self.bytes_loaded += chunks * self.chunk_bytes
                    self.load_s += seconds
                    self.load_wait_s += done - start
                    self.load_jobs += 1
                else:
                    self.bytes_stored += chunks * self.chunk_bytes
                    self.store_s += seconds
                    self.store_jobs += 1
        return start

    def poll(self, now: float) -> KVConnectorOutput | None:
        """Completions of jobs done by ``now``, as the worker's ``KVConnectorOutput`` (None: none)."""
        done = [j for j in self._inflight.values() if j.done_at <= now]
        if not done:
            return None
        meta = OffloadingWorkerMetadata()
        recving = set()
        for job in done:
            del self._inflight[job.job_id]
            meta.mark_completed(job.job_id)
            if job.is_load:
                recving.add(job.req_id)
        return KVConnectorOutput(finished_recving=recving, kv_connector_worker_meta=meta)

    def next_completion(self) -> float | None:
        """When the earliest job in flight completes (None: nothing in flight)."""
        return min((j.done_at for j in self._inflight.values()), default=None)

    @staticmethod
    def empty_summary() -> dict[str, float]:
        """:meth:`summary`'s columns for a run without a host tier (all 0)."""
        return dict.fromkeys(TransferWorker(TransferModel(LinkCost(0, 1, 0), LinkCost(0, 1, 0)), 0).summary(), 0.0)

    def summary(self) -> dict[str, float]:
        """Bytes moved each way (real bytes), link-busy seconds, requests' load waits, flush stalls, job counts."""
        return {
            "host_bytes_loaded": self.bytes_loaded,
            "host_bytes_stored": self.bytes_stored,
            "host_load_s": self.load_s,
            "host_load_wait_s": self.load_wait_s,
            "host_store_s": self.store_s,
            "host_flush_stall_s": self.stall_s,
            "host_load_jobs": self.load_jobs,
            "host_store_jobs": self.store_jobs,
        }
