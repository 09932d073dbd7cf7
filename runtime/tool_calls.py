"""Tool calls of a finished response, as the runtime sees them: parsed from its text.

The engine core has the response's output token ids, not the OpenAI server's parsed tool
calls, so the runtime decodes the ids (with the model's tokenizer, loaded lazily) and
parses the text with a parser from :data:`PARSERS`:

``hermes``  Hermes / Qwen style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
            (an unterminated last block is accepted, as a response may stop inside it);
``openai``  OpenAI-style function-call JSON: a ``{"name", "arguments"|"parameters"}``
            object, a list of them, ``{"tool_calls": [{"function": {...}}, ...]}`` or
            ``{"function_call": {...}}``, as the whole text or embedded in it;
``auto``    ``hermes`` if the text has a ``<tool_call>`` tag, else ``openai``;
``none``    never finds a tool call.

:func:`register_parser` adds a parser under a new name (e.g. for another model family).
Parsers are total: malformed JSON yields no call for that block, never an exception.
Clients can also state their tool call explicitly (see
:mod:`cachewise.runtime.request_calls`), which takes precedence over parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cachewise.features.record import ToolCallInfo

ToolCallParser = Callable[[str], tuple[ToolCallInfo, ...]]

_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_JSON_START = re.compile(r"[\[{]")
_MAX_EMBEDDED_SCANS = 32  # JSON decode attempts per text in the openai parser


def _call_from_object(obj: Any) -> ToolCallInfo | None:
    """A tool call from one ``{"name", "arguments"}``-like object (or its ``function`` member)."""
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("function"), Mapping):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, (dict, str)):
        args = json.dumps(args)
    return ToolCallInfo(name, args)


def _calls_from_json(value: Any) -> tuple[ToolCallInfo, ...]:
    """Tool calls in a decoded OpenAI-style JSON value (see module doc); () if none."""
    if isinstance(value, Mapping):
        if isinstance(value.get("tool_calls"), list):
            items: Iterable[Any] = value["tool_calls"]
        elif isinstance(value.get("function_call"), Mapping):
            items = (value["function_call"],)
        else:
            items = (value,)
    elif isinstance(value, list):
        items = value
    else:
        return ()
    return tuple(call for call in map(_call_from_object, items) if call is not None)


def parse_hermes(text: str) -> tuple[ToolCallInfo, ...]:
    """Hermes / Qwen ``<tool_call>`` blocks (module doc)."""
    if "<tool_call>" not in text:
        return ()
    calls: list[ToolCallInfo] = []
    for body in _HERMES_BLOCK.findall(text):
        try:
            call = _call_from_object(json.loads(body.strip()))
        except ValueError:
            continue
        if call is not None:
            calls.append(call)
    return tuple(calls)


def parse_openai(text: str) -> tuple[ToolCallInfo, ...]:
    """OpenAI-style function-call JSON, whole or embedded (module doc)."""
    stripped = text.strip()
    try:
        return _calls_from_json(json.loads(stripped))
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for scans, match in enumerate(_JSON_START.finditer(stripped)):
        if scans >= _MAX_EMBEDDED_SCANS:
            break
        try:
            value, _ = decoder.raw_decode(stripped, match.start())
        except ValueError:
            continue
        calls = _calls_from_json(value)
        if calls:
            return calls
    return ()


def parse_auto(text: str) -> tuple[ToolCallInfo, ...]:
    """``hermes`` when the text has a ``<tool_call>`` tag, else ``openai``."""
    return parse_hermes(text) if "<tool_call>" in text else parse_openai(text)


def parse_none(text: str) -> tuple[ToolCallInfo, ...]:
    """Never finds a tool call."""
    return ()


PARSERS: dict[str, ToolCallParser] = {
    "hermes": parse_hermes,
    "qwen": parse_hermes,
    "openai": parse_openai,
    "auto": parse_auto,
    "none": parse_none,
}


def register_parser(name: str, parser: ToolCallParser) -> None:
    """Make ``parser`` available as ``tool_parser: name`` in the cachewise settings."""
    PARSERS[name] = parser


def get_parser(name: str) -> ToolCallParser:
    """The parser registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool_parser {name!r}; known: {sorted(PARSERS)}") from None


def calls_from_hint(hint: Mapping[str, Any]) -> tuple[ToolCallInfo, ...] | None:
    """Tool calls a client stated in ``extra_args["cachewise"]``; None when it states none.

    Accepted: ``{"tool": name, "arguments": {...}}`` or ``{"tool_calls": [{"name", "arguments"}, ...]}``
    (an empty ``tool_calls`` list states "no tool call": the turn ended).
    """
    if isinstance(hint.get("tool_calls"), list):
        return _calls_from_json({"tool_calls": hint["tool_calls"]})
    if isinstance(hint.get("tool"), str) and hint["tool"]:
        call = _call_from_object({"name": hint["tool"], "arguments": hint.get("arguments", {})})
        return (call,) if call is not None else None
    return None
