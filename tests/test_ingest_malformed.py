"""Malformed input never crashes the transcript parser; every bad line is reported; good lines load.

Property-based (hypothesis): garbage lines, truncated files, truncated gzip streams and JSON
mutations of a realistic transcript (one session of the synthetic corpus with a sub-agent).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cachewise.data.claude_code import METADATA_TYPES, load_file
from cachewise.data.report import IngestReport
from cachewise.data.schema import to_table, validate
from cachewise.data.synthetic import generate_corpus

MAX_LINES = 160
FUZZ = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def base_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Lines of a synthetic session that has a sidechain and multi-line responses."""
    root = tmp_path_factory.mktemp("fuzzbase")
    for seed in range(200):
        info = generate_corpus(root / f"s{seed}", seed, 1)
        raw = next(info.path.rglob("trace.jsonl")).read_bytes().splitlines(keepends=True)
        side = [i for i, line in enumerate(raw) if b'"isSidechain": true' in line]
        if side and side[-1] < MAX_LINES:
            return raw[:MAX_LINES]
    raise AssertionError("no seed gives a session with an early sub-agent run")


def _load(data: bytes, name: str = "trace.jsonl") -> tuple[list[dict[str, Any]], IngestReport]:
    report = IngestReport()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        rows = load_file(path, Path(tmp), report)
    if rows:
        validate(pd.DataFrame(rows))
        to_table(pd.DataFrame(rows))  # every string is writable
    return rows, report


def _message_ids(lines: list[bytes]) -> set[str]:
    ids = set()
    for line in lines:
        obj = json.loads(line)
        if obj["type"] == "assistant":
            ids.add(obj["message"]["id"])
    return ids


def _is_metadata(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and obj["type"] in METADATA_TYPES


_GARBAGE = st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b.strip() != b"")


@FUZZ
@given(data=st.data())
def test_garbage_lines_are_reported_and_the_rest_loads(base_lines: list[bytes], data: st.DataObject) -> None:
    bad = data.draw(st.sets(st.integers(0, len(base_lines) - 1), min_size=1, max_size=12))
    lines = list(base_lines)
    for i in bad:
        lines[i] = data.draw(_GARBAGE) + b"\n"
    rows, report = _load(b"".join(lines))
    reported = {s.line for s in report.skipped_lines}
    assert reported <= {i + 1 for i in bad}
    assert all(_is_metadata(lines[i]) for i in bad if i + 1 not in reported)
    intact = [line for i, line in enumerate(base_lines) if i not in bad]
    assert len(rows) == len(_message_ids(intact))


def test_a_first_garbage_line_that_starts_with_the_gzip_magic_does_not_hide_the_rest(base_lines: list[bytes]) -> None:
    """Hypothesis found it: a plain file whose first line is ``1f 8b`` garbage was read as a corrupt gzip
    stream and lost every line. The line is reported; the others load."""
    rows, report = _load(b"\x1f\x8b\n" + b"".join(base_lines[1:]))
    assert [s.line for s in report.skipped_lines] == [1]
    assert len(rows) == len(_message_ids(base_lines[1:]))


@FUZZ
@given(cut=st.integers(min_value=0))
def test_truncated_file(base_lines: list[bytes], cut: int) -> None:
    data = b"".join(base_lines)
    data = data[: cut % (len(data) + 1)]
    rows, report = _load(data)
    complete = data.split(b"\n")
    partial = complete[-1]
    whole = [line + b"\n" for line in complete[:-1]]
    if partial.strip():
        try:
            json.loads(partial)
        except ValueError:
            assert [s.line for s in report.skipped_lines] == [len(whole) + 1]
            assert "truncated" in report.skipped_lines[0].reason
    else:
        assert not report.skipped_lines
        assert len(rows) == len(_message_ids(whole))


@FUZZ
@given(cut=st.integers(min_value=0))
def test_truncated_gzip(base_lines: list[bytes], cut: int) -> None:
    full = gzip.compress(b"".join(base_lines))
    data = full[: cut % len(full)]  # always strictly shorter than the stream
    rows, report = _load(data, "trace.jsonl.gz")
    if data:
        assert report.skipped_lines  # the cut is always reported
    assert len(rows) <= len(_message_ids(base_lines))


def _valid_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _must_reject(obj: dict[str, Any]) -> bool:
    """The structural rules of a user/assistant line (independent of the loader's code)."""
    kind = obj.get("type")
    if kind not in ("user", "assistant"):
        return not isinstance(kind, str) or kind not in METADATA_TYPES
    message = obj.get("message")
    if not isinstance(message, dict) or not _valid_time(obj.get("timestamp")):
        return True
    if not isinstance(obj.get("isSidechain", False), bool):
        return True
    content = message.get("content")
    if isinstance(content, str):
        return obj["type"] == "assistant" and message.get("model") != "<synthetic>"
    return not isinstance(content, list) or not all(
        isinstance(b, dict) and isinstance(b.get("type"), str) for b in content
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["\ud800", "x\udfff", "2026-02-07T01:00:00Z", "user", "assistant", "tool_use", 2**70]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = (
    "timestamp",
    "type",
    "message",
    "isSidechain",
    "uuid",
    "parentUuid",
    "sessionId",
    "message.content",
    "message.usage",
    "message.id",
    "message.model",
    "block",
    "block.type",
    "block.input",
)


def _mutate(obj: dict[str, Any], field: str, value: Any, delete: bool) -> None:
    target: Any = obj
    key = field
    if field.startswith("message.") and isinstance(obj.get("message"), dict):
        target, key = obj["message"], field.split(".", 1)[1]
    elif (
        field.startswith("block")
        and isinstance(obj.get("message"), dict)
        and isinstance(obj["message"].get("content"), list)
        and obj["message"]["content"]
    ):
        blocks = obj["message"]["content"]
        if field == "block":
            blocks[0] = value
            return
        target, key = blocks[0], field.split(".", 1)[1]
    if isinstance(target, dict):
        if delete:
            target.pop(key, None)
        else:
            target[key] = value


@FUZZ
@given(data=st.data())
def test_json_mutations_are_reported_or_loaded(base_lines: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(base_lines) - 1))
    obj = json.loads(base_lines[index])
    _mutate(obj, data.draw(st.sampled_from(_FIELDS)), data.draw(_JSON), data.draw(st.booleans()))
    lines = list(base_lines)
    lines[index] = json.dumps(obj).encode() + b"\n"
    rows, report = _load(b"".join(lines))
    reported = {s.line for s in report.skipped_lines}
    assert reported <= {index + 1}
    if _must_reject(obj):
        event("structurally invalid line")
        assert reported == {index + 1}
    for row in rows:
        assert row["request_time"] <= row["response_time"]
        assert row["output_tokens"] >= 0 and (row["prompt_tokens"] is None or row["prompt_tokens"] >= 0)
