"""The replayed learned policy sees the feature values training computed for the same recorded call.

Real sessions (../shared/traces, skipped where absent; the embedded synthetic corpus always)
are replayed through vLLM's scheduler at ``token_scale`` 16 with the learned predictor built
exactly as the replay builds it (:func:`cachewise.replay.policies.learned_factory`),
on a model stand-in that records every feature vector it is asked to score. Each vector is
compared with the offline vector of the same events row (``featurize``, the training input).

Equal exactly: every feature that is not clock-derived (token counts, tool calls, model,
thread and session counts, ...). Allowed to differ: the clock-derived ones
(:data:`CLOCK_FEATURES`: latencies, gaps, elapsed times, decayed counters), which the served
runtime computes on its own clock and the replay on the replay clock: the closed loop serves a
call at a different moment than the trace recorded (queueing, a different GPU), and that is
what a served engine would see too.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.features.spec import FEATURE_NAMES
from cachewise.runtime.policy import ReusePrediction
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.engine import EngineParams
from cachewise.replay.policies import REGISTRY, IdleStats, PolicyContext, PolicySpec, learned_factory
from cachewise.replay.runner import Replayer
from cachewise.replay.workload import WorkloadParams, build_workload

pytestmark = pytest.mark.vllm

CLOCK_FEATURES = frozenset(
    n for n in FEATURE_NAMES if n.endswith("_s") or "gap" in n or n.startswith("edc_")
)
TOKEN_SCALE = 16


class RecordingModel:
    """Stands in for an ExportedModel: records each vector (by the request being scored)."""

    def __init__(self) -> None:
        self.conditioner = SimpleNamespace(residual_quantiles=[0.0] * 101)
        self.vectors: dict[str, np.ndarray] = {}
        self.current = ""

    def predict_one(self, vector: np.ndarray) -> float:
        self.vectors[self.current] = np.array(vector, dtype=float)
        return 1.0

    def expected_gap_one(self, label: float, idle: float) -> float:
        return 1.0


class _Tagging:
    """Tells the recording model which request the next vector belongs to."""

    def __init__(self, model: RecordingModel, inner) -> None:
        self.model, self.inner = model, inner

    def on_request_finished(self, request, now: float) -> ReusePrediction:
        self.model.current = request.request_id
        return self.inner.on_request_finished(request, now)


def _cost(tmp: Path):
    path = tmp / "cost.json"
    path.write_text(json.dumps({"shapes": {"s": {"prefill": {"a0": 0.01, "a_tok": 2e-5, "a_ctx": 1.5e-9},
                                                 "decode": {"b0": 0.01, "b_seq": 2.5e-5, "b_ctx": 2.5e-8}}}}))  # fmt: skip
    return load_cost_model(path, "s")


def _compare(events: pd.DataFrame, sessions: list[str], tmp: Path, capsys) -> None:
    events = events[events["session_id"].isin(sessions)].reset_index(drop=True)
    workload = build_workload(events, WorkloadParams(token_scale=TOKEN_SCALE), sessions)
    model = RecordingModel()
    factory = learned_factory(model, EngineParams().block_size)
    REGISTRY["_recording"] = PolicySpec(lambda ctx, clock: _Tagging(model, factory(ctx.workload, clock)))
    try:
        ctx = PolicyContext(workload, IdleStats.fit(events))
        replayer = Replayer(workload, _cost(tmp), EngineParams(max_num_batched_tokens=512), ctx)
        replayer.run_at("_recording", replayer.infinite_blocks, ArrivalParams(concurrency=len(sessions)))
    finally:
        del REGISTRY["_recording"]

    offline = featurize(events, horizon_s=600.0).frame
    offline = offline.set_index(["session_id", "thread_id", "call_index"])
    calls = workload.calls
    assert len(model.vectors) == len(calls), "every replayed call was scored once"
    differs: set[str] = set()
    for call in calls:
        row = events.loc[call.row]
        expected = offline.loc[(row["session_id"], row["thread_id"], row["call_index"]), list(FEATURE_NAMES)]
        got = model.vectors[call.request_id]
        for name, a, b in zip(FEATURE_NAMES, got, expected.to_numpy(dtype=float)):
            same = (np.isnan(a) and np.isnan(b)) or a == b
            if not same:
                differs.add(name)
                assert name in CLOCK_FEATURES, (
                    f"{call.request_id} (events row {call.row}): {name} = {a} in the replay, {b} offline"
                )
    with capsys.disabled():
        print(f"\nfeature parity: {len(calls)} calls; clock-derived features that differed: {sorted(differs)}")
    for name in ("prompt_tokens", "prompt_growth", "output_tokens"):
        assert name not in differs


def test_synthetic_sessions_features_match_training(tmp_path: Path, capsys) -> None:
    generate_corpus(tmp_path / "corpus", seed=5, sessions=6)
    events, _ = load_sources([tmp_path / "corpus"])
    _compare(events, sorted(events["session_id"].unique())[:4], tmp_path, capsys)


@pytest.mark.shared_traces
def test_real_sessions_features_match_training(shared_traces: Path, tmp_path: Path, capsys) -> None:
    folders = sorted(p.parent for p in (shared_traces / "claude-code").rglob("trace.jsonl.gz"))[:8]
    events, _ = load_sources(folders)
    sessions = sorted(events["session_id"].unique())[:6]
    _compare(events, sessions, tmp_path, capsys)
