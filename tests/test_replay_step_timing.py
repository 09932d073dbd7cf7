"""The scaled replay's clock against token_scale 1 on a case small enough to count by hand.

Two one-call sessions start together on an infinite cache (vLLM's real scheduler, a real
step budget of 256 trace tokens): D has a 32-token prompt and answers 1,024 tokens; P has a
4,096-token prompt and answers 16. At token_scale 1 P's prompt is prefilled in 256-token
chunks beside D's decodes (17 steps of ~37 ms), then P decodes 15 tokens beside D: P ends at
0.787 s, D after its 1,023 decode steps at 11.70 s (the context terms aside; they add 1.8%
and 0.6%). At token_scale 16 a replay step stands for 16 real ones: its budget is 256 replay
tokens, so P's whole prompt fits in 2 steps, each prefill chunk is charged as the real chunks
it stands for, and a request whose prefill completes is charged the 15 decode steps of its
first replay token. Both sessions then end when they do at token_scale 1 (measured: within
0.02%; 0.5% allowed, for the context terms).

The model this replaces (budget divided by 16, nothing charged for the first replay token)
ends P at 3.44 s: each 240-token chunk rode with 16 decode steps. With the budget fixed but
no first-token charge P ends at 0.615 s (-23%). Either regression fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cachewise.data.schema import validate
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.driver import ArrivalParams, ClosedLoopDriver
from cachewise.replay.engine import EngineParams, VllmEngine
from cachewise.replay.metrics import RunMetrics
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer
from cachewise.replay.workload import WorkloadParams, build_workload
from cachewise.runtime.policy import ManualClock
from tests.event_rows import frame, row

pytestmark = pytest.mark.vllm

SESSIONS = {"D": (32, 1024), "P": (4096, 16)}  # prompt and output trace tokens
REAL_STEP_TOKENS = 256
COSTS = {"prefill": {"a0": 1e-3, "a_tok": 1e-4, "a_ctx": 1e-9}, "decode": {"b0": 1e-2, "b_seq": 1e-3, "b_ctx": 1e-7}}


def _events() -> pd.DataFrame:
    events = frame([row(s, 0, 0.0, 1.0, prompt, output) for s, (prompt, output) in SESSIONS.items()])
    validate(events)
    return events


def _session_ends(tmp_path, token_scale: int) -> dict[str, float]:
    """Simulated time at which each session's last response came, replayed at ``token_scale``."""
    coeffs = tmp_path / "cost.json"
    coeffs.write_text(json.dumps({"shapes": {"s": COSTS}}))
    cost = load_cost_model(coeffs, "s")
    events = _events()
    workload = build_workload(events, WorkloadParams(token_scale=token_scale, system_prompt_tokens=0), list(SESSIONS))
    params = EngineParams(block_size=16, max_num_batched_tokens=REAL_STEP_TOKENS)
    stats = IdleStats({}, np.array([1.0]))  # no policy reads it: vLLM's own pool, infinite cache
    replayer = Replayer(workload, cost, params, PolicyContext(workload, stats))
    engine = VllmEngine(replayer.infinite_blocks, replayer.max_model_len, params)
    metrics = RunMetrics(token_scale=token_scale, block_size=params.block_size)
    ClosedLoopDriver(workload, replayer.synth, engine, cost, ArrivalParams(concurrency=2), metrics, ManualClock()).run()
    assert metrics.preemptions == 0
    return {workload.sessions[i].key: end for i, (_, _, end) in metrics.session_times.items()}


def test_scaled_replay_keeps_token_scale_1_timing(tmp_path) -> None:
    real = _session_ends(tmp_path, 1)
    scaled = _session_ends(tmp_path, 16)
    (p_key,) = [k for k in real if "P" in k]
    (d_key,) = [k for k in real if "D" in k]
    assert real[p_key] == pytest.approx(0.787, rel=0.025)  # by hand (module doc)
    assert real[d_key] == pytest.approx(11.70, rel=0.025)
    assert scaled[p_key] == pytest.approx(real[p_key], rel=0.005)  # P's prefill wait, and its first tokens
    assert scaled[d_key] == pytest.approx(real[d_key], rel=0.005)
