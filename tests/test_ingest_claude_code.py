"""Claude Code transcripts -> events: exact rules on a small hand-made transcript, facts on the real set."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cachewise.data.claude_code import load_file, parse_time
from cachewise.data.ingest import load_sources
from cachewise.data.report import IngestReport
from cachewise.data.schema import validate

T0 = "2026-02-07T01:00:"


def _ts(seconds: float) -> str:
    return f"{T0}{seconds:06.3f}Z"


def _assistant(
    uid: str,
    parent: str,
    t: float,
    msg_id: str,
    block: dict[str, Any],
    *,
    side: bool = False,
    usage: dict[str, Any] | None = None,
    model: str = "claude-3-5-haiku-20241022",
) -> dict[str, Any]:
    usage = usage or {
        "input_tokens": 3,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 2,
    }
    return {
        "type": "assistant",
        "uuid": uid,
        "parentUuid": parent,
        "isSidechain": side,
        "sessionId": "S1",
        "timestamp": _ts(t),
        "requestId": "req_" + msg_id,
        "message": {"id": msg_id, "model": model, "role": "assistant", "content": [block], "usage": usage},
    }


def _user(uid: str, parent: str | None, t: float, content: Any, *, side: bool = False) -> dict[str, Any]:
    return {
        "type": "user",
        "uuid": uid,
        "parentUuid": parent,
        "isSidechain": side,
        "sessionId": "S1",
        "timestamp": _ts(t),
        "message": {"role": "user", "content": content},
    }


def _result(tool_id: str, text: str, error: bool = False) -> list[dict[str, Any]]:
    return [{"type": "tool_result", "tool_use_id": tool_id, "content": text, "is_error": error}]


def _tool(tool_id: str, name: str, inp: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": inp}


def _transcript() -> list[dict[str, Any]]:
    """Main thread: 4 calls (one split over 2 lines, one spawning a Task); a 2-call sidechain."""
    long_text = "x" * 400  # 100 tokens of text, reported output 2: implausible -> estimate
    return [
        _user("u0", None, 0.0, "Fix the bug"),
        _assistant("a1", "u0", 2.0, "m1", {"type": "text", "text": long_text}),
        _assistant("a2", "a1", 3.0, "m1", _tool("t1", "Bash", {"command": "python -m pytest -x"})),
        _user("u1", "a2", 13.0, _result("t1", "1 failed", error=True)),
        _assistant("a3", "u1", 15.0, "m2", _tool("t2", "Task", {"prompt": "find it"})),
        _user("s0", None, 15.5, "find it", side=True),
        _assistant(
            "s1",
            "s0",
            17.0,
            "sm1",
            _tool("t3", "Grep", {"pattern": "def f"}),
            side=True,
            model="claude-sonnet-4-5",
            usage={"input_tokens": 5000, "output_tokens": 40},
        ),
        _user("s2", "s1", 17.1, _result("t3", "f.py:1"), side=True),
        _assistant(
            "s3",
            "s2",
            20.0,
            "sm2",
            {"type": "text", "text": "found in f.py"},
            side=True,
            model="claude-sonnet-4-5",
            usage={"input_tokens": 5100, "output_tokens": 30},
        ),
        _user("u2", "a3", 20.2, _result("t2", "f.py")),
        {"type": "summary", "summary": "x", "leafUuid": "u2"},
        _assistant("a4", "u2", 22.0, "m3", _tool("t4", "Read", {"file_path": "/f.py"})),
        _user("u3", "a4", 22.5, _result("t4", "é" * 10)),
        _assistant("a5", "u3", 25.0, "m4", {"type": "text", "text": "Done."}),
    ]


def _write(folder: Path, lines: list[dict[str, Any]], sidecar: list[dict[str, Any]] | None = None) -> Path:
    folder.mkdir(parents=True)
    path = folder / "trace.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if sidecar is not None:
        (folder / "tool_calls.json").write_text(json.dumps(sidecar))
    return path


def _load(path: Path, root: Path) -> tuple[pd.DataFrame, IngestReport]:
    report = IngestReport()
    return pd.DataFrame(load_file(path, root, report)), report


def test_calls_threads_and_times(tmp_path: Path) -> None:
    path = _write(tmp_path / "repo__task-1" / "attempt_2", _transcript())
    df, report = _load(path, tmp_path)
    assert not report.skipped_lines and report.ignored["summary line"] == 1
    main = df[~df.is_sidechain].sort_values("call_index")
    side = df[df.is_sidechain].sort_values("call_index")
    assert len(main) == 4 and len(side) == 2  # m1's two lines are one call
    assert set(main.thread_id) == {"S1"} and set(side.thread_id) == {"S1:s0"}
    assert set(df.task_id) == {"repo__task-1"} and set(df.source) == {"claude_code"}
    t = parse_time(_ts(0.0))
    assert main.request_time.round(3).tolist() == [t + 0.0, t + 13.0, t + 20.2, t + 22.5]
    assert main.response_time.round(3).tolist() == [t + 3.0, t + 15.0, t + 22.0, t + 25.0]
    assert side.request_time.round(3).tolist() == [t + 15.5, t + 17.1]
    assert main.ended_turn.tolist() == [False, False, False, True] and side.ended_turn.tolist() == [False, True]
    first = main.iloc[0]
    assert first.prompt_tokens == 1103 and first.cached_tokens == 1000
    assert first.output_tokens > 100  # 2 reported, ~100 tokens of text + the tool input
    assert side.iloc[0].output_tokens == 40  # plausible reported value kept
    assert side.iloc[0].model == "claude-sonnet-4-5"


def test_tool_timing_from_transcript_and_sidecar(tmp_path: Path) -> None:
    t = parse_time(_ts(0.0))
    lines = _transcript()
    path = _write(tmp_path / "no_sidecar", lines)
    df, _ = _load(path, tmp_path)
    bash = df[~df.is_sidechain].iloc[0].tool_calls[0]
    assert bash["command_class"] == "test" and bash["is_error"] is True
    assert (bash["start_time"], bash["end_time"]) == (pytest.approx(t + 3.0), pytest.approx(t + 13.0))
    task = df[~df.is_sidechain].iloc[1].tool_calls[0]
    assert task["command_class"] == "subagent" and task["end_time"] - task["start_time"] == pytest.approx(5.2)
    read = df[~df.is_sidechain].iloc[2].tool_calls[0]
    assert read["observation_bytes"] == 20  # 10 x 'é', UTF-8
    sidecar = [
        {"id": "t1", "tool": "Bash", "timestamp": _ts(4.0), "end_timestamp": _ts(12.0)},
        {"id": "t4", "tool": "Read", "timestamp": _ts(22.1)},
    ]
    path = _write(tmp_path / "with_sidecar", lines, sidecar)
    df, _ = _load(path, tmp_path)
    main = df[~df.is_sidechain]
    bash, read = main.iloc[0].tool_calls[0], main.iloc[2].tool_calls[0]
    assert (bash["start_time"], bash["end_time"]) == (pytest.approx(t + 4.0), pytest.approx(t + 12.0))
    assert (read["start_time"], read["end_time"]) == (
        pytest.approx(t + 22.1),
        pytest.approx(t + 22.5),
    )  # no sidecar end


def test_no_cache_reads_in_a_session_means_unknown(tmp_path: Path) -> None:
    no_cache = {"input_tokens": 9000, "output_tokens": 50}
    lines = [
        line if line["type"] != "assistant" else {**line, "message": {**line["message"], "usage": no_cache}}
        for line in _transcript()
    ]
    df, _ = _load(_write(tmp_path / "glm", lines), tmp_path)
    assert df.cached_tokens.isna().all() and (df.prompt_tokens == 9000).all()


def test_session_ending_after_a_tool_call(tmp_path: Path) -> None:
    lines = _transcript()[:3]  # the Bash tool never returned
    df, _ = _load(_write(tmp_path / "cut", lines), tmp_path)
    call = df.iloc[0]
    assert not call.ended_turn and call.tool_calls[0]["end_time"] is None and call.tool_calls[0]["is_error"] is None


def test_sub_agent_run_in_its_own_file(tmp_path: Path) -> None:
    """Newer Claude Code versions write a sub-agent run to agent-<id>.jsonl with the same sessionId."""
    lines = _transcript()
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "S1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines if not x.get("isSidechain")))
    (folder / "agent-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines if x.get("isSidechain")))
    df, report = load_sources([folder])
    assert report.sessions == 1 and not report.skipped_files
    assert df.groupby("thread_id").size().to_dict() == {"S1": 4, "S1:s0": 2}
    assert (df.task_id == "S1").all()  # no task folder: the session id


# --- the real transcripts --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(shared_traces: Path) -> tuple[pd.DataFrame, IngestReport]:
    return load_sources([shared_traces / "claude-code"])


def _lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_real_totals_and_schema(real, shared_traces: Path) -> None:
    df, report = real
    validate(df)
    transcripts = list((shared_traces / "claude-code").rglob("trace.jsonl.gz"))
    assert set(df.source) == {"claude_code"}
    assert df.session_id.nunique() == len(transcripts) <= 213
    assert 0.5 * 8381 < len(df) <= 8381  # README: 8,381 calls on the full set, part held back
    assert not report.skipped_lines
    assert (df.ended_turn == df.tool_calls.map(len).eq(0)).all()


def test_real_calls_are_message_groups(real, shared_traces: Path) -> None:
    df, _ = real
    path = shared_traces / "claude-code/all_images_haiku/dask__dask-11628/attempt_1/trace.jsonl.gz"
    lines = _lines(path)
    last_line_time: dict[str, float] = {}
    for line in lines:
        if line["type"] == "assistant":
            last_line_time[line["message"]["id"]] = parse_time(line["timestamp"])
    rows = df[df.src_file.str.endswith("dask__dask-11628/attempt_1/trace.jsonl.gz") & df.src_file.str.contains("haiku")]
    assert len(rows) == len(last_line_time)
    assert sorted(rows.response_time.round(3)) == sorted(round(v, 3) for v in last_line_time.values())
    assert (rows.task_id == "dask__dask-11628").all()


def test_real_sidechain_threads(real, shared_traces: Path) -> None:
    df, _ = real
    path = shared_traces / "claude-code/all_images_haiku/pre-commit__pre-commit-973/attempt_1/trace.jsonl.gz"
    lines = _lines(path)
    side_msgs = {line["message"]["id"] for line in lines if line["type"] == "assistant" and line.get("isSidechain")}
    first_side = next(line for line in lines if line.get("isSidechain"))
    rows = df[df.src_file.str.contains("pre-commit__pre-commit-973/")]
    side = rows[rows.is_sidechain]
    assert set(side.thread_id) == {f"{first_side['sessionId']}:{first_side['uuid']}"}
    assert len(side) == len(side_msgs)
    task = [tc for calls in rows[~rows.is_sidechain].tool_calls for tc in calls if tc["name"] == "Task"]
    assert len(task) == 1 and task[0]["end_time"] >= side.response_time.max()


def test_real_facts_match_the_readme(real) -> None:
    df, _ = real
    main = df[~df.is_sidechain].sort_values(["thread_id", "call_index"])
    growth = main.groupby("thread_id").prompt_tokens.diff().dropna()
    print(f"\nreal main-thread prompt growth median {growth.median():.0f} tokens/call (README 447)")
    assert 350 <= growth.median() <= 550 and (growth >= 0).all()  # prompts only grow on main threads
    calls = df.groupby("session_id").size()
    assert 25 <= calls.median() <= 45 and calls.max() <= 146
    tools = pd.DataFrame([tc for calls in df.tool_calls for tc in calls])
    duration = (tools.end_time - tools.start_time).groupby(tools.name)
    med = duration.median()
    assert 0.9 <= med["Bash"] <= 2.0 and 0.005 <= med["Read"] <= 0.05 and 40 <= med["Task"] <= 100
    assert 6 <= duration.quantile(0.9)["Bash"] <= 15
    assert (tools.end_time.isna() | (tools.end_time >= tools.start_time)).all()


def test_real_tokens_by_model(real) -> None:
    df, _ = real
    glm = df[df.model.str.contains("GLM")]
    haiku35 = df[df.model == "claude-3-5-haiku-20241022"]
    assert len(glm) and glm.cached_tokens.isna().all()  # the local server reports no cache reads
    assert haiku35.cached_tokens.notna().mean() > 0.99
    assert haiku35.output_tokens.median() > 10  # not the streaming-start value 2
    assert (df.prompt_tokens > 0).all() and (df.output_tokens > 0).all()


def test_real_task_ids_and_sidecar_only_folders(real, shared_traces: Path) -> None:
    df, report = real
    tasks = dict(zip(df.src_file, df.task_id))
    starlette = [t for f, t in tasks.items() if "branchfs_motivation" in f and "swebench" in f]
    assert starlette and set(starlette) == {"encode__starlette-1147"}  # from results_meta.json's image
    no_meta = [(f, t) for f, t in tasks.items() if f.endswith("smoke_cgroup_20260304_223818/trace.jsonl.gz")]
    assert no_meta and no_meta[0][1] == df[df.src_file == no_meta[0][0]].session_id.iloc[0]
    sidecar_only = {
        p.parent
        for p in (shared_traces / "claude-code").rglob("tool_calls.json.gz")
        if not (p.parent / "trace.jsonl.gz").exists()
    }
    assert len(report.skipped_files) == len(sidecar_only) > 0
    assert all("sidecar without a transcript" in s.reason for s in report.skipped_files)
