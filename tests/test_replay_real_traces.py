"""Replay of real Claude Code sessions (../shared/traces) through vLLM's scheduler; skipped where absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cachewise.data.ingest import load_sources
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.engine import EngineParams
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer, RunSpec
from cachewise.replay.workload import WorkloadParams, build_workload

pytestmark = [pytest.mark.vllm, pytest.mark.shared_traces]


@pytest.fixture(scope="module")
def replayer(shared_traces: Path, tmp_path_factory) -> Replayer:
    folders = sorted(p.parent for p in (shared_traces / "claude-code").rglob("trace.jsonl.gz"))[:6]
    events, _ = load_sources(folders)
    sessions = sorted(events["session_id"].unique())
    coeffs = tmp_path_factory.mktemp("cost") / "c.json"
    coeffs.write_text(
        json.dumps({"shapes": {"s": {"prefill": {"a0": 0.01, "a_tok": 2e-5, "a_ctx": 1.5e-9},
                                     "decode": {"b0": 0.01, "b_seq": 2.5e-5, "b_ctx": 2.5e-8}}}})
    )  # fmt: skip
    workload = build_workload(events, WorkloadParams(token_scale=32), sessions[:4])
    ctx = PolicyContext(workload, IdleStats.fit(events[~events["session_id"].isin(sessions[:4])]))
    return Replayer(workload, load_cost_model(coeffs, "s"), EngineParams(max_num_batched_tokens=256), ctx)


def test_real_sessions_replay_to_completion(replayer: Replayer) -> None:
    arrivals = ArrivalParams(concurrency=4)
    rows = {p: replayer.run(RunSpec(p, 0.6, arrivals)) for p in ("lru", "heuristic", "recorded_gap", "infinite")}
    calls = len(replayer.w.calls)
    assert calls > 40
    for row in rows.values():
        assert row["sessions"] == 4
        assert 0 <= row["harmful_evictions"] <= row["evictions"]
        assert 0 <= row["recomputed_tokens"] <= row["prefill_tokens"]
        assert row["jct_s_mean"] >= row["service_s_mean"] - 1e-9
    assert rows["infinite"]["evictions"] == 0 and rows["lru"]["evictions"] > 0
    assert rows["infinite"]["hit_rate"] > max(rows[p]["hit_rate"] for p in ("lru", "heuristic", "recorded_gap"))
    assert rows["infinite"]["jct_s_mean"] <= rows["lru"]["jct_s_mean"]
    for p in ("lru", "heuristic", "recorded_gap"):  # MIN of each run's own sequence bounds it from below
        assert rows[p]["min_harmful_evictions"] <= rows[p]["harmful_evictions"]
        assert rows[p]["min_recomputed_tokens"] <= rows[p]["recomputed_tokens"]
    # Every replayed call prefilled at least its novel tokens: an infinite cache recomputes ~nothing.
    assert rows["infinite"]["recomputed_tokens"] <= 0.01 * rows["infinite"]["prefill_tokens"]
