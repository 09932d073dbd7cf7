"""vLLM's real v1 ``Scheduler`` and ``KVCacheManager``, stepped without a GPU.

:class:`VllmEngine` builds the scheduler exactly as vLLM's engine core would for a
Llama-shaped model (a ``config.json`` written to a temporary folder, no weights, no
tokenizer), with prefix caching on and a KV cache of ``num_blocks`` blocks. Each
:meth:`VllmEngine.step` calls ``Scheduler.schedule()``, then hands
``Scheduler.update_from_output()`` a ``ModelRunnerOutput`` that "samples" the planned
output token of every request whose prefill is complete, as the GPU model runner does
(partial prefill chunks sample nothing). Requests the scheduler adds itself (prefetches,
:mod:`cachewise.runtime.prefetch`) are run like any other (token 0) and never reported as
finished: :attr:`StepResult.finished` holds the replay's requests only. Requests are sent with ``max_tokens`` equal to
their planned output length and ``ignore_eos``, so every response has exactly its
recorded length.

KV-cache events (``BlockStored`` / ``BlockRemoved``) are turned on and collected from the
scheduler's publisher, which is replaced by an in-memory :class:`EventLog`: that is how
evictions are counted for every policy without touching the block pool.

The config and scheduler come from the one CPU builder
(:mod:`cachewise.runtime.cpu_engine`), wired by the plugin's
:func:`~cachewise.runtime.plugin.wired`, exactly as a served engine is.

Invariant: the engine never changes vLLM's code paths; a policy gets in only through the
:class:`~cachewise.runtime.hooks.PolicyBinding` the engine is built with, which makes vLLM's
own ``KVCacheCoordinator`` build the runtime's ``ScoredBlockPool``, and by the scheduler class
it is built with (``scheduler_cls``: vLLM's ``Scheduler`` or a subclass, a class or a dotted
name, as ``--scheduler-cls`` selects in serving).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from vllm.config import KVEventsConfig, KVTransferConfig, VllmConfig
from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVEventBatch
from vllm.v1.core.block_pool import BlockPool
from vllm.envs import enable_envs_cache
from vllm.v1.core.kv_cache_utils import maybe_convert_block_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request

from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config
from cachewise.runtime.hooks import PolicyBinding

#: Llama-3.1-style ``config.json`` fields the scheduler's ``ModelConfig`` needs (no weights).
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 1048576,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
VOCAB_SIZE = LLAMA_CONFIG["vocab_size"]


@dataclass(frozen=True)
class EngineParams:
    """Scheduler shape in replay tokens (from ``replay.engine`` of params.yaml).

    ``max_num_batched_tokens``: replay tokens per replay step, which is also the trace tokens of
    one real step (a replay step stands for ``token_scale`` real ones, :mod:`cachewise.replay.costmodel`).
    """

    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 512


class EventLog:
    """An in-memory KV-event publisher: keeps the hashes stored and removed since the last take.

    Hashes are vLLM's external block hashes (``maybe_convert_block_hash``), the same form
    :meth:`VllmEngine.block_hashes` returns.
    """

    def __init__(self) -> None:
        self.stored: list = []
        self.removed: list = []

    def publish(self, events: KVEventBatch) -> None:
        for ev in events.events:
            if getattr(ev, "medium", None) not in (None, "GPU"):  # a host tier's own events (cachewise.replay.host_tier)
                continue
            if isinstance(ev, BlockRemoved):
                self.removed.extend(ev.block_hashes)
            elif isinstance(ev, BlockStored):
                self.stored.extend(ev.block_hashes)

    def take(self) -> tuple[list, list]:
        """(stored, removed) since the previous call."""
        out = (self.stored, self.removed)
        self.stored, self.removed = [], []
        return out

    def shutdown(self) -> None:
        """Part of vLLM's publisher interface; nothing to release."""


@lru_cache(maxsize=8)
def _vllm_config(max_model_len: int, params: EngineParams, scheduler_cls: str | type | None) -> VllmConfig:
    """The (costly to build) vLLM config, shared by every engine of the same shape, through
    the one CPU builder (:func:`cachewise.runtime.cpu_engine.make_vllm_config`)."""
    return make_vllm_config(
        0,  # set per engine
        block_size=params.block_size,
        scheduler_cls=scheduler_cls,
        max_model_len=max_model_len,
        max_num_seqs=params.max_num_seqs,
        max_num_batched_tokens=max(params.max_num_batched_tokens, params.block_size),
        model=LLAMA_CONFIG,
        watermark=0.0,
        kv_events_config=KVEventsConfig(enable_kv_cache_events=True, publisher="null"),
    )


@dataclass
class StepResult:
    """What one engine step did (replay tokens).

    ``prefill``: ``(new_tokens, context_tokens)`` per request computing prompt (or
    recomputing preempted) tokens; ``prefilled_blocks``: external hashes of the full blocks
    whose last token was prefilled in this step; ``decode_ctx``: context length of each
    decoding request; ``sampled_after_prefill_ctx``: context length, after the step, of each
    request whose prefill completed in this step (it sampled a token); ``finished``: requests
    that completed in this step; ``preempted``: vLLM preempted requests in this step (it then
    admits no waiting request in the same step, so a step can be idle with the freed blocks
    usable only in the next one).
    """

    prefill: list[tuple[int, int]] = field(default_factory=list)
    prefilled_blocks: list = field(default_factory=list)
    decode_ctx: list[int] = field(default_factory=list)
    sampled_after_prefill_ctx: list[int] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    kv_connector_metadata: Any = None  # the step's jobs for a host tier's worker (None: no connector)
    preempted: bool = False  # vLLM preempted requests in this step (``SchedulerOutput.preempted_req_ids``)

    @property
    def idle(self) -> bool:
        """True when nothing was scheduled (no request could run)."""
        return not self.prefill and not self.decode_ctx


