"""SWE-agent trajectories -> events on the documented synthetic clock."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cachewise.data.ingest import load_sources
from cachewise.data.report import IngestReport
from cachewise.data.schema import validate
from cachewise.data.swe_agent import DECODE_TOKENS_PER_S, DEFAULT_TOOL_S, LLM_OVERHEAD_S, Malformed, load_file


def _doc(steps: list[dict]) -> dict:
    history = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 400}]
    for step in steps:
        history += [
            {"role": "assistant", "content": step["response"], "action": step["action"]},
            {"role": "tool", "content": step["observation"]},
        ]
    return {"trajectory": steps, "history": history, "info": {"exit_status": "submitted"}}


def _load(path: Path) -> tuple[pd.DataFrame, IngestReport]:
    report = IngestReport()
    return pd.DataFrame(load_file(path, path.parent, report)), report


def test_clock_tokens_and_tools(tmp_path: Path) -> None:
    steps = [
        {
            "action": "find_file a.py",
            "observation": "o" * 80,
            "response": "r" * 200,
            "thought": "",
            "execution_time": "0.5",
        },
        {"action": "python -m pytest -x", "observation": "o" * 40, "response": "r" * 100, "thought": ""},
        {"action": "", "observation": "", "response": "done", "thought": ""},
    ]
    path = tmp_path / "trajectories__run__owner__repo-12.traj"
    path.write_text(json.dumps(_doc(steps)))
    df, report = _load(path)
    assert not report.skipped_lines
    assert (df.time_basis == "synthetic").all() and (df.task_id == "owner__repo-12").all()
    first, second, last = (df.iloc[i] for i in range(3))
    assert first.request_time == 0.0
    assert first.response_time == pytest.approx(LLM_OVERHEAD_S + 50 / DECODE_TOKENS_PER_S)
    tool = first.tool_calls[0]
    assert tool["name"] == "bash" and tool["command_class"] == "search" and tool["observation_bytes"] == 80
    assert tool["end_time"] - tool["start_time"] == pytest.approx(0.5)
    assert second.request_time == pytest.approx(tool["end_time"])
    assert second.tool_calls[0]["command_class"] == "test"
    assert second.tool_calls[0]["end_time"] - second.tool_calls[0]["start_time"] == pytest.approx(DEFAULT_TOOL_S)
    assert [r.prompt_tokens for r in (first, second, last)] == [200, 200 + 70, 200 + 70 + 35]
    assert last.ended_turn and not first.ended_turn
    validate(df)


def test_bad_documents(tmp_path: Path) -> None:
    broken = tmp_path / "broken.traj"
    broken.write_text('{\n  "trajectory": [\n   {"action": ')
    df, report = _load(broken)
    assert df.empty and report.skipped_lines[0].line == 3
    other = tmp_path / "other.traj"
    other.write_text(json.dumps({"something": 1}))
    with pytest.raises(Malformed, match="other.traj"):
        _load(other)
    bad_step = tmp_path / "bad_step.traj"
    bad_step.write_text(json.dumps({"trajectory": [5, {"action": "ls", "observation": "", "response": "x"}]}))
    df, report = _load(bad_step)
    assert len(df) == 1 and "step 0" in report.skipped_lines[0].reason


def test_real_trajectories(shared_traces: Path) -> None:
    folder = shared_traces / "swe-agent"
    df, report = load_sources([folder])
    validate(df)
    files = sorted(folder.glob("*.traj"))
    expected_steps = 0
    timed = 0
    for path in files:
        doc = json.loads(path.read_text())
        steps = doc.get("trajectory")
        if steps is None:
            steps = [m for m in doc["history"] if m.get("role") == "assistant"]
        expected_steps += len(steps)
        timed += sum(1 for s in steps if "execution_time" in s)
    assert df.session_id.nunique() == len(files) == 22
    assert len(df) == expected_steps and not report.skipped_lines
    assert timed == 40  # README: only 40 steps carry execution_time
    assert (df.time_basis == "synthetic").all() and set(df.source) == {"swe_agent"}
    marshmallow = df[df.src_file.str.contains("marshmallow-1867")]
    assert set(marshmallow.task_id) == {"marshmallow-code__marshmallow-1867"}
    classes = pd.Series([tc["command_class"] for calls in df.tool_calls for tc in calls]).value_counts()
    assert {"edit", "read", "search", "python"} <= set(classes.index)
