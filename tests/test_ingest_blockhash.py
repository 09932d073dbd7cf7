"""Block-hash traces (Mooncake, Bailian) -> events: session inference and the real Mooncake trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cachewise.data.blockhash import Request, common_prefix_depth, load_file
from cachewise.data.ingest import load_sources
from cachewise.data.report import IngestReport
from cachewise.data.schema import validate


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _load(path: Path) -> tuple[pd.DataFrame, IngestReport]:
    report = IngestReport()
    return pd.DataFrame(load_file(path, path.parent, report)), report


def _req(ms: int, ids: list[int], **extra: Any) -> dict[str, Any]:
    return {"timestamp": ms, "input_length": 512 * len(ids), "output_length": 10, "hash_ids": ids, **extra}


def test_mooncake_sessions_follow_the_longest_shared_prefix(tmp_path: Path) -> None:
    lines = [
        _req(0, [0, 1, 2]),  # A
        _req(10, [0, 10, 11]),  # B
        _req(20, [0, 1, 2, 3, 4]),  # A continues
        _req(30, [0, 20]),  # C: shares only the global block 0
        _req(40, [0, 10, 11, 12]),  # B continues
        _req(50, [0, 1, 2, 3, 4, 5]),  # A continues
        _req(60, [0, 1, 2, 30]),  # A again: longest known prefix [0,1,2] was last used by A
    ]
    df, report = _load(_write(tmp_path / "trace.jsonl", lines))
    assert not report.skipped_lines
    sessions = df.sort_values("request_time").session_id.tolist()
    a, b, c = sessions[0], sessions[1], sessions[3]
    assert len({a, b, c}) == 3
    assert sessions == [a, b, a, c, b, a, a]
    assert df[df.session_id == a].sort_values("request_time").call_index.tolist() == [0, 1, 2, 3]
    assert df.request_time.max() == pytest.approx(0.060)  # ms -> s
    assert (df.response_time == df.request_time).all() and df.cached_tokens.isna().all()
    assert (df.task_id == df.session_id).all() and (df.thread_id == df.session_id).all()
    validate(df)


def test_bailian_sessions_are_parent_chains(tmp_path: Path) -> None:
    lines = [
        _req(0, [1, 2], chat_id=1, parent_chat_id=-1),
        _req(0, [5], chat_id=2, parent_chat_id=-1),
        _req(0, [1, 2, 3], chat_id=3, parent_chat_id=1),
        _req(0, [1, 2, 3, 4], chat_id=4, parent_chat_id=3),
        _req(0, [9], chat_id=5, parent_chat_id=77),  # parent not in the sample: its own root
        _req(0, [7], chat_id=6, parent_chat_id=7),  # a cycle 6 <-> 7 must not hang
        _req(0, [8], chat_id=7, parent_chat_id=6),
    ]
    for i, line in enumerate(lines):
        line["timestamp"] = 1.5 * i  # Bailian timestamps are seconds
    df, _ = _load(_write(tmp_path / "qwen_trace.jsonl", lines))
    by_chat = dict(zip([line["chat_id"] for line in lines], df.sort_values("request_time").session_id))
    assert by_chat[1] == by_chat[3] == by_chat[4] != by_chat[2]
    assert by_chat[5] not in (by_chat[1], by_chat[2])
    assert by_chat[6] == by_chat[7]
    assert df.request_time.max() == pytest.approx(9.0)


def test_malformed_lines_are_reported(tmp_path: Path) -> None:
    lines = [
        _req(0, [0, 1]),
        "{not json",
        _req(5, "oops"),
        {"timestamp": -1, "input_length": 1, "output_length": 1, "hash_ids": []},
        _req(9, [0, 1, 2]),
    ]
    df, report = _load(_write(tmp_path / "t.jsonl", lines))
    assert len(df) == 2
    assert [s.line for s in report.skipped_lines] == [2, 3, 4]


def test_common_prefix_depth() -> None:
    def r(ids: list[int]) -> Request:
        return Request(0, 0.0, 1, 1, ids, None, None)

    assert common_prefix_depth([r([0, 1, 2]), r([0, 1, 3]), r([])]) == 2
    assert common_prefix_depth([r([0]), r([1])]) == 0


def test_real_mooncake(shared_traces: Path) -> None:
    path = shared_traces / "mooncake" / "conversation_trace.jsonl"
    df, report = load_sources([path])
    validate(df)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(df) == len(raw) == 12031 and not report.skipped_lines
    assert set(df.source) == {"blockhash"}
    assert sorted(map(tuple, df.hash_ids)) == sorted(tuple(r["hash_ids"]) for r in raw)
    # every continuation shares more than the global prefix (block 0) with the call before it
    shared = []
    for _, g in df.sort_values(["session_id", "call_index"]).groupby("session_id"):
        ids = g.hash_ids.tolist()
        for prev, cur in zip(ids, ids[1:]):
            n = 0
            while n < min(len(prev), len(cur)) and prev[n] == cur[n]:
                n += 1
            shared.append(n)
    assert shared and min(shared) >= 2
    sessions = df.groupby("session_id").size()
    gaps = df.sort_values(["session_id", "call_index"]).groupby("session_id").request_time.diff().dropna()
    print(
        f"\nmooncake: {len(sessions)} inferred sessions, {len(shared)} continuations,"
        f" reuse gap median {gaps.median():.0f}s"
    )
    assert 1 < len(sessions) < len(df)
    assert 30 <= gaps.median() <= 400  # README: time between reuses median 114 s
