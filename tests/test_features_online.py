"""FeatureState: hand-computed values, bounded memory, and featurize's independence of row order.

That the runtime computes the same features from live requests as featurize does from the
events table is tested where the runtime's own path builds the calls: tests/test_replay_features.py
(vLLM requests through the CallBuilder) and tests/test_serving_log.py (logged, then ingested).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cachewise.data.schema import COLUMNS, validate
from cachewise.features.featurize import featurize
from cachewise.features.online import FeatureState
from cachewise.features.record import FinishedCall, ToolCallInfo
from cachewise.features.spec import (
    CATEGORICAL,
    FEATURE_DOCS,
    FEATURE_NAMES,
    VOCABULARIES,
    features_markdown,
)

IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def tool(name: str, **inp) -> dict:
    """A ``tool_calls`` element of the events table."""
    return {
        "name": name,
        "input_json": json.dumps(inp),
        "command_class": None,
        "start_time": None,
        "end_time": None,
        "observation_bytes": None,
        "is_error": None,
    }


def make_events(calls: list[tuple]) -> pd.DataFrame:
    """Events frame from ``(session, thread, call_index, request, response, tools[, task])`` tuples."""
    rows = []
    for c in calls:
        session, thread, idx, req, resp, tools = c[:6]
        rows.append(
            {
                "source": "claude_code",
                "src_file": f"{session}.jsonl",
                "task_id": c[6] if len(c) > 6 else f"task-{session}",
                "session_id": session,
                "thread_id": thread,
                "is_sidechain": thread != session,
                "call_index": idx,
                "model": "claude-haiku-4-5",
                "time_basis": "wall",
                "request_time": float(req),
                "response_time": float(resp),
                "prompt_tokens": 1000 + 100 * idx,
                "cached_tokens": None,
                "output_tokens": 50 + idx,
                "hash_ids": None,
                "tool_calls": tools,
                "ended_turn": len(tools) == 0,
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    validate(df)
    return df


def call(thread: str, req: float, fin: float, tools=(), session: str = "s", prompt: int = 1000) -> FinishedCall:
    return FinishedCall(thread, session, req, fin, prompt, 10, tuple(tools), not tools, "claude-haiku-4-5")


def test_spec_documents_every_feature_once():
    assert list(FEATURE_NAMES) == list(FEATURE_DOCS)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(CATEGORICAL) <= set(FEATURE_NAMES)
    table = features_markdown()
    for name in FEATURE_NAMES:
        assert f"| `{name}` |" in table


def test_hand_computed_thread_history():
    state = FeatureState()
    bash_test = ToolCallInfo("Bash", {"command": "pytest tests/test_x.py -x"})
    read = ToolCallInfo("Read", {"file_path": "/a/b.py"})
    v0 = state.observe(call("t", 0.0, 2.0, [bash_test], prompt=1000))
    v1 = state.observe(call("t", 7.0, 8.0, [read], prompt=1500))  # gap after call 0: 5 s
    v2 = state.observe(call("t", 8.5, 9.0, [bash_test], prompt=1600))  # gap after call 1: 0.5 s

    for v in (v0, v1, v2):
        assert v.dtype == np.float64 and v.shape == (len(FEATURE_NAMES),)
    assert v0[IDX["thread_calls"]] == 0 and math.isnan(v0[IDX["gap_1"]]) and math.isnan(v0[IDX["prompt_growth"]])
    assert v0[IDX["class_first"]] == VOCABULARIES["command_class"]["test"]
    assert v0[IDX["arg_is_test"]] == 1 and v0[IDX["arg_has_maxfail"]] == 1
    assert v0[IDX["n_class_test"]] == 1 and v0[IDX["n_tool_calls"]] == 1
    assert v0[IDX["llm_latency_s"]] == 2.0 and v0[IDX["thread_elapsed_s"]] == 2.0

    assert v1[IDX["thread_calls"]] == 1
    assert v1[IDX["gap_1"]] == 5.0 and math.isnan(v1[IDX["gap_2"]])
    assert v1[IDX["prompt_growth"]] == 500
    assert v1[IDX["class_first"]] == VOCABULARIES["command_class"]["read"]
    assert math.isnan(v1[IDX["same_class_gap_last"]])  # no earlier read
    assert v1[IDX["edc_10s"]] == pytest.approx(math.exp(-8.0 / 10.0))

    assert v2[IDX["gap_1"]] == 0.5 and v2[IDX["gap_2"]] == 5.0
    assert v2[IDX["gap_mean"]] == pytest.approx(2.75)
    assert v2[IDX["gap_max"]] == 5.0
    assert v2[IDX["gap_ewma"]] == pytest.approx(0.3 * 0.5 + 0.7 * 5.0)
    assert v2[IDX["same_class_gap_last"]] == 5.0  # the earlier test call was idle 5 s
    assert v2[IDX["same_class_count"]] == 1
    assert v2[IDX["session_sig_gap_last"]] == 5.0  # the very same command ran before
    assert v2[IDX["session_sig_count"]] == 1
    assert v2[IDX["thread_elapsed_s"]] == 9.0


def test_ended_turn_and_sidechain_flags():
    state = FeatureState()
    v = state.observe(FinishedCall("s:x", "s", 0.0, 1.0, 10, 5, (), True, "", is_sidechain=True))
    assert v[IDX["ended_turn"]] == 1 and v[IDX["is_sidechain"]] == 1
    assert v[IDX["class_first"]] == 0 and v[IDX["n_tool_calls"]] == 0
    assert v[IDX["model_family"]] == 0


def test_memory_is_bounded_and_dropped_threads_restart():
    state = FeatureState(max_threads=2, max_sessions=2)
    for i in range(5):
        state.observe(call(f"t{i}", 0.0, 1.0, session=f"s{i}"))
    assert len(state) == 2
    v = state.observe(call("t0", 2.0, 3.0, session="s0"))  # t0 was dropped: fresh history
    assert v[IDX["thread_calls"]] == 0


def test_featurize_is_row_order_independent_and_keeps_interleaved_histories_apart():
    bash = tool("Bash", command="python -m pytest -q")
    read = tool("Read", file_path="x.py")
    task = tool("Task", prompt="look around")
    events = make_events(
        [
            ("A", "A", 0, 0.0, 1.0, [bash]),
            ("B", "B", 0, 0.5, 1.5, [read]),
            ("A", "A", 1, 4.0, 5.0, [task]),
            ("A", "A:sub", 0, 5.2, 6.0, [read]),
            ("B", "B", 1, 1.6, 2.5, [bash]),
            ("A", "A:sub", 1, 6.1, 7.0, []),
            ("B", "B", 2, 9.0, 9.5, []),
            ("A", "A", 2, 30.0, 31.0, []),
        ]
    )
    table = featurize(events.sample(frac=1.0, random_state=3), horizon_s=600.0)
    in_order = featurize(events, horizon_s=600.0)
    pd.testing.assert_frame_equal(table.frame, in_order.frame)
    # The two sessions really interleave in finish order, and histories stay separate.
    assert list(table.frame["session_id"][:5]) == ["A", "B", "B", "A", "A"]
    a_main = table.frame[(table.frame.thread_id == "A")]
    assert list(a_main["gap_1"].fillna(-1)) == [-1, 3.0, 25.0]
    b_main = table.frame[(table.frame.thread_id == "B")]
    assert list(b_main["gap_1"].fillna(-1)) == pytest.approx([-1, 0.1, 6.5])


def test_featurize_on_real_traces_is_row_order_independent(shared_traces):
    from cachewise.data.ingest import load_sources

    events, _ = load_sources([shared_traces / "claude-code" / "batch_swebench_18tasks"])
    table = featurize(events, horizon_s=600.0)
    shuffled = featurize(events.sample(frac=1.0, random_state=7), horizon_s=600.0)
    pd.testing.assert_frame_equal(table.frame, shuffled.frame)
    assert table.n_censored >= events.groupby(["session_id", "thread_id"]).ngroups  # at least each thread's last call
    assert np.isfinite(table.frame["label"]).all()


def test_thread_tool_rate_tells_chat_from_agent_traffic() -> None:
    """The traffic-kind feature: share of the thread's calls (this one included) that called a tool."""
    state = FeatureState()
    bash = (ToolCallInfo("Bash", {"command": "pytest"}),)
    rates = []
    for i, tools in enumerate([bash, bash, (), bash]):
        call = FinishedCall("agent", "s", float(10 * i), 10.0 * i + 1, 1000 + i, 10, tools, not tools, "m")
        rates.append(state.observe(call)[IDX["thread_tool_rate"]])
    assert rates == [1.0, 1.0, pytest.approx(2 / 3), 0.75]
    chat = FinishedCall("chat", "c", 0.0, 1.0, 500, 10, (), True, "")
    assert state.observe(chat)[IDX["thread_tool_rate"]] == 0.0
