"""A finished vLLM ``Request`` as a :class:`~cachewise.features.record.FinishedCall`.

The feature code was written for trace rows; this module gives it the same object from
what the engine core knows when a request finishes, with no client changes:

* times: ``finish_time`` is the pool's ``now``; ``request_time`` is ``now`` minus the
  request's age on the clock ``Request.arrival_time`` was taken with (``arrival_clock``,
  ``time.time`` in vLLM), so both are on the pool's clock;
* token counts: ``num_prompt_tokens`` and ``num_output_tokens``;
* tool calls: the client's explicit hint if any, else the output token ids decoded with
  the model's tokenizer and parsed (:mod:`cachewise.runtime.tool_calls`); no tokenizer
  means no tool calls (non-tool features only);
* thread and session: named by the engine's session view
  (:meth:`~cachewise.runtime.sessions.SessionView.on_call`), which owns the block-hash ->
  thread index: the client's ``thread_id`` hint, else the thread of the latest registered
  hash in the call's own prompt chain, else a new thread; the session is vLLM's
  ``Request.session_id`` when the client sent one, else the hint's ``session_id``, else the
  session of the thread found, else the thread itself.

Client hints: ``SamplingParams.extra_args = {"cachewise": {"tool": ..., "arguments": ...,
"tool_calls": [...], "session_id": ..., "thread_id": ..., "is_sidechain": bool, "family": ...}}`` (all
optional; ``family`` names the client's traffic family, e.g. ``claude_code``, for the guard's
certified start; with the OpenAI server pass them as ``vllm_xargs: {"cachewise": "<the dict as
JSON>"}``).

Ownership: this module keeps no thread or session state. It reads the client's hints
(:func:`hint_of`, :func:`client_ids`) and asks the session view: :meth:`CallBuilder.build`
writes through ``SessionView.on_call``, :func:`arrival_keys` (the scheduler hooks' keys of an
arriving request) reads ``SessionView.known_thread``. The builder's view is the engine's one
view once the plugin's wiring attaches it (``sessions``); a builder used on its own (tests,
offline checks) starts with a view of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from vllm.v1.request import Request

from cachewise.features.record import FinishedCall, ToolCallInfo
from cachewise.runtime.sessions import SessionView
from cachewise.runtime.tool_calls import ToolCallParser, calls_from_hint

logger = logging.getLogger("vllm.cachewise")

HINT_KEY = "cachewise"


class Detokenizer(Protocol):
    """What is needed of a tokenizer: ``decode(ids, skip_special_tokens=...) -> str``."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class LazyTokenizer:
    """Loads a tokenizer on first use through ``load``; a failed load is logged once and not retried."""

    def __init__(self, load: Callable[[], Detokenizer | None]) -> None:
        self._load = load
        self._tokenizer: Detokenizer | None = None
        self._tried = False

    def get(self) -> Detokenizer | None:
        if not self._tried:
            self._tried = True
            try:
                self._tokenizer = self._load()
            except Exception as exc:  # noqa: BLE001 - no tokenizer = no parsed tool calls, not an outage
                logger.info("CacheWise: no tokenizer for tool-call parsing (%s); using hints only", exc)
        return self._tokenizer


def hint_of(request: Request) -> Mapping[str, Any]:
    """The client's ``extra_args["cachewise"]`` dict for ``request`` (empty when absent or malformed).

    Also accepted: the dict JSON-encoded as a string, which is how the OpenAI server's
    ``vllm_xargs`` carries it (its values may be strings, numbers or lists, not objects).
    """
    params = request.sampling_params
    extra = getattr(params, "extra_args", None) if params is not None else None
    hint = extra.get(HINT_KEY) if isinstance(extra, Mapping) else None
    if isinstance(hint, str):
        try:
            hint = json.loads(hint)
        except ValueError:
            return {}
    return hint if isinstance(hint, Mapping) else {}


def client_ids(request: Request, hint: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(thread, session) the client named: the hint's ``thread_id`` (any string) and vLLM's
    ``Request.session_id`` or the hint's ``session_id`` (non-empty strings); None where absent."""
    thread = hint.get("thread_id")
    session = request.session_id or hint.get("session_id")
    return (thread if isinstance(thread, str) else None), (session if isinstance(session, str) and session else None)


def client_family(hint: Mapping[str, Any]) -> str | None:
    """The traffic family the client declared (the hint's ``family``, a non-empty string), else None."""
    family = hint.get("family")
    return family if isinstance(family, str) and family else None


def prompt_blocks(request: Request, block_size: int) -> int:
    """Full prompt blocks of ``request`` that have a block hash."""
    return min(request.num_prompt_tokens // block_size, len(request.block_hashes))


def arrival_keys(
    view: SessionView, request: Request, hint: Mapping[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """(session, thread) of an arriving request, for ``SessionView.on_arrival``: the client's
    ids (from ``hint``, else :func:`hint_of` the request), else the view's thread index
    (read-only); None where not known yet."""
    thread, session = client_ids(request, hint_of(request) if hint is None else hint)
    found = view.known_thread(request.block_hashes, prompt_blocks(request, view.block_size), thread, session)
    if found is not None:
        return found[1], found[0]
    return session, None


class CallBuilder:
    """Builds the :class:`FinishedCall` of each finished request (module doc); its thread and
    session are named by the session view ``sessions``."""

    def __init__(
        self,
        model: str,
        hash_block_size: int,
        parser: ToolCallParser,
        tokenizer: LazyTokenizer | None = None,
        arrival_clock: Callable[[], float] = time.time,
        sessions: SessionView | None = None,
    ) -> None:
        if hash_block_size < 1:
            raise ValueError("hash_block_size must be positive")
        self._model = model
        self._block = hash_block_size
        self._parser = parser
        self._tokenizer = tokenizer
        self._arrival_clock = arrival_clock
        self.sessions = sessions or SessionView(hash_block_size)

    def build(self, request: Request, now: float) -> FinishedCall:
        """The call ``request`` was, finishing at ``now`` (pool clock); names its thread in the view."""
        hint = hint_of(request)
        thread, session = self.sessions.on_call(request.block_hashes, prompt_blocks(request, self._block), *client_ids(request, hint))
        tool_calls = self._tool_calls(request, hint)
        age = max(self._arrival_clock() - request.arrival_time, 0.0)
        return FinishedCall(
            thread_key=thread,
            session_key=session,
            request_time=now - age,
            finish_time=now,
            prompt_tokens=request.num_prompt_tokens,
            output_tokens=request.num_output_tokens,
            tool_calls=tool_calls,
            ended_turn=not tool_calls,
            model=self._model,
            is_sidechain=bool(hint.get("is_sidechain", False)),
        )

    def _tool_calls(self, request: Request, hint: Mapping[str, Any]) -> tuple[ToolCallInfo, ...]:
        stated = calls_from_hint(hint)
        if stated is not None:
            return stated
        tokenizer = self._tokenizer.get() if self._tokenizer is not None else None
        if tokenizer is None or not request.num_output_tokens:
            return ()
        text = tokenizer.decode(list(request.output_token_ids), skip_special_tokens=False)
        return self._parser(text)
