"""Block-hash request traces (Mooncake, Alibaba Bailian) -> events rows.

Input: JSON lines with ``timestamp``, ``input_length``, ``output_length`` and ``hash_ids``
(prefix-chained block hashes: equal id = equal block *and* equal prefix before it).

* **Mooncake** lines (``timestamp`` in ms, no session ids): sessions are inferred from shared
  prefixes. Blocks every request starts with (the longest common prefix of all requests, e.g.
  block 0, a global system prompt) identify nothing and are ignored. In timestamp order, a
  request continues the session that most recently sent a request containing the longest
  prefix it shares *beyond* those common blocks; with no such prefix it starts a new session.
  Because ids are prefix-chained, "prefix of length m is known" is monotone in m, so the
  longest known prefix is found by binary search in a dict ``block id -> session``:
  O(total blocks + n log L).
* **Bailian** lines (``chat_id`` / ``parent_chat_id``, ``timestamp`` in s): a session is the
  parent chain of a chat up to its root (``parent_chat_id`` -1, or a parent absent from the
  file, or a cycle).

Each session is one thread and its own task, named ``<src_file>#s<n>`` (Mooncake, n in order
of first request) or ``<src_file>#chat<root chat_id>`` (Bailian). The traces have no tool metadata and no
completion times: ``tool_calls`` is empty, ``ended_turn`` true (each response goes back to the
user), ``response_time == request_time``, ``cached_tokens`` null (cache hits depend on the
cache being simulated, not on the trace). ``time_basis`` is ``wall``: timestamps are real
offsets from the trace start (epoch 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachewise.data.jsonl import MAX_TOKENS, iter_json_lines, utf8_safe
from cachewise.data.report import IngestReport

SOURCE = "blockhash"
ROOT_PARENT = -1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Malformed(ValueError):
    """A line has valid JSON but not the structure of a block-hash request."""


@dataclass(frozen=True)
class Request:
    """One validated trace line."""

    lineno: int
    time: float  # seconds
    input_length: int
    output_length: int
    hash_ids: list[int]
    chat_id: int | None
    parent_chat_id: int | None


def _nonneg_int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise Malformed(f"{key} is not an integer in [0, {MAX_TOKENS}]")
    return value


def _check(lineno: int, obj: dict[str, Any], bailian: bool) -> Request:
    ts = obj.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise Malformed("timestamp is not a finite non-negative number")
    hash_ids = obj.get("hash_ids")
    if not isinstance(hash_ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and INT64_MIN <= h <= INT64_MAX for h in hash_ids
    ):
        raise Malformed("hash_ids is not a list of 64-bit integers")
    chat = parent = None
    if bailian:
        chat, parent = obj.get("chat_id"), obj.get("parent_chat_id", ROOT_PARENT)
        if (
            isinstance(chat, bool)
            or not isinstance(chat, int)
            or isinstance(parent, bool)
            or not isinstance(parent, int)
        ):
            raise Malformed("chat_id / parent_chat_id missing or not integers")
    return Request(
        lineno=lineno,
        time=float(ts) if bailian else ts / 1000.0,
        input_length=_nonneg_int(obj, "input_length"),
        output_length=_nonneg_int(obj, "output_length"),
        hash_ids=hash_ids,
        chat_id=chat,
        parent_chat_id=parent,
    )


def common_prefix_depth(requests: list[Request]) -> int:
    """Length of the block prefix shared by every request that has blocks."""
    lists = [r.hash_ids for r in requests if r.hash_ids]
    if not lists:
        return 0
    first = lists[0]
    depth = len(first)
    for ids in lists[1:]:
        depth = min(depth, len(ids))
        while depth and ids[depth - 1] != first[depth - 1]:
            depth -= 1
    return depth


def infer_prefix_sessions(requests: list[Request]) -> list[int]:
    """Session ordinal of each request (requests in time order), by shared prefixes."""
    common = common_prefix_depth(requests)
    owner: dict[int, int] = {}
    sessions: list[int] = []
    n_sessions = 0
    for req in requests:
        ids = req.hash_ids
        lo, hi = common, len(ids)  # invariant: prefix of length lo is known (or lo == common)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ids[mid - 1] in owner:
                lo = mid
            else:
                hi = mid - 1
        if lo > common:
            session = owner[ids[lo - 1]]
        else:
            session = n_sessions
            n_sessions += 1
        for block in ids:
            owner[block] = session
        sessions.append(session)
    return sessions


def chain_sessions(requests: list[Request]) -> list[int]:
    """Root ``chat_id`` of each request's parent chain (Bailian)."""
    parent_of = {r.chat_id: r.parent_chat_id for r in requests}
    root_of: dict[int, int] = {}
    out = []
    for req in requests:
        chain: list[int] = []
        seen: set[int] = set()
        node = req.chat_id
        while node not in root_of:
            chain.append(node)
            seen.add(node)
            parent = parent_of.get(node, ROOT_PARENT)
            if parent == ROOT_PARENT or parent not in parent_of or parent in seen:
                root_of[node] = node
                break
            node = parent
        root = root_of[node]
        for c in chain:
            root_of[c] = root
        out.append(root)
    return out


def load_file(path: Path, root: Path, report: IngestReport) -> list[dict[str, Any]]:
    """Events rows for one block-hash trace; ``root`` makes ``src_file`` relative."""
    rel = utf8_safe(path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix())
    requests: list[Request] = []
    bailian: bool | None = None
    for lineno, obj in iter_json_lines(path, rel, report):
        if bailian is None:
            bailian = "chat_id" in obj
        try:
            requests.append(_check(lineno, obj, bailian))
        except Malformed as e:
            report.skip_line(rel, lineno, str(e))
    requests.sort(key=lambda r: (r.time, r.lineno))
    if bailian:
        session_names = [f"{rel}#chat{root_id}" for root_id in chain_sessions(requests)]
    else:
        session_names = [f"{rel}#s{k:06d}" for k in infer_prefix_sessions(requests)]
    next_index: dict[str, int] = {}
    rows = []
    for req, session in zip(requests, session_names):
        index = next_index.get(session, 0)
        next_index[session] = index + 1
        rows.append(
            {
                "source": SOURCE,
                "src_file": rel,
                "task_id": session,
                "session_id": session,
                "thread_id": session,
                "is_sidechain": False,
                "call_index": index,
                "model": "",
                "time_basis": "wall",
                "request_time": req.time,
                "response_time": req.time,
                "prompt_tokens": req.input_length,
                "cached_tokens": None,
                "output_tokens": req.output_length,
                "hash_ids": req.hash_ids,
                "tool_calls": [],
                "ended_turn": True,
            }
        )
    return rows


def looks_like(first: list[dict[str, Any]]) -> bool:
    """Format detection: the leading objects are block-hash requests."""
    return any("hash_ids" in o and "input_length" in o for o in first)
