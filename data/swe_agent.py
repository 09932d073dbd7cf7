"""SWE-agent trajectories (``*.traj``) -> events rows, on a documented synthetic clock.

A ``.traj`` is one JSON document: ``trajectory`` (steps with ``action``, ``observation``,
``response``, optional ``execution_time``) and ``history`` (the chat messages sent to the
model). Older demonstration files have only ``history``; their steps are its assistant
messages, each followed by its tool/observation message.

One step = one LLM call of the session's single thread; its action is one tool call named
``bash`` (SWE-agent runs every action, its own commands included, in a bash session) with
input ``{"command": action}``. A step without an action ends the turn.

The files have no LLM timestamps and no token counts, so (``time_basis`` = ``synthetic``):

* clock: the session starts at t = 0; a call takes ``LLM_OVERHEAD_S + output_tokens /
  DECODE_TOKENS_PER_S``; its action then runs for the step's ``execution_time`` where given,
  else ``DEFAULT_TOOL_S``; the next call is sent when the action ends.
* ``prompt_tokens``: characters of the history before the step's assistant message / 4; steps
  past the end of the history add the previous response and observation.
* ``output_tokens``: characters of the step's response / 4 (at least 1).
* ``session_id``: ``src_file`` without ``.traj`` (file names repeat across run folders);
  ``task_id``: ``replay_config.problem_statement.id`` when present, else a SWE-bench instance id
  (``owner__repo-123``) ending the file name, else the file name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from cachewise.data.commands import command_class
from cachewise.data.jsonl import read_json_document, utf8_safe
from cachewise.data.report import IngestReport

SOURCE = "swe_agent"
TOOL_NAME = "bash"
LLM_OVERHEAD_S = 1.0
DECODE_TOKENS_PER_S = 50.0
DEFAULT_TOOL_S = 1.0
CHARS_PER_TOKEN = 4

_INSTANCE_SUFFIX = re.compile(r"(?:^|__)((?!install-\d)(?:(?!__)[\w.-])+__(?:(?!__)[\w.-])+-\d+)$")


class Malformed(ValueError):
    """A document or step lacks the structure of a SWE-agent trajectory."""


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(b.get("text")) if isinstance(b, dict) else _chars(b) for b in content)
    return 0


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _steps(doc: dict[str, Any]) -> list[Any]:
    steps = doc.get("trajectory")
    if isinstance(steps, list):
        return steps
    history = doc.get("history")
    if not isinstance(history, list):
        raise Malformed("neither a trajectory nor a history list")
    out = []
    for i, msg in enumerate(history):
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            nxt = history[i + 1] if i + 1 < len(history) else None
            observation = nxt.get("content") if isinstance(nxt, dict) and nxt.get("role") != "assistant" else ""
            out.append(
                {"action": msg.get("action", ""), "response": msg.get("content", ""), "observation": observation}
            )
    return out


def _history_prefixes(doc: dict[str, Any]) -> list[int]:
    """Characters of the history before each assistant message, in order."""
    history = doc.get("history")
    if not isinstance(history, list):
        return []
    out, total = [], 0
    for msg in history:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "assistant":
            out.append(total)
        total += _chars(msg.get("content"))
    return out


def _execution_time(step: dict[str, Any]) -> float | None:
    value = step.get("execution_time")
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def task_id_for(doc: dict[str, Any], path: Path) -> str:
    """The split unit of a trajectory (see the module docstring)."""
    config = doc.get("replay_config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    statement = config.get("problem_statement") if isinstance(config, dict) else None
    if isinstance(statement, dict) and isinstance(statement.get("id"), str):
        return utf8_safe(statement["id"])
    stem = utf8_safe(path.name.removesuffix(".traj"))
    m = _INSTANCE_SUFFIX.search(stem)
    return m.group(1) if m else stem


def load_file(path: Path, root: Path, report: IngestReport) -> list[dict[str, Any]]:
    """Events rows for one ``.traj``; unreadable documents and bad steps are reported."""
    rel = utf8_safe(path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix())
    try:
        doc = read_json_document(path)
    except ValueError as e:
        m = re.match(r"line (\d+):", str(e))
        report.skip_line(rel, int(m.group(1)) if m else None, f"unreadable trajectory: {e}")
        return []
    if not isinstance(doc, dict):
        raise Malformed(f"{rel}: not a SWE-agent trajectory (top level is {type(doc).__name__})")
    try:
        steps = _steps(doc)
    except Malformed as e:
        raise Malformed(f"{rel}: not a SWE-agent trajectory ({e})") from e
    prefixes = _history_prefixes(doc)
    session = rel.removesuffix(".traj")  # file stems repeat across SWE-agent run folders
    task = task_id_for(doc, path)
    rows: list[dict[str, Any]] = []
    clock = 0.0
    prompt_chars = 0
    previous: dict[str, Any] | None = None
    for k, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("action", ""), str):
            report.skip_line(rel, None, f"trajectory step {k}: not an object with a string action")
            continue
        if len(rows) < len(prefixes):
            prompt_chars = prefixes[len(rows)]
        elif previous is not None:
            prompt_chars += _chars(previous.get("response")) + _chars(previous.get("observation"))
        action = step.get("action", "").strip()
        output = max(1, _tokens(_chars(step.get("response"))))
        request = clock
        response = request + LLM_OVERHEAD_S + output / DECODE_TOKENS_PER_S
        tools = []
        clock = response
        if action:
            duration = _execution_time(step)
            clock = response + (DEFAULT_TOOL_S if duration is None else duration)
            observation = step.get("observation")
            tools.append(
                {
                    "name": TOOL_NAME,
                    "input_json": json.dumps({"command": action}),
                    "command_class": command_class(TOOL_NAME, {"command": action}),
                    "start_time": response,
                    "end_time": clock,
                    "observation_bytes": len(observation.encode("utf-8", "replace"))
                    if isinstance(observation, str)
                    else None,
                    "is_error": None,
                }
            )
        rows.append(
            {
                "source": SOURCE,
                "src_file": rel,
                "task_id": task,
                "session_id": session,
                "thread_id": session,
                "is_sidechain": False,
                "call_index": len(rows),
                "model": "",
                "time_basis": "synthetic",
                "request_time": request,
                "response_time": response,
                "prompt_tokens": _tokens(prompt_chars),
                "cached_tokens": None,
                "output_tokens": output,
                "hash_ids": None,
                "tool_calls": tools,
                "ended_turn": not tools,
            }
        )
        previous = step
    return rows
