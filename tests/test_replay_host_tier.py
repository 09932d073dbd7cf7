"""Replay with a host-memory KV tier: vLLM's OffloadingConnector and CPUOffloadingManager (its
lru/arc policies, CacheWise's CPU policy) stepped by the replay, transfers timed by the measured
coefficients (replay/host_tier.py, replay/host_tier_policies.py).

Checked: every session finishes under every tier policy and the tier is used (bytes stored,
prefix tokens loaded from the host instead of recomputed); with ``host_kv_frac`` 0 each
``*_offload`` policy gives exactly its base policy's results (no harm); the transfer model
and the worker's timing rules (FIFO links, async loads charged to requests, flush stalls
charged to the step); bad coefficient files get an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.common import OffloadingConnectorMetadata, TransferJob

from cachewise.cli import main
from cachewise.data.ingest import load_sources
from cachewise.data.schema import write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.replay.host_tier import (
    LinkCost,
    TransferModel,
    TransferModelError,
    TransferWorker,
    load_transfer_model,
)
from cachewise.replay.host_tier_policies import HOST_TIER_POLICIES
from cachewise.runtime.cpu_engine import export_tiny_model

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[1]
TIER = ["vllm_offload", "vllm_offload_arc", "cachewise_offload", "cachewise_prefetch"]
BASE = ["lru", "cachewise"]
COMPARED = ["harmful_evictions", "hit_rate", "prefill_tokens", "recomputed_tokens", "jct_s_mean", "makespan_s", "steps"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("replay_host_tier")
    generate_corpus(tmp / "corpus", seed=5, sessions=10)
    events, _ = load_sources([tmp / "corpus"])
    write_events(events, tmp / "events.parquet")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"replay": {"max_sessions": 6, "split": "all", "workload": {"token_scale": 32},
                                                 "transfer_coefficients": str(REPO / "replay" / "transfer_coefficients.json")}}))
    return {"events": tmp / "events.parquet", "model": export_tiny_model(tmp / "model"), "params": params, "tmp": tmp}


def replay(inputs: dict[str, Path], out: str, host_kv_frac: float) -> pd.DataFrame:
    argv = ["replay", "--params", str(inputs["params"]), "--events", str(inputs["events"]),
            "--model", str(inputs["model"]), "--policies", ",".join(BASE + TIER + ["infinite"]), "--host-kv-frac", str(host_kv_frac),
            "--capacity-frac", "0.25", "--concurrency", "6", "--out", str(inputs["tmp"] / out), "--no-progress",
            "--allow-train-tasks", "--seeds", "1"]  # fmt: skip
    assert main(argv) == 0
    return pd.read_csv(inputs["tmp"] / out / "results.csv").set_index("policy")


def test_tier_policies_finish_every_session_and_use_the_host(inputs: dict[str, Path]) -> None:
    results = replay(inputs, "tier", 2.0)
    assert (results.loc[TIER, "sessions"] == 6).all()
    assert (results.loc[TIER, "host_bytes_stored"] > 0).all() and (results.loc[TIER, "host_store_jobs"] > 0).all()
    assert (results.loc[TIER, "host_hit_tokens"] > 0).all() and (results.loc[TIER, "host_bytes_loaded"] > 0).all()
    assert (results.loc[BASE, "host_bytes_stored"] == 0).all()
    # what the host served was not recomputed
    assert results.at["vllm_offload", "prefill_tokens"] < results.at["lru", "prefill_tokens"]
    assert results.at["vllm_offload", "hit_rate_with_host"] > results.at["vllm_offload", "hit_rate"]
    # only cachewise_prefetch prefetches; every return is counted the same way under every policy
    assert (results.loc[[p for p in BASE + TIER if p != "cachewise_prefetch"], "prefetch_issued"] == 0).all()
    assert (results["returns"] > 0).all() and results["returns_resident_frac"].between(0, 1).all()
    assert results.at["infinite", "returns_resident_frac"] == 1.0 and results.at["lru", "returns_resident_frac"] < 1.0


def test_no_tier_at_host_kv_frac_zero_matches_the_base_policies(inputs: dict[str, Path]) -> None:
    results = replay(inputs, "zero", 0.0)
    pairs = (("vllm_offload", "lru"), ("vllm_offload_arc", "lru"), ("cachewise_offload", "cachewise"), ("cachewise_prefetch", "cachewise"))
    for tier, base in pairs:
        assert HOST_TIER_POLICIES[tier][0] == base
        assert results.loc[tier, COMPARED].tolist() == results.loc[base, COMPARED].tolist(), tier
        assert results.at[tier, "host_bytes_stored"] == 0 and results.at[tier, "prefetch_issued"] == 0


def _meta(loads: dict[int, tuple[str, int]], stores: dict[int, tuple[str, int]], flush: set[int] | None = None):
    def job(req: str, n: int) -> TransferJob:
        spec = SimpleNamespace(block_ids=list(range(n)))
        return TransferJob(req, spec, spec)

    return OffloadingConnectorMetadata(
        load_jobs={j: job(*v) for j, v in loads.items()}, store_jobs={j: job(*v) for j, v in stores.items()}, jobs_to_flush=flush
    )


def test_transfer_worker_timing_rules() -> None:
    link = LinkCost(t0_s=1.0, bandwidth_gb_s=1.0, t_chunk_s=0.5)
    assert link.seconds(2e9, 2) == pytest.approx(1.0 + 2.0 + 1.0) and link.seconds(0, 0) == 0.0
    w = TransferWorker(TransferModel(load=link, store=link), chunk_bytes=1e9)
    assert w.submit(_meta({1: ("a", 1), 2: ("b", 1)}, {3: ("c", 2)}), now=0.0) == 0.0
    # loads share one FIFO link: a done at 2.5, b at 5.0; the store has its own link: done at 4.0
    assert w.poll(2.4) is None
    out = w.poll(2.5)
    assert out.finished_recving == {"a"} and out.kv_connector_worker_meta.completed_jobs == {1: 1}
    assert w.next_completion() == 4.0
    # a step that must reuse the store's blocks waits for it (charged to the step)
    assert w.submit(_meta({}, {}, flush={3}), now=3.0) == 4.0 and w.stall_s == 1.0
    out = w.poll(5.0)
    assert out.finished_recving == {"b"} and set(out.kv_connector_worker_meta.completed_jobs) == {2, 3}
    assert w.summary()["host_bytes_loaded"] == 2e9 and w.summary()["host_bytes_stored"] == 2e9
    # the requests waited for their loads from submission to completion, b behind a on the link: 2.5 + 5.0
    assert w.summary()["host_load_wait_s"] == pytest.approx(7.5)
    assert set(TransferWorker.empty_summary()) == set(w.summary())


def test_transfer_coefficients_load_and_bad_files_name_the_file(tmp_path: Path) -> None:
    model = load_transfer_model(REPO / "replay" / "transfer_coefficients.json")
    assert 40 < model.load.bandwidth_gb_s < 70 and 40 < model.store.bandwidth_gb_s < 70
    bad = tmp_path / "t.json"
    bad.write_text("{")
    with pytest.raises(TransferModelError, match=str(bad)):
        load_transfer_model(bad)
    bad.write_text(json.dumps({"fits": {"load": {"t0_s": 0, "bandwidth_gb_s": 0, "t_chunk_s": 0}}}))
    with pytest.raises(TransferModelError, match="fits.load"):
        load_transfer_model(bad)
    with pytest.raises(TransferModelError, match="not found"):
        load_transfer_model(tmp_path / "missing.json")