class VllmEngine:
    """One vLLM scheduler with a KV cache of ``num_blocks`` blocks (block 0 is vLLM's null block)."""

    def __init__(
        self,
        num_blocks: int,
        max_model_len: int,
        params: EngineParams,
        scheduler_cls: str | type | None = None,
        binding: PolicyBinding | None = None,
        kv_transfer_config: KVTransferConfig | None = None,
    ):
        self.params = params
        config = _vllm_config(max_model_len, params, scheduler_cls)
        if kv_transfer_config is not None:  # a host tier: vLLM's OffloadingConnector (cachewise.replay.host_tier)
            config = copy.copy(config)
            config.kv_transfer_config = kv_transfer_config
        config.cache_config.num_gpu_blocks = num_blocks
        self.scheduler = make_scheduler(config, binding)
        self.events = EventLog()
        self.scheduler.kv_event_publisher = self.events
        # As vLLM's EngineCore does once the scheduler is built: no env overrides from here on.
        enable_envs_cache()
        self._outputs: dict[str, np.ndarray] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.host_queries = 0  # tokens looked up in / found on the host tier (vLLM's connector stats)
        self.host_hits = 0
        self.transfers: Any = None  # the host tier's simulated worker (set by the runner), None: no tier

    @property
    def block_pool(self):
        """The scheduler's block pool (vLLM's, or the policy's subclass)."""
        return self.scheduler.kv_cache_manager.block_pool

    def add(
        self,
        request_id: str,
        prompt: np.ndarray,
        output: np.ndarray,
        session_id: str | None,
        arrival_time: float,
        hint: dict | None = None,
    ) -> Request:
        """Queue a request, arrived at ``arrival_time``, that will generate exactly ``output``.

        ``hint`` becomes ``SamplingParams.extra_args["cachewise"]``, the client-hint channel
        of :mod:`cachewise.runtime.request_calls`.
        """
        request = make_request(
            request_id,
            prompt.tolist(),
            block_size=self.params.block_size,
            max_tokens=len(output),
            hint=hint,
            session_id=session_id,
            arrival_time=arrival_time,
        )
        self._outputs[request_id] = output
        self.scheduler.add_request(request)
        return request

    @staticmethod
    def block_hashes(request: Request) -> list:
        """External hashes of the request's full blocks, as KV events report them."""
        return [maybe_convert_block_hash(h) for h in request.block_hashes]

    def gpu_prefix_blocks(self, request: Request) -> int:
        """Leading full blocks of ``request``'s prompt cached on the GPU now (vLLM's lookup order,
        at most ``num_tokens - 1`` tokens; read-only, no eviction counted). O(prefix blocks)."""
        pool = self.block_pool
        found = 0
        for block_hash in request.block_hashes[: (request.num_tokens - 1) // self.params.block_size]:
            if BlockPool.get_cached_block(pool, block_hash, [0]) is None:
                break
            found += 1
        return found

    def has_work(self) -> bool:
        """True while some request is waiting or running."""
        return self.scheduler.has_unfinished_requests()

    def step(self, kv_connector_output: Any = None) -> StepResult:
        """Schedule one batch, "run" it, and feed the sampled tokens back (with a host tier's
        ``kv_connector_output``: the transfers its worker completed)."""
        out: SchedulerOutput = self.scheduler.schedule()
        result = StepResult(kv_connector_metadata=out.kv_connector_metadata, preempted=bool(out.preempted_req_ids))
        req_ids = list(out.num_scheduled_tokens)
        sampled: list[list[int]] = []
        for rid in req_ids:
            request = self.scheduler.requests[rid]
            n = out.num_scheduled_tokens[rid]
            before = request.num_computed_tokens - n
            if before >= request.num_prompt_tokens and n == 1:
                result.decode_ctx.append(before)
            else:
                result.prefill.append((n, before))
                bs = self.params.block_size
                done = request.block_hashes[before // bs : (before + n) // bs]
                result.prefilled_blocks.extend(maybe_convert_block_hash(h) for h in done)
                if not request.is_prefill_chunk:
                    result.sampled_after_prefill_ctx.append(before + n)
            if request.is_prefill_chunk:
                sampled.append([])
            else:  # an internal request (a prefetch, cachewise.runtime.prefetch) has no planned output: token 0
                planned = self._outputs.get(rid)
                sampled.append([int(planned[len(request.output_token_ids)]) if planned is not None else 0])
        runner_out = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=sampled,
            kv_connector_output=kv_connector_output,
        )
        scheduled = {rid: self.scheduler.requests[rid] for rid in req_ids if rid in self._outputs}  # the replay's requests
        for core_out in self.scheduler.update_from_output(out, runner_out).values():
            if core_out.scheduler_stats is not None:
                self.prefix_queries += core_out.scheduler_stats.prefix_cache_stats.queries
                self.prefix_hits += core_out.scheduler_stats.prefix_cache_stats.hits
                host = core_out.scheduler_stats.connector_prefix_cache_stats
                if host is not None:
                    self.host_queries += host.queries
                    self.host_hits += host.hits
        for rid, request in scheduled.items():
            if request.is_finished():
                result.finished.append(request)
                self._outputs.pop(rid, None)
        return result
