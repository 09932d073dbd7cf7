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
* thread: the growing prompt this call extends. A call's thread is found by its prompt's
  block hashes: every finished call registers the hash of its last full prompt block and
  of its last full block overall, and a new call belongs to the thread of the latest such
  hash found in its own hash chain (searched from the end); no match starts a new thread;
* session: vLLM's ``Request.session_id`` when the client sent one, else the hint's
  ``session_id``, else the session of the thread found above, else the thread itself.

Client hints: ``SamplingParams.extra_args = {"cachewise": {"tool": ..., "arguments": ...,
"tool_calls": [...], "session_id": ..., "thread_id": ..., "is_sidechain": bool}}`` (all
optional; with the OpenAI server pass them as ``vllm_xargs: {"cachewise": "<the dict as JSON>"}``).

Ownership: this builder is the only place threads are inferred; it owns the block-hash ->
(thread, session) index. The session view (:mod:`cachewise.runtime.sessions`) infers
nothing: it is told each call's (session, thread) by the predictor at finish
(``SessionView.on_forecast``) and asks :meth:`CallBuilder.lookup` (read-only) at arrival, so
its session and thread keys are this builder's answers. What the view keeps per thread (blocks, growth,
all full-block hashes for working sets and exclusive hashes) is not kept here, and the two
tip hashes kept here are not kept there.

Memory is bounded: at most ``max_hashes`` registered hashes (least recently used dropped);
each thread keeps at most two (its last call's last full prompt block and last full block),
so the default 131072 covers the 65536 threads that
:class:`~cachewise.features.online.FeatureState` keeps (``max_threads`` counts threads only).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from vllm.v1.request import Request

from cachewise.features.record import FinishedCall, ToolCallInfo
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


class CallBuilder:
    """Builds the :class:`FinishedCall` of each finished request (module doc); keeps thread state."""

    def __init__(
        self,
        model: str,
        hash_block_size: int,
        parser: ToolCallParser,
        tokenizer: LazyTokenizer | None = None,
        arrival_clock: Callable[[], float] = time.time,
        max_hashes: int = 131072,
    ) -> None:
        if hash_block_size < 1 or max_hashes < 1:
            raise ValueError("hash_block_size and max_hashes must be positive")
        self._model = model
        self._block = hash_block_size
        self._parser = parser
        self._tokenizer = tokenizer
        self._arrival_clock = arrival_clock
        self._max = max_hashes
        self._threads: OrderedDict[bytes, tuple[str, str]] = OrderedDict()  # hash -> (thread, session)
        self._next_thread = 0

    def build(self, request: Request, now: float) -> FinishedCall:
        """The call ``request`` was, finishing at ``now`` (pool clock); records its thread."""
        hint = hint_of(request)
        hashes = request.block_hashes
        prompt_blocks = min(request.num_prompt_tokens // self._block, len(hashes))
        thread, session = self._thread_of(request, hint, hashes, prompt_blocks)
        tool_calls = self._tool_calls(request, hint)
        age = max(self._arrival_clock() - request.arrival_time, 0.0)
        call = FinishedCall(
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
        for idx in {prompt_blocks - 1, len(hashes) - 1}:
            if idx >= 0:
                self._remember(hashes[idx], thread, session)
        return call

    def lookup(self, request: Request) -> tuple[str | None, str] | None:
        """(thread, session) the request would be assigned if it finished now, when known
        without a new thread: explicit hints, else the prefix-chain match. Read-only."""
        hint = hint_of(request)
        hashes = request.block_hashes
        prompt_blocks = min(request.num_prompt_tokens // self._block, len(hashes))
        found = self._known_thread(hint, hashes, prompt_blocks, touch=False)
        explicit = request.session_id or hint.get("session_id")
        if isinstance(explicit, str) and explicit:
            return (found[0] if found else None), explicit
        if found is None:
            return None
        return found[0], found[1] or found[0]

    def _known_thread(
        self, hint: Mapping[str, Any], hashes: list[bytes], prompt_blocks: int, touch: bool
    ) -> tuple[str, str] | None:
        """The (thread, session) of a hinted thread id or of the latest registered hash in the chain."""
        if isinstance(hint.get("thread_id"), str):
            return (hint["thread_id"], "")
        threads = self._threads
        for i in range(prompt_blocks - 1, -1, -1):
            entry = threads.get(hashes[i])
            if entry is not None:
                if touch:
                    threads.move_to_end(hashes[i])
                return entry
        return None

    def _thread_of(
        self, request: Request, hint: Mapping[str, Any], hashes: list[bytes], prompt_blocks: int
    ) -> tuple[str, str]:
        """(thread key, session key) of ``request`` (module doc)."""
        found = self._known_thread(hint, hashes, prompt_blocks, touch=True)
        if found is None:
            self._next_thread += 1
            found = (f"t{self._next_thread}", "")
        thread, session = found
        explicit = request.session_id or hint.get("session_id")
        if isinstance(explicit, str) and explicit:
            session = explicit
        return thread, session or thread

    def _remember(self, block_hash: bytes, thread: str, session: str) -> None:
        self._threads[block_hash] = (thread, session)
        self._threads.move_to_end(block_hash)
        if len(self._threads) > self._max:
            self._threads.popitem(last=False)

    def _tool_calls(self, request: Request, hint: Mapping[str, Any]) -> tuple[ToolCallInfo, ...]:
        stated = calls_from_hint(hint)
        if stated is not None:
            return stated
        tokenizer = self._tokenizer.get() if self._tokenizer is not None else None
        if tokenizer is None or not request.num_output_tokens:
            return ()
        text = tokenizer.decode(list(request.output_token_ids), skip_special_tokens=False)
        return self._parser(text)
