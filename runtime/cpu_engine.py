"""vLLM's real scheduler and KV-cache manager on a machine without a GPU: the one CPU builder.

Builds a ``VllmConfig`` for a Llama-shaped model (a ``config.json`` in a temporary folder,
no weights, no tokenizer; :data:`TINY_LLAMA` unless another shape is given), the scheduler
class vLLM would pick for it (``--scheduler-cls``: a dotted name or a class), wired by the
plugin's :func:`~cachewise.runtime.plugin.wired` exactly as in serving, and steps it with
model outputs supplied by the caller, the way ``EngineCore`` does with a GPU. Any further
``VllmConfig`` field (``kv_events_config``, ``kv_transfer_config`` for vLLM's offloading
connector, ...) passes through :func:`make_vllm_config` unchanged. Used by the runtime
tests, the overhead benchmark (with :func:`export_tiny_model` for a loadable model), the
replay (:mod:`cachewise.replay.engine`, which adds KV events and its token bookkeeping), and
as an offline check of CacheWise settings before serving::

    python -m cachewise.runtime.cpu_engine '{"cachewise": {"model": "models/cachewise-reuse"}}'

prints which block pool and scheduler vLLM would run with that ``--additional-config``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, ParallelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import get_hash_fn_by_name  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from cachewise.runtime.hooks import PolicyBinding  # noqa: E402
from cachewise.runtime.plugin import wired  # noqa: E402
from cachewise.runtime.request_calls import HINT_KEY  # noqa: E402

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@lru_cache(maxsize=8)
def model_dir(config_json: str | None = None) -> str:
    """A folder holding ``config_json`` (default :data:`TINY_LLAMA`) as ``config.json``
    (one per distinct config; removed when the process exits)."""
    folder = Path(tempfile.mkdtemp(prefix="cachewise-cpu-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "config.json").write_text(config_json or json.dumps(TINY_LLAMA))
    return str(folder)


def make_vllm_config(
    num_blocks: int,
    block_size: int = 16,
    additional_config: dict[str, Any] | None = None,
    scheduler_cls: str | type | None = None,
    max_model_len: int = 8192,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int = 2048,
    model: dict[str, Any] | None = None,
    watermark: float | None = None,
    **vllm_config_fields: Any,
) -> VllmConfig:
    """An engine config as ``vllm serve`` would build it, for a KV cache of ``num_blocks`` blocks.

    ``model``: the ``config.json`` fields of the model shape (default :data:`TINY_LLAMA`; its
    ``torch_dtype`` is the engine's dtype); ``watermark``: vLLM's scheduler watermark (None:
    vLLM's default); ``vllm_config_fields``: further ``VllmConfig`` fields, passed as given
    (e.g. ``kv_events_config=KVEventsConfig(...)``, ``kv_transfer_config=KVTransferConfig(...)``).
    """
    shape = model or TINY_LLAMA
    sched_extra = {} if watermark is None else {"watermark": watermark}
    config = VllmConfig(
        model_config=ModelConfig(
            model=model_dir(None if model is None else json.dumps(model, sort_keys=True)),
            skip_tokenizer_init=True,
            max_model_len=max_model_len,
            dtype=shape.get("torch_dtype", "float32"),
        ),
        scheduler_config=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=True,
            is_encoder_decoder=False,
            async_scheduling=False,  # vLLM's CPU platform turns it off anyway
            scheduler_cls=scheduler_cls,
            **sched_extra,
        ),
        cache_config=CacheConfig(block_size=block_size, enable_prefix_caching=True),
        parallel_config=ParallelConfig(),
        additional_config=additional_config or {},
        **vllm_config_fields,
    )
    config.cache_config.num_gpu_blocks = num_blocks
    register_all_kvcache_specs(config)
    init_none_hash(get_hash_fn_by_name(config.cache_config.prefix_caching_hash_algo))
    return config


def make_kv_cache_config(num_blocks: int, block_size: int = 16) -> KVCacheConfig:
    """One full-attention KV-cache group of ``num_blocks`` blocks (no tensors)."""
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32)
    return KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])


def make_scheduler(config: VllmConfig, binding: PolicyBinding | None = None) -> Scheduler:
    """The scheduler class vLLM picks for ``config``, built as ``EngineCore`` builds it, under the
    plugin's wiring (:func:`~cachewise.runtime.plugin.wired`): ``binding`` when given (a
    predictor of the caller's, e.g. a replay policy on its clock), else the config's
    ``additional_config["cachewise"]``, else vLLM's own pool."""
    cls = config.scheduler_config.get_scheduler_cls()
    num_blocks = config.cache_config.num_gpu_blocks
    with wired(config, binding):
        return cls(
            vllm_config=config,
            kv_cache_config=make_kv_cache_config(num_blocks, config.cache_config.block_size),
            structured_output_manager=StructuredOutputManager(config),
            block_size=config.cache_config.block_size,
            log_stats=True,
        )


@lru_cache(maxsize=None)
def block_hasher(block_size: int) -> Callable[[Request], list]:
    """vLLM's request block hasher (sha256, as ``CacheConfig``'s default); sets vLLM's NONE_HASH once."""
    hash_fn = get_hash_fn_by_name("sha256")
    init_none_hash(hash_fn)
    return get_request_block_hasher(block_size, hash_fn)


def make_request(
    request_id: str,
    prompt: Sequence[int],
    block_size: int = 16,
    max_tokens: int = 4,
    hint: dict[str, Any] | None = None,
    session_id: str | None = None,
    arrival_time: float | None = None,
) -> Request:
    """A request generating exactly ``max_tokens`` tokens; ``hint`` goes to ``extra_args["cachewise"]``."""
    params = SamplingParams(
        max_tokens=max_tokens,
        ignore_eos=True,
        detokenize=False,
        extra_args={HINT_KEY: hint} if hint is not None else None,
    )
    return Request(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        sampling_params=params,
        pooling_params=None,
        block_hasher=block_hasher(block_size),
        session_id=session_id,
        arrival_time=arrival_time,
    )


def step(scheduler: Scheduler, next_token: Callable[[Request], int] = lambda r: 7) -> list[Request]:
    """One engine step: schedule, "run" (``next_token`` per sampling request), update; the finished requests."""
    out = scheduler.schedule()
    req_ids = list(out.num_scheduled_tokens)
    requests = [scheduler.requests[rid] for rid in req_ids]
    sampled = [[] if r.is_prefill_chunk else [next_token(r)] for r in requests]
    runner = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)}, sampled_token_ids=sampled)
    scheduler.update_from_output(out, runner)
    return [r for r in requests if r.is_finished()]


