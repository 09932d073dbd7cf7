"""Claude Code transcripts (``~/.claude/projects/**.jsonl[.gz]``) -> events rows.

A transcript is JSON lines of ``type`` ``user`` / ``assistant`` (plus metadata types such as
``summary``). The rules this loader applies, each an invariant of its output:

* **One LLM call per API response.** Claude Code splits one response over several consecutive
  ``assistant`` lines (one content block each) that share ``message.id``; they are grouped
  into one call. ``request_time`` is the timestamp of the last ``user`` line of the same thread
  before the call's first line (the prompt or tool result that triggered it); ``response_time``
  is the timestamp of the call's last line. ``request_time <= response_time`` always (a user
  line stamped after the first response line is clamped to it).
* **Threads.** Non-sidechain lines form the main thread (``thread_id == session_id``). Each
  sub-agent run (``isSidechain`` lines, started by a ``Task`` tool call) is its own thread,
  ``<session_id>:<uuid of the run's first line>``, followed through ``parentUuid`` links; a
  sidechain line whose parent line is missing (skipped as malformed) continues the session's
  most recent sidechain run.
* **Tokens.** ``prompt_tokens = input + cache_creation_input + cache_read_input``.
  ``cached_tokens = cache_read_input_tokens``, but null for a whole session in which no call
  reports a positive cache read (the local GLM server reports none: unknown, not zero).
  ``output_tokens`` is the largest value reported over the response's lines unless that is
  implausible — below a quarter of the text-length estimate ``ceil(chars / 4)`` over text,
  thinking and tool-input JSON (Claude 3.5 Haiku transcripts keep the streaming-start value 2)
  — then the estimate is used.
* **Tools.** Each ``tool_use`` block is a tool call. Its ``start_time`` / ``end_time`` come from
  the ``tool_calls.json[.gz]`` sidecar in the same folder when it has the id, else from the
  transcript: the ``tool_use`` line's timestamp to the matching ``tool_result`` line's; an end
  before the start is clamped to the start; no result -> null end. ``observation_bytes`` is
  the UTF-8 size of the ``tool_result`` content; ``is_error`` its ``is_error`` flag (both null
  without a result). ``ended_turn`` is true when the response has no ``tool_use``.
* **Identity.** ``task_id`` is the folder above ``attempt_<n>``, else the task named by the
  SWE-bench image in a sibling ``results_meta.json``, else the session id. Files written by
  :mod:`cachewise.data.synthetic` (lines carrying :data:`SYNTHETIC_MARK`) get source
  ``synthetic``, all others ``claude_code``.

Lines that carry no call (metadata types, API-error placeholder messages with model
``<synthetic>``) are counted as ignored; the thread's next call is taken as sent after such a
placeholder. Malformed lines are reported with their line number and the rest of the file
still loads.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from cachewise.data.commands import command_class
from cachewise.data.jsonl import MAX_TOKENS, iter_json_lines, read_json_document, utf8_safe
from cachewise.data.report import IngestReport

SOURCE = "claude_code"
SYNTHETIC_SOURCE = "synthetic"
#: Line key set to ``true`` on every line written by :mod:`cachewise.data.synthetic`.
SYNTHETIC_MARK = "cachewiseSynthetic"
SIDECAR_NAMES = ("tool_calls.json", "tool_calls.json.gz")
#: Valid line types that never carry an LLM call.
METADATA_TYPES = frozenset({"summary", "queue-operation", "last-prompt", "system", "file-history-snapshot"})
#: ``message.model`` of the placeholder Claude Code writes when an API request failed.
API_ERROR_MODEL = "<synthetic>"
CHARS_PER_TOKEN = 4
#: Reported output tokens below this fraction of the text-length estimate are implausible.
PLAUSIBLE_OUTPUT_FRACTION = 0.25

_ATTEMPT_DIR = re.compile(r"attempt_\d+")
_SWE_IMAGE = re.compile(r"(?:^|/)(?:sweb\.eval\.[\w-]+?\.)?([\w.-]+?)_1776_([\w.-]+)$")


class Malformed(ValueError):
    """A line has valid JSON but not the structure of a transcript line."""


def parse_time(value: Any) -> float:
    """ISO-8601 timestamp -> epoch seconds; naive times are taken as UTC."""
    if not isinstance(value, str):
        raise Malformed(f"timestamp is {type(value).__name__}, not a string")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as e:
        raise Malformed(f"unparseable timestamp {value[:40]!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class _ToolUse:
    id: str
    name: str
    input: Any
    line_time: float


@dataclass
class _Result:
    time: float
    nbytes: int
    is_error: bool


@dataclass
class _Call:
    session_id: str
    model: str
    request_time: float
    first_time: float
    last_time: float
    usage: dict[str, Any] | None = None
    reported_output: int | None = None
    chars: int = 0
    tools: list[_ToolUse] = field(default_factory=list)


@dataclass
class _Thread:
    id: str
    session_id: str
    is_sidechain: bool
    last_user_time: float | None = None
    calls: list[_Call] = field(default_factory=list)


@dataclass
class _Line:
    """The fields of one user/assistant line this loader uses, type-checked."""

    type: str
    time: float
    session_id: str | None
    uuid: str | None
    parent_uuid: str | None
    is_sidechain: bool
    message: dict[str, Any]
    content: list[dict[str, Any]] | str


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return utf8_safe(value)
    raise Malformed(f"{key} is {type(value).__name__}, not a string")


def _check_line(obj: dict[str, Any]) -> _Line:
    kind = obj.get("type")
    message = obj.get("message")
    if not isinstance(message, dict):
        raise Malformed(f"{kind} line without a message object")
    content = message.get("content")
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise Malformed("content block is not an object with a type")
    elif not isinstance(content, str):
        raise Malformed(f"message content is {type(content).__name__}")
    side = obj.get("isSidechain", False)
    if not isinstance(side, bool):
        raise Malformed("isSidechain is not a boolean")
    return _Line(
        type=kind,
        time=parse_time(obj.get("timestamp")),
        session_id=_opt_str(obj, "sessionId"),
        uuid=_opt_str(obj, "uuid"),
        parent_uuid=_opt_str(obj, "parentUuid"),
        is_sidechain=side,
        message=message,
        content=content,
    )


def _text_size(content: Any) -> int:
    """UTF-8 bytes of a tool_result content (a string or a list of blocks)."""
    if isinstance(content, str):
        return len(content.encode("utf-8", "replace"))
    if isinstance(content, list):
        total = 0
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                total += len(block["text"].encode("utf-8", "replace"))
            else:
                total += len(json.dumps(block, ensure_ascii=False, default=str).encode("utf-8", "replace"))
        return total
    return 0 if content is None else len(json.dumps(content, default=str))


def _int_or_none(value: Any) -> int | None:
    """A token count: an int in [0, MAX_TOKENS], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if 0 <= value <= MAX_TOKENS else None


