"""The replay harness against a trace small enough to replay by hand (real vLLM scheduler).

Three sessions A, B, C start together; each makes two calls. Call 0: a 32-token prompt
(2 blocks of 16) and a 1-token answer that asks for a tool; call 1 comes back after the
recorded tool time (A: 1 s, B: 5 s, C: 10 s) with a 48-token prompt (call 0's prompt, its
answer, 15 tool-result tokens: 3 blocks) and ends the session. Engine steps cost ~1 ms, so
the three calls 0 share the first step and every call 1 runs alone.

KV cache: 7 blocks = vLLM's null block + 6. After the first step the 6 blocks hold
A0 A1 B0 B1 C0 C1 (all free, cached); vLLM freed each chain tail first, requests in order,
so its free queue is A1 A0 B1 B0 C1 C0.

vLLM LRU, by hand:
  t=1  A hits A0 A1 (leave the queue), needs 1 block: evicts B1 (queue head).     1 harmful
       A ends and frees A2 A1 A0 -> queue B0 C1 C0 A2 A1 A0.
  t=5  B hits B0 only, needs 2 blocks: evicts C1, C0.                              2 harmful
  t=10 C hits nothing, needs 3 blocks: evicts A2 A1 A0 (A is done: harmless).
  => 6 evictions, 3 harmful.

recorded_gap (evict the block whose recorded next use is farthest; ended prefixes first):
  t=1  A needs 1 block: C's chain is needed last (t=10): evicts its leaf C1.      1 harmful
       A ended: its blocks go first from now on.
  t=5  B hits B0 B1, needs 1 block: evicts A's leaf A2.
  t=10 C hits C0, needs 2 blocks: evicts A1, A0.
  => 4 evictions, 1 harmful.

Belady's MIN over the same access sequence (chains needed: each call 0's 2 blocks on arrival
and on finish, then A's, B's, C's 3 blocks on arrival and on finish) with 6 blocks makes the
choices of recorded_gap: 1 harmful miss (C1), so every policy's run reports MIN = 1 (16
recomputed tokens).

An infinite cache evicts nothing. In every case each session ends right after its recorded
tool time (steps are ~1 ms), which checks the closed loop.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cachewise.data.schema import COLUMNS, validate
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.engine import EngineParams
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer
from cachewise.replay.workload import WorkloadParams, build_workload

pytestmark = pytest.mark.vllm

TOOL_TIME = {"A": 1.0, "B": 5.0, "C": 10.0}
LATENCY = 0.5  # recorded LLM latency (not replayed: the engine's own time counts)


def _row(session: str, k: int, t: float, prompt: int, tool: bool) -> dict:
    calls = (
        [
            {
                "name": "Bash",
                "input_json": json.dumps({"command": "pytest -x"}),
                "command_class": "test",
                "start_time": t + LATENCY,
                "end_time": t + LATENCY + TOOL_TIME[session],
                "observation_bytes": 100,
                "is_error": False,
            }
        ]
        if tool
        else []
    )
    return {
        "source": "synthetic",
        "src_file": "hand.jsonl",
        "task_id": f"task-{session}",
        "session_id": session,
        "thread_id": session,
        "is_sidechain": False,
        "call_index": k,
        "model": "hand-model",
        "time_basis": "synthetic",
        "request_time": t,
        "response_time": t + LATENCY,
        "prompt_tokens": prompt,
        "cached_tokens": None,
        "output_tokens": 1,
        "hash_ids": None,
        "tool_calls": calls,
        "ended_turn": not tool,
    }


def hand_events() -> pd.DataFrame:
    rows = []
    for s in "ABC":
        rows.append(_row(s, 0, 0.0, 32, tool=True))
        rows.append(_row(s, 1, LATENCY + TOOL_TIME[s], 48, tool=False))
    frame = pd.DataFrame(rows)[COLUMNS]
    validate(frame)
    return frame


@pytest.fixture(scope="module")
def replayer(tmp_path_factory) -> Replayer:
    coeffs = tmp_path_factory.mktemp("cost") / "cost.json"
    coeffs.write_text(
        json.dumps(
            {
                "shapes": {
                    "tiny": {
                        "prefill": {"a0": 1e-3, "a_tok": 0.0, "a_ctx": 0.0},
                        "decode": {"b0": 1e-3, "b_seq": 0.0, "b_ctx": 0.0},
                    }
                }
            }
        )
    )
    events = hand_events()
    workload = build_workload(events, WorkloadParams(token_scale=1, system_prompt_tokens=0), ["A", "B", "C"])
    ctx = PolicyContext(workload, IdleStats.fit(events))
    return Replayer(
        workload, load_cost_model(coeffs, "tiny"), EngineParams(block_size=16, max_num_batched_tokens=256), ctx
    )


ARRIVALS = ArrivalParams(concurrency=3)


@pytest.mark.parametrize(("policy", "evictions", "harmful"), [("lru", 6, 3), ("recorded_gap", 4, 1), ("infinite", 0, 0)])
def test_evictions_match_hand_count(replayer: Replayer, policy: str, evictions: int, harmful: int) -> None:
    blocks = replayer.infinite_blocks if policy == "infinite" else 7
    result = replayer.run_at(policy, blocks, ARRIVALS)
    assert (result["evictions"], result["harmful_evictions"]) == (evictions, harmful)
    assert result["sessions"] == 3
    assert result["preemptions"] == 0
    if policy != "infinite":
        assert (result["min_harmful_evictions"], result["min_recomputed_tokens"]) == (1, 16)
        assert result["min_harmful_evictions"] <= result["harmful_evictions"]


def test_closed_loop_timing(replayer: Replayer) -> None:
    result = replayer.run_at("lru", 7, ARRIVALS)
    # Sessions end about one tool time after the first step: (1 + 5 + 10) / 3 s, plus ms steps.
    assert result["jct_s_mean"] == pytest.approx(sum(TOOL_TIME.values()) / 3, abs=0.02)
    assert result["service_s_mean"] == pytest.approx(result["jct_s_mean"])  # all three start at t=0
    assert result["makespan_s"] == pytest.approx(max(TOOL_TIME.values()), abs=0.02)


def test_recompute_counts_the_evicted_prefix(replayer: Replayer) -> None:
    # LRU: B recomputes B1 (16 tokens), C recomputes C0 C1 (32); recorded_gap: C recomputes C1 only.
    assert replayer.run_at("lru", 7, ARRIVALS)["recomputed_tokens"] == 48
    assert replayer.run_at("recorded_gap", 7, ARRIVALS)["recomputed_tokens"] == 16


def test_peak_live_working_set(replayer: Replayer) -> None:
    # When A's second call arrives: A's 3 blocks + B's 2 + C's 2 (then A's session ends).
    assert replayer.peak_live_blocks(ARRIVALS) == 7


def test_one_session_at_a_time(replayer: Replayer) -> None:
    # Concurrency 1: sessions run back to back, each alone fits in the cache: nothing harmful.
    result = replayer.run_at("lru", 7, ArrivalParams(concurrency=1))
    assert result["harmful_evictions"] == 0
    assert result["makespan_s"] == pytest.approx(sum(TOOL_TIME.values()), abs=0.05)
    # JCT counts from submission (all at t=0): A 1 s, B waits for A (1 + 5), C for both (16).
    assert result["jct_s_mean"] == pytest.approx((1 + 6 + 16) / 3, abs=0.05)
    assert result["service_s_mean"] == pytest.approx(sum(TOOL_TIME.values()) / 3, abs=0.05)


def test_poisson_arrivals_spread_sessions(replayer: Replayer) -> None:
    # One session per ~1000 s on average: sessions do not overlap, so nothing harmful either.
    result = replayer.run_at("lru", 7, ArrivalParams(concurrency=3, arrival_rate=1e-3, seed=1))
    assert result["harmful_evictions"] == 0
    assert result["makespan_s"] > 100


def test_a_step_that_only_preempted_is_no_stall(replayer: Replayer, monkeypatch) -> None:
    """vLLM admits no waiting request in a step where it preempted one, so such a step schedules
    nothing while the freed blocks serve the next step (the host tier's ReplayStuck: a request
    holding its loaded blocks, a preempted one queued, nothing in flight). The driver steps again
    at the same time: the run is the one without that step, where it used to raise ReplayStuck."""
    from cachewise.replay.engine import StepResult, VllmEngine

    expected = replayer.run_at("lru", 7, ARRIVALS)
    real_step = VllmEngine.step
    injected = []

    def step(self: VllmEngine, kv_connector_output=None) -> StepResult:
        if not injected:  # the first step: vLLM preempted and scheduled nothing
            injected.append(True)
            return StepResult(preempted=True)
        return real_step(self, kv_connector_output)

    monkeypatch.setattr(VllmEngine, "step", step)
    result = replayer.run_at("lru", 7, ARRIVALS)
    assert injected and result["jct_s_mean"] == expected["jct_s_mean"] and result["evictions"] == expected["evictions"]


def test_a_hash_stored_again_after_its_eviction_counts_as_harmful_once() -> None:
    """The harmful-eviction rule's three ways a hash is needed again: a request whose prompt holds it
    arrives; a waiting request prefills it; a host tier loads it back (its ``BlockStored`` after the
    ``BlockRemoved``, with no prefill: missed before session 9). Each eviction counts once."""
    from cachewise.replay.metrics import RunMetrics

    m = RunMetrics(token_scale=1, block_size=16)
    m.on_kv_events(["a", "b", "c"], [])
    m.on_kv_events([], ["a", "b", "c"])  # all three evicted
    m.on_arrival(0, 0, ["a"], 16)  # a: needed by an arriving prompt
    m.on_step(16, ["b"], 0.0, 0.0)  # b: prefilled again for a request that was waiting
    m.on_kv_events(["b", "c"], [])  # b's re-store is the prefill just counted; c: loaded back from the host
    assert (m.evictions, m.harmful_evictions) == (3, 3)
    m.on_arrival(0, 0, ["a", "b", "c"], 48)  # a later arrival counts none of them again
    assert m.harmful_evictions == 3


def test_pool_overhead_counts_the_real_blocks_a_replay_block_stands_for() -> None:
    """A replay block stands for ``token_scale`` vLLM blocks, each of which a served pool handles: the
    pool's share of the GPU time is counted at that scale (it was counted once, 16x too small, before
    session 24), and ``token_scale`` is in the row for the residency report's per-step share."""
    from cachewise.replay.metrics import RunMetrics

    rows = []
    for scale in (1, 16):
        m = RunMetrics(token_scale=scale, block_size=16)
        m.on_step(0, [], 10.0, 0.0)
        m.on_session(0, 0.0, 0.0, 10.0)
        m.policy_cpu_s = 0.05
        rows.append(m.summary())
    assert [r["policy_overhead_pct"] for r in rows] == pytest.approx([0.5, 8.0])
    assert [r["token_scale"] for r in rows] == [1, 16]
