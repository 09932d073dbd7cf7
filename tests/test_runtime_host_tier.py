"""vLLM's real Scheduler on the CPU with its OffloadingConnector (native CPU backend) and the
CacheWise CPU-tier policy loaded through ``cache_policy_module_path``, as ``vllm serve
--kv-offloading-backend native --kv-transfer-config ...`` (README "Host tier") configures it.

Requests of several sessions run through the residency scheduler with a GPU KV cache too
small to keep them all; the worker side (GPU copies) is the replay's simulated
:class:`~cachewise.replay.host_tier.TransferWorker`. Checked: the policy is vLLM's manager's,
attached to the scheduler's one session view; blocks are stored to the host; a session whose
GPU prefix was evicted gets it back from the host (a load job, prefix tokens not recomputed);
every request finishes with its output; nothing is lost.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from vllm.distributed.kv_transfer.kv_connector.v1.offloading_connector import OffloadingConnector
from vllm.v1.outputs import ModelRunnerOutput

from cachewise.replay.host_tier import LinkCost, TransferModel, TransferWorker, offload_transfer_config
from cachewise.runtime import cpu_engine
from cachewise.runtime.cpu_policy import CacheWiseCachePolicy
from cachewise.runtime.scheduler import ResidencyScheduler

pytestmark = pytest.mark.vllm

BS = 16


def build(
    num_blocks: int, host_chunks: int, policy: str = "cachewise", residency: dict | None = None,
    scheduler_cls: str | None = "cachewise.runtime.scheduler.ResidencyScheduler",
):  # fmt: skip
    config = cpu_engine.make_vllm_config(
        num_blocks, BS, scheduler_cls=scheduler_cls, max_model_len=2048,
        additional_config={"cachewise": {"mode": "fallback", "residency": residency}},  # residency needs CacheWise's wiring
    )
    page = cpu_engine.make_kv_cache_config(num_blocks, BS).kv_cache_groups[0].kv_cache_spec.page_size_bytes
    config.kv_transfer_config = offload_transfer_config(host_chunks, page, policy)
    return cpu_engine.make_scheduler(config)


def run(scheduler, worker: TransferWorker, computed: dict | None = None, steps: int = 5000) -> list:
    """Step until done; ``computed``: tokens the GPU computed per request id (filled)."""
    finished, now = [], 0.0
    for _ in range(steps):
        if not scheduler.has_unfinished_requests():
            return finished
        out = scheduler.schedule()
        now = worker.submit(out.kv_connector_metadata, now) + 0.01
        ids = list(out.num_scheduled_tokens)
        for rid, n in out.num_scheduled_tokens.items():
            if computed is not None:
                computed[rid] = computed.get(rid, 0) + n
        reqs = [scheduler.requests[r] for r in ids]
        sampled = [[] if r.is_prefill_chunk else [7] for r in reqs]
        runner = ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled,
            kv_connector_output=worker.poll(now),
        )
        scheduler.update_from_output(out, runner)
        finished.extend(r for r in reqs if r.is_finished())
    raise AssertionError("requests left unfinished")


def test_vllm_scheduler_with_offloading_connector_and_cachewise_policy() -> None:
    scheduler = build(num_blocks=40, host_chunks=400)
    assert isinstance(scheduler, ResidencyScheduler) and isinstance(scheduler.connector, OffloadingConnector)
    manager = scheduler.connector.connector_scheduler.manager
    policy = manager._policy
    assert isinstance(policy, CacheWiseCachePolicy) and policy.view is scheduler.sessions
    worker = TransferWorker(TransferModel(LinkCost(1e-5, 50.0, 3e-6), LinkCost(1e-5, 50.0, 2e-6)), chunk_bytes=BS * 131072)
    rng = random.Random(0)
    prompts = {s: [rng.randrange(1000, 30000) for _ in range(160)] for s in range(4)}
    first = []
    for s, p in prompts.items():
        first.append(cpu_engine.make_request(f"a{s}", p, BS, max_tokens=4, session_id=f"s{s}"))
        scheduler.add_request(first[-1])
    done = run(scheduler, worker)
    assert len(done) == 4 and all(r.num_output_tokens == 4 for r in done)
    assert worker.store_jobs > 0 and len(policy.chunks) >= 4 * 9
    assert {policy.owner_of(k) for k in policy.chunks} <= {f"s{s}" for s in range(4)}
    # Session 0 comes back: its 10 prefix blocks left the 40-block GPU cache (4 x 10 blocks + outputs),
    # so vLLM's connector loads them from the host instead of recomputing them.
    again = cpu_engine.make_request("b0", prompts[0] + [5] * 20, BS, max_tokens=4, session_id="s0")
    scheduler.add_request(again)
    computed: dict[str, int] = {}
    done = run(scheduler, worker, computed)
    assert [r.request_id for r in done] == ["b0"] and done[0].num_output_tokens == 4
    assert worker.load_jobs >= 1 and worker.bytes_loaded > 0
    assert computed["b0"] <= 180 - 9 * BS + 4  # at most the new tail and the outputs were computed


@pytest.mark.parametrize("policy", ["lru", "arc"])
def test_vllms_own_host_policies_build_the_same_way(policy: str) -> None:
    scheduler = build(num_blocks=40, host_chunks=64, policy=policy)
    assert type(scheduler.connector.connector_scheduler.manager._policy).__name__.lower().startswith(policy)


def test_readme_serve_flags_configure_the_connector_and_policy() -> None:
    """The README's ``vllm serve`` host-tier flags, through vLLM's own CLI parser and config builder."""
    import json

    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    extra = {"eviction_policy": "CacheWiseCachePolicy", "cache_policy_module_path": "cachewise.runtime.cpu_policy"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--kv-offloading-size 64 --kv-offloading-backend native" in readme
    assert '"eviction_policy": "CacheWiseCachePolicy"' in readme and '"cache_policy_module_path": "cachewise.runtime.cpu_policy"' in readme
    flags = ["--model", cpu_engine.model_dir(), "--skip-tokenizer-init", "--max-model-len", "2048",
             "--kv-offloading-size", "0.001", "--kv-offloading-backend", "native",
             "--kv-transfer-config", json.dumps({"kv_connector_extra_config": extra})]
    args = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(flags)
    kv = EngineArgs.from_cli_args(args).create_engine_config().kv_transfer_config
    assert kv.kv_connector == "OffloadingConnector" and kv.kv_role == "kv_both"
    assert kv.kv_connector_extra_config["cpu_bytes_to_use"] > 0
    assert {k: kv.kv_connector_extra_config[k] for k in extra} == extra


def test_residency_prices_a_demotion_as_a_reload_with_the_cachewise_host_tier() -> None:
    from cachewise.runtime.residency import prefill_seconds

    tiered = build(num_blocks=40, host_chunks=64, residency={"host_reload_s_per_token": 1e-6})
    settings = tiered.residency.settings
    assert tiered.residency._recompute(20000) == pytest.approx(min(prefill_seconds(settings, 20000), 0.02))
    assert tiered.residency._recompute(20000) < prefill_seconds(settings, 20000)
    lru_tier = build(num_blocks=40, host_chunks=64, policy="lru", residency={"host_reload_s_per_token": 1e-6})
    assert lru_tier.residency._recompute(20000) == prefill_seconds(settings, 20000)  # no CacheWise policy: recompute


def test_the_cpu_policy_reads_the_engine_view_with_vllms_own_scheduler() -> None:
    """No residency scheduler: the policy still orders by the one view the hooks write."""
    scheduler = build(num_blocks=40, host_chunks=400, scheduler_cls=None)
    policy = scheduler.connector.connector_scheduler.manager._policy
    view = scheduler.kv_cache_manager.block_pool.sessions
    assert isinstance(policy, CacheWiseCachePolicy) and view is not None and policy.view is view
    worker = TransferWorker(TransferModel(LinkCost(1e-5, 50.0, 3e-6), LinkCost(1e-5, 50.0, 2e-6)), chunk_bytes=BS * 131072)
    rng = random.Random(0)
    for s in range(3):
        scheduler.add_request(cpu_engine.make_request(f"a{s}", [rng.randrange(1000, 30000) for _ in range(160)], BS, 4, session_id=f"s{s}"))
    assert len(run(scheduler, worker)) == 3
    assert sorted(st.key for st in view) == ["s0", "s1", "s2"] and all(st.finished_calls == 1 for st in view)
    assert worker.store_jobs > 0 and all(policy.owner_of(k) in ("s0", "s1", "s2") for k in policy.chunks)
    assert view.host.held(policy.tier) == len(policy.chunks) > 0  # the view holds the relation, one entry per chunk
    assert sum(view.host.blocks(s) for s in ("s0", "s1", "s2")) == len(policy.chunks)