class _TranscriptParser:
    """State machine over the lines of one transcript file."""

    def __init__(self, rel: str, fallback_session: str, report: IngestReport) -> None:
        self.rel = rel
        self.fallback_session = fallback_session
        self.report = report
        self.synthetic = False
        self.threads: dict[str, _Thread] = {}
        self.thread_of_uuid: dict[str, _Thread] = {}
        self.last_sidechain: dict[str, _Thread] = {}
        self.calls: dict[tuple[str, str], _Call] = {}
        self.results: dict[str, _Result] = {}
        self.session_id: str | None = None

    def feed(self, lineno: int, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if obj.get(SYNTHETIC_MARK) is True:
            self.synthetic = True
        if not isinstance(kind, str):
            self.report.skip_line(self.rel, lineno, f"line type is {type(kind).__name__}, not a string")
            return
        if kind in METADATA_TYPES:
            self.report.ignore(f"{kind} line")
            return
        if kind not in ("user", "assistant"):
            self.report.skip_line(self.rel, lineno, f"unknown line type {kind[:40]!r}")
            return
        try:
            line = _check_line(obj)
            if kind == "assistant":
                self._assistant(line, obj, lineno)
            else:
                self._user(line, lineno)
        except Malformed as e:
            self.report.skip_line(self.rel, lineno, str(e))

    def _thread(self, line: _Line, lineno: int) -> _Thread:
        session = line.session_id or self.session_id or self.fallback_session
        self.session_id = self.session_id or session
        if not line.is_sidechain:
            thread = self.threads.get(session)
            if thread is None:
                thread = self.threads[session] = _Thread(session, session, False)
        else:
            parent = self.thread_of_uuid.get(line.parent_uuid) if line.parent_uuid else None
            if parent is not None and parent.is_sidechain:
                thread = parent
            elif line.parent_uuid and parent is None and session in self.last_sidechain:
                thread = self.last_sidechain[session]  # parent line was lost: same run
            else:
                tid = f"{session}:{line.uuid or f'line{lineno}'}"
                thread = self.threads.get(tid) or _Thread(tid, session, True)
                self.threads[tid] = thread
            self.last_sidechain[session] = thread
        if line.uuid:
            self.thread_of_uuid[line.uuid] = thread
        return thread

    def _assistant(self, line: _Line, obj: dict[str, Any], lineno: int) -> None:
        msg = line.message
        model = msg.get("model")
        if model == API_ERROR_MODEL or obj.get("isApiErrorMessage") is True:
            self.report.ignore("API-error placeholder message")
            self._thread(line, lineno).last_user_time = line.time  # a retry is sent after the error
            return
        if not isinstance(line.content, list):
            raise Malformed("assistant content is not a list of blocks")
        msg_id = msg.get("id") or obj.get("requestId") or line.uuid or f"line{lineno}"
        if not isinstance(msg_id, str):
            raise Malformed("message.id is not a string")
        usage = msg.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise Malformed("message.usage is not an object")
        tools = []
        chars = 0
        for block in line.content:
            btype = block["type"]
            if btype == "tool_use":
                tid, name = block.get("id"), block.get("name")
                if not isinstance(tid, str) or not isinstance(name, str):
                    raise Malformed("tool_use block without string id and name")
                tools.append(_ToolUse(tid, utf8_safe(name), block.get("input"), line.time))
                chars += len(json.dumps(block.get("input"), ensure_ascii=False, default=str))
            else:
                text = block.get("text") if btype == "text" else block.get("thinking")
                chars += len(text) if isinstance(text, str) else 0
        thread = self._thread(line, lineno)
        call = self.calls.get((thread.id, msg_id))
        if call is None:
            request = thread.last_user_time if thread.last_user_time is not None else line.time
            call = _Call(
                session_id=thread.session_id,
                model=utf8_safe(model) if isinstance(model, str) else "",
                request_time=min(request, line.time),
                first_time=line.time,
                last_time=line.time,
            )
            self.calls[(thread.id, msg_id)] = call
            thread.calls.append(call)
        call.last_time = max(call.last_time, line.time)
        call.chars += chars
        call.tools.extend(tools)
        if usage:
            call.usage = usage
            out = _int_or_none(usage.get("output_tokens"))
            if out is not None:
                call.reported_output = max(out, call.reported_output or 0)

    def _user(self, line: _Line, lineno: int) -> None:
        results = []
        if isinstance(line.content, list):
            for block in line.content:
                if block["type"] != "tool_result":
                    continue
                tid = block.get("tool_use_id")
                if not isinstance(tid, str):
                    raise Malformed("tool_result block without a string tool_use_id")
                results.append(
                    (tid, _Result(line.time, _text_size(block.get("content")), block.get("is_error") is True))
                )
        thread = self._thread(line, lineno)
        thread.last_user_time = line.time
        self.results.update(results)


def _load_sidecar(folder: Path, root: Path, report: IngestReport) -> dict[str, tuple[float, float | None]]:
    """``tool_use id -> (start, end)`` from the folder's tool_calls sidecar (empty if none)."""
    for name in SIDECAR_NAMES:
        path = folder / name
        if path.is_file():
            break
    else:
        return {}
    rel = _relative(path, root)
    try:
        entries = read_json_document(path)
    except ValueError as e:
        report.skip_line(rel, _line_of(str(e)), f"unreadable tool-call sidecar ({e}); using transcript times")
        return {}
    if not isinstance(entries, list):
        report.skip_line(rel, None, "tool-call sidecar is not a JSON list; using transcript times")
        return {}
    out: dict[str, tuple[float, float | None]] = {}
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise Malformed("entry is not an object with a string id")
            end = entry.get("end_timestamp")
            out[entry["id"]] = (parse_time(entry.get("timestamp")), None if end is None else parse_time(end))
        except Malformed as e:
            report.skip_line(rel, None, f"sidecar entry {i}: {e}")
    return out


def _line_of(message: str) -> int | None:
    m = re.match(r"line (\d+):", message)
    return int(m.group(1)) if m else None


def _relative(path: Path, root: Path) -> str:
    try:
        return utf8_safe(path.relative_to(root).as_posix())
    except ValueError:
        return utf8_safe(path.as_posix())


@lru_cache(maxsize=4096)
def _task_from_meta(folder: Path) -> str | None:
    """Task named by the SWE-bench image in ``folder/results_meta.json``, if any."""
    meta = folder / "results_meta.json"
    if not meta.is_file():
        return None
    try:
        image = read_json_document(meta).get("image")
    except (ValueError, AttributeError):
        return None
    m = _SWE_IMAGE.search(image) if isinstance(image, str) else None
    return f"{m.group(1)}__{m.group(2)}" if m else None


def task_id_for(path: Path, session_id: str) -> str:
    """The split unit of a transcript: see the module docstring."""
    folder = path.parent
    if _ATTEMPT_DIR.fullmatch(folder.name):
        return utf8_safe(folder.parent.name)
    return _task_from_meta(folder) or session_id


def _output_tokens(call: _Call) -> int:
    estimate = math.ceil(call.chars / CHARS_PER_TOKEN)
    reported = call.reported_output
    if reported is None or reported < PLAUSIBLE_OUTPUT_FRACTION * estimate:
        return estimate
    return reported


def _tool_rows(
    call: _Call, results: dict[str, _Result], sidecar: dict[str, tuple[float, float | None]]
) -> list[dict[str, Any]]:
    rows = []
    for tool in call.tools:
        result = results.get(tool.id)
        start, end = sidecar.get(tool.id, (tool.line_time, None))
        if end is None and result is not None:
            end = result.time
        if end is not None and end < start:
            end = start
        rows.append(
            {
                "name": tool.name,
                "input_json": utf8_safe(json.dumps(tool.input, ensure_ascii=False, default=str)),
                "command_class": command_class(tool.name, tool.input),
                "start_time": start,
                "end_time": end,
                "observation_bytes": result.nbytes if result else None,
                "is_error": result.is_error if result else None,
            }
        )
    return rows


def load_file(path: Path, root: Path, report: IngestReport) -> list[dict[str, Any]]:
    """Events rows for one transcript; ``root`` makes ``src_file`` relative."""
    rel = _relative(path, root)
    name = utf8_safe(path.name.removesuffix(".gz").removesuffix(".jsonl"))
    parser = _TranscriptParser(rel, name, report)
    for lineno, obj in iter_json_lines(path, rel, report):
        parser.feed(lineno, obj)
    if not parser.calls:
        return []
    sidecar = _load_sidecar(path.parent, root, report)
    source = SYNTHETIC_SOURCE if parser.synthetic else SOURCE
    sessions_with_cache = {
        c.session_id
        for c in parser.calls.values()
        if c.usage and (_int_or_none(c.usage.get("cache_read_input_tokens")) or 0) > 0
    }
    rows = []
    for thread in parser.threads.values():
        task_id = task_id_for(path, thread.session_id)
        for index, call in enumerate(thread.calls):
            usage = call.usage or {}
            parts = [
                _int_or_none(usage.get(k))
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            ]
            prompt = sum(p or 0 for p in parts) if call.usage and any(p is not None for p in parts) else None
            cached = parts[2] if call.session_id in sessions_with_cache else None
            tools = _tool_rows(call, parser.results, sidecar)
            rows.append(
                {
                    "source": source,
                    "src_file": rel,
                    "task_id": task_id,
                    "session_id": thread.session_id,
                    "thread_id": thread.id,
                    "is_sidechain": thread.is_sidechain,
                    "call_index": index,
                    "model": call.model,
                    "time_basis": "wall",
                    "request_time": call.request_time,
                    "response_time": call.last_time,
                    "prompt_tokens": prompt,
                    "cached_tokens": cached,
                    "output_tokens": _output_tokens(call),
                    "hash_ids": None,
                    "tool_calls": tools,
                    "ended_turn": not tools,
                }
            )
    return rows


def looks_like(first: list[dict[str, Any]]) -> bool:
    """Format detection: the leading objects of a JSON-lines file are transcript lines."""
    return any(
        isinstance(o.get("type"), str) and ("sessionId" in o or "message" in o or o["type"] in METADATA_TYPES)
        for o in first
    )
