"""What is known about an LLM call at the moment its response finishes.

A :class:`FinishedCall` is the single input of the feature definition
(:class:`cachewise.features.online.FeatureState`). At that moment the call's KV blocks
become evictable, so everything in it must be known then: the request and finish
times, the token counts, and the tool calls the response asked for (names and
arguments, never their results or durations).

Offline, :func:`finished_call_from_row` builds it from a row of the events table
(:mod:`cachewise.data.schema`); at serving time the vLLM runtime builds it from a
finished ``Request``. Both must give equal objects for the same call, which is why the
tool input is the agent's JSON object decoded to a dict (:func:`decode_tool_input`), or
its raw text when it is not a JSON object. Serving logs (:mod:`cachewise.runtime.serving_log`)
store no argument text, only each tool call's classification; their events rows carry it as
``{CLASSIFIED_KEY: {"command_class": ..., "facts": [...]}}`` (:func:`classified_input_json`),
which decodes to that :class:`~cachewise.data.commands.CommandInfo`, used by the features as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cachewise.data.commands import CommandInfo

#: Key of a tool input that carries its classification instead of its text (see module doc).
CLASSIFIED_KEY = "cachewise.classified"


@dataclass(frozen=True, slots=True)
class ToolCallInfo:
    """One tool call emitted by a response: the tool's name and its input as sent (or, from a
    serving log, its classification)."""

    name: str
    input: dict | str | CommandInfo


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """An LLM call whose response just finished.

    Invariants: ``request_time <= finish_time`` (seconds, one clock per session);
    ``thread_key`` names the growing prompt this call extends (the next call with the
    same key reuses this call's prefix); ``session_key`` groups the threads of one agent
    session (main thread and sub-agents); ``ended_turn`` is true iff ``tool_calls`` is
    empty in agent traces (the agent handed control back).
    """

    thread_key: str
    session_key: str
    request_time: float
    finish_time: float
    prompt_tokens: int
    output_tokens: int
    tool_calls: tuple[ToolCallInfo, ...]
    ended_turn: bool
    model: str
    is_sidechain: bool = False


def thread_key_of(source: str, session_id: str, thread_id: str) -> str:
    """The thread key used offline: unique across sources and sessions."""
    return f"{source}\x1f{session_id}\x1f{thread_id}"


def session_key_of(source: str, session_id: str) -> str:
    """The session key used offline: unique across sources."""
    return f"{source}\x1f{session_id}"


def classified_input_json(command_class: str, facts: Iterable[float]) -> str:
    """The ``input_json`` of a tool call known only by its classification (module doc)."""
    return json.dumps({CLASSIFIED_KEY: {"command_class": command_class, "facts": [float(f) for f in facts]}})


def decode_tool_input(raw: str | None) -> dict | str | CommandInfo:
    """A tool input as :class:`ToolCallInfo` holds it: the decoded JSON object, else the raw text;
    a :func:`classified_input_json` object gives its :class:`CommandInfo`.

    Decoding once here spares :mod:`cachewise.data.commands` a decode per function call;
    its functions give equal results for a JSON object string and its decoded dict.
    """
    if not raw:
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(value, dict):
        return raw
    classified = value.get(CLASSIFIED_KEY) if len(value) == 1 else None
    if isinstance(classified, dict):
        return CommandInfo(str(classified["command_class"]), tuple(float(f) for f in classified["facts"]))
    return value


def tool_calls_from_column(value: Iterable[Mapping[str, Any]] | None) -> tuple[ToolCallInfo, ...]:
    """Tool calls of an events row (``tool_calls`` column) as :class:`ToolCallInfo`."""
    if value is None:
        return ()
    return tuple(ToolCallInfo(str(tc["name"]), decode_tool_input(tc["input_json"])) for tc in value)


def finished_call_from_row(row: Mapping[str, Any]) -> FinishedCall:
    """Build the :class:`FinishedCall` of one events-table row (a mapping of its columns)."""
    return FinishedCall(
        thread_key=thread_key_of(row["source"], row["session_id"], row["thread_id"]),
        session_key=session_key_of(row["source"], row["session_id"]),
        request_time=float(row["request_time"]),
        finish_time=float(row["response_time"]),
        prompt_tokens=int(row["prompt_tokens"]),
        output_tokens=int(row["output_tokens"]),
        tool_calls=tool_calls_from_column(row["tool_calls"]),
        ended_turn=bool(row["ended_turn"]),
        model=str(row["model"] or ""),
        is_sidechain=bool(row["is_sidechain"]),
    )