def run_to_completion(scheduler: Scheduler, max_steps: int = 10000) -> list[Request]:
    """Step until no request is left; the finished requests in finish order."""
    finished: list[Request] = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return finished
        finished.extend(step(scheduler))
    raise RuntimeError(f"requests still unfinished after {max_steps} steps")


def export_tiny_model(folder: Path, spec_changes: dict[str, Any] | None = None) -> Path:
    """A loadable export folder (``model.txt`` + ``spec.json``) of a 5-tree model fitted on
    random data: enough to exercise the learned pool on a CPU without the pipeline."""
    import lightgbm as lgb
    import numpy as np

    from cachewise.features.spec import FEATURE_NAMES, spec_fields
    from cachewise.scoring.exported import write_export
    from cachewise.scoring.idle import N_LEVELS

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(FEATURE_NAMES)))
    y = np.log1p(np.abs(x[:, 0]) * 100)
    booster = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(x, y), 5)
    spec = {**spec_fields(), "residual_quantiles": {"model": list(np.linspace(-1, 1, N_LEVELS))}}
    write_export(folder, booster, {**spec, **(spec_changes or {})})
    return folder


def main(argv: list[str] | None = None) -> int:
    """CLI: build a scheduler with the given ``--additional-config`` JSON and report what CacheWise did."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("additional_config", help="the JSON given to vllm serve --additional-config")
    parser.add_argument("--scheduler-cls", default=None)
    parser.add_argument("--num-blocks", type=int, default=1024)
    args = parser.parse_args(argv)
    from cachewise.runtime.plugin import register

    cachewise_log = logging.getLogger("vllm.cachewise")  # show CacheWise's own lines, as vllm serve would
    cachewise_log.setLevel(logging.INFO)
    if not cachewise_log.handlers:
        cachewise_log.addHandler(logging.StreamHandler())

    register()
    scheduler = make_scheduler(
        make_vllm_config(args.num_blocks, additional_config=json.loads(args.additional_config), scheduler_cls=args.scheduler_cls)
    )
    pool = scheduler.kv_cache_manager.block_pool
    active = getattr(pool, "active", None)
    print(f"scheduler: {type(scheduler).__name__}; block pool: {type(pool).__name__}"
          + ("" if active is None else f" ({'learned order' if active else 'fallback: vLLM order'})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
