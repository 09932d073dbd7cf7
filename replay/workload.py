"""Agent sessions of the events table as closed-loop request plans.

A :class:`Workload` turns recorded LLM calls into :class:`CallPlan` s the replay driver
sends to the engine. Each plan says how long its prompt and output are, which part of its
prompt repeats the previous call of its thread, and which finished calls it waits for.

Closed loop (the dependency rule): a call is released ``delay`` seconds after *all* its
:class:`Dependency` predecessors finished in the replay, where ``delay`` is the idle time
recorded in the trace:

* call ``k+1`` of a thread waits for call ``k``: ``delay = request_time[k+1] - response_time[k]``
  (the recorded tool time plus client overhead);
* a sub-agent thread (``is_sidechain``) starts after the main-thread call that was the
  last to finish before it (the call that launched the ``Task`` tool);
* the main-thread call following a sub-agent's last call also waits for it, with the
  recorded gap between them (the ``Task`` tool returns when the sub-agent is done).

Prefix structure (what the synthesised token ids reproduce, see
:mod:`cachewise.replay.tokens`): the first call of a thread starts with the shared
system prompt of its group (same ``model`` and same ``is_sidechain``) and continues with
tokens of its own. Call ``k+1``'s prompt is call ``k``'s prompt, then the first
``min(output_k, growth)`` tokens of call ``k``'s output, then new tokens (the tool
results), where ``growth = prompt_{k+1} - prompt_k``. A prompt that shrinks (context
compaction) restarts the thread's prefix from the system prompt; such restarts are counted.
Sources with block hashes (``hash_ids``, e.g. Mooncake) take their prefix identity from
the hashes instead: equal hash, equal tokens.

Scaling (``token_scale`` s: each replay token stands for s trace tokens; the cost model
scales back): *positions* are scaled, never lengths one by one. Trace position p of a
thread's token stream becomes replay position ``floor(p / s)``, so a prompt of P trace
tokens has ``floor(P / s)`` replay tokens, call k's output ends at ``floor((P_k + O_k) / s)``,
the part call k+1 repeats ends at ``floor(keep / s)`` (keep in trace tokens, as above) and a
shared system prompt of S trace tokens is ``floor(S / s)`` replay tokens. Hence two prompts
that share exactly k trace tokens share exactly ``floor(k / s)`` replay tokens (the same
leading replay blocks): prefix boundaries are exact up to the scale, with no rounding error
carried from call to call (tests/test_replay_workload.py checks it property-wise). The one
departure: a prompt or output shorter than s trace tokens still gets one replay token.

Invariants: every plan has ``prompt_len >= 1``, ``output_len >= 1``, ``keep_len <=
prompt_len``, ``keep_len`` at most the previous call's ``prompt_len + output_len``, and its
dependencies precede it in its session's ``calls``. Complexity: O(calls) after one group-by.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from cachewise.data.schema import SchemaError


@dataclass(frozen=True)
class WorkloadParams:
    """How the events table becomes a replay workload (``replay.workload`` in params.yaml).

    ``token_scale``: trace tokens per replay token (>= 1; 1 replays every token).
    ``max_prompt_tokens``: a thread is cut before its first call whose recorded prompt is
    longer (trace tokens); ``None`` keeps everything. A thread is also cut before a call
    with no recorded prompt or output length. Cut calls are counted.
    ``system_prompt_tokens``: length of the prompt prefix shared by every thread of one
    group; ``"auto"`` takes, per group, the median ``cached_tokens`` of the group's first
    calls that report a cache read. A group with no cache reads (a server that reports
    none) gets its shortest first prompt minus the median unshared part (first prompt minus
    cache read) of the groups that have them; 0 when no group has any.
    ``max_gap_s``: recorded idle times above it are cut to it (``None``: keep).
    """

    token_scale: int = 1
    max_prompt_tokens: int | None = None
    system_prompt_tokens: int | str = "auto"
    max_gap_s: float | None = None

    def __post_init__(self) -> None:
        if self.token_scale < 1:
            raise ValueError(f"token_scale must be >= 1, got {self.token_scale}")
        if isinstance(self.system_prompt_tokens, str) and self.system_prompt_tokens != "auto":
            raise ValueError(f"system_prompt_tokens must be an int or 'auto', got {self.system_prompt_tokens!r}")


@dataclass(frozen=True)
class Dependency:
    """Wait for call ``request_id`` to finish, then ``delay`` more seconds."""

    request_id: str
    delay: float


@dataclass(frozen=True)
class CallPlan:
    """One LLM call to replay (lengths in replay tokens).

    ``keep_len`` tokens of the prompt repeat the previous call of the thread (its prompt
    followed by its output); 0 at a thread start or restart, where the prompt instead
    starts with ``prefix_len`` tokens of the shared prefix ``prefix_group``. ``start_offset``
    is the release time after the session starts for a call without dependencies.
    ``next_gap`` is the recorded idle time until the thread's next call (``None`` for the
    thread's last call); ``row`` is the call's index label in :attr:`Workload.events`.
    """

    request_id: str
    session: int
    thread: int
    index: int
    row: int
    prompt_len: int
    output_len: int
    keep_len: int
    prefix_group: int
    prefix_len: int
    hash_ids: tuple[int, ...] | None
    deps: tuple[Dependency, ...]
    start_offset: float
    next_gap: float | None


@dataclass(frozen=True)
class SessionPlan:
    """One agent session: its calls in an order where dependencies come first."""

    key: str
    task_id: str
    model: str
    calls: tuple[CallPlan, ...]


@dataclass
class Workload:
    """Sessions to replay plus the events rows they came from."""

    sessions: list[SessionPlan]
    events: pd.DataFrame
    params: WorkloadParams
    counts: Counter = field(default_factory=Counter)
    prefix_groups: list[tuple[str, bool]] = field(default_factory=list)
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def calls(self) -> list[CallPlan]:
        """Every call of every session."""
        return [c for s in self.sessions for c in s.calls]

    def hint(self, call: CallPlan) -> dict:
        """What the replay client tells the runtime about ``call`` (``extra_args["cachewise"]``).

        The response's recorded tool calls (name and raw input, as a tool parser would find
        them in the output text), the call's session, thread and sub-agent flag, and its trace
        family (the events' ``source``), as a client names its traffic for the guard's certified start.
        """
        tool_calls = self._column("tool_calls")[call.row]
        return {
            "tool_calls": [
                {"name": str(t["name"]), "arguments": t["input_json"] or ""}
                for t in (() if tool_calls is None else tool_calls)
            ],
            "session_id": str(self._column("session_id")[call.row]),
            "thread_id": str(self._column("thread_id")[call.row]),
            "is_sidechain": bool(self._column("is_sidechain")[call.row]),
            "family": str(self._column("source")[call.row]),
        }

    def server_view(self, call: CallPlan) -> dict:
        """What a server learns about ``call`` without client cooperation: only the tool calls a
        tool parser finds in the response text (the replay's synthesised output has no text, so
        they are taken from the trace); no session, thread, sub-agent or family hint."""
        return {"tool_calls": self.hint(call)["tool_calls"]}

    def _column(self, name: str) -> np.ndarray:
        """A column of :attr:`events` as an array indexed by row (``events`` has a range index)."""
        if name not in self._columns:
            self._columns[name] = self.events[name].to_numpy()
        return self._columns[name]

    def max_request_tokens(self) -> int:
        """Longest prompt + output of any call (replay tokens)."""
        return max(c.prompt_len + c.output_len for c in self.calls)

    def distinct_block_bound(self, block_size: int) -> int:
        """An upper bound on the distinct KV blocks the whole workload can ever fill.

        Each call adds at most its non-repeated tokens (prompt beyond ``keep_len`` plus
        output) as new blocks, plus one partial block at each end; shared prefixes are
        counted once per group.
        """
        per_call = sum(math.ceil((c.prompt_len - c.keep_len + c.output_len) / block_size) + 2 for c in self.calls)
        prefixes: dict[int, int] = {}
        for c in self.calls:
            prefixes[c.prefix_group] = max(prefixes.get(c.prefix_group, 0), c.prefix_len)
        return per_call + sum(math.ceil(n / block_size) for n in prefixes.values())


def _scaled(position: float, scale: int) -> int:
    """Replay position of trace position ``position``: ``floor(position / scale)`` (module doc)."""
    return int(position) // scale


def _system_prompt_lengths(events: pd.DataFrame, params: WorkloadParams) -> dict[tuple[str, bool], int]:
    """Shared prefix length (trace tokens) of each (model, is_sidechain) group."""
    keys = [(m, bool(s)) for m, s in events[["model", "is_sidechain"]].drop_duplicates().itertuples(index=False)]
    if params.system_prompt_tokens != "auto":
        return {k: int(params.system_prompt_tokens) for k in keys}
    first = events[events["call_index"] == 0]
    read = first[first["cached_tokens"].fillna(0) > 0]
    median = read.groupby(["model", "is_sidechain"])["cached_tokens"].median()
    shortest = first.groupby(["model", "is_sidechain"])["prompt_tokens"].min()
    unshared = float((read["prompt_tokens"] - read["cached_tokens"]).median()) if len(read) else math.nan
    lengths = {}
    for k in keys:
        if k in median.index:
            lengths[k] = int(median[k])
        elif math.isnan(unshared) or k not in shortest.index:
            lengths[k] = 0
        else:
            lengths[k] = max(0, int(shortest[k] - unshared))
    return lengths


def _split_threads(session: pd.DataFrame) -> tuple[pd.DataFrame | None, list[pd.DataFrame]]:
    """The main thread (``thread_id == session_id``) and the other threads by start time."""
    main, others = None, []
    for thread_id, thread in session.groupby("thread_id", sort=False):
        thread = thread.sort_values("call_index", kind="stable")
        if thread_id == thread["session_id"].iloc[0] and not bool(thread["is_sidechain"].iloc[0]):
            main = thread
        else:
            others.append(thread)
    others.sort(key=lambda t: float(t["request_time"].iloc[0]))
    return main, others


class _Planner:
    """Turns event rows into :class:`CallPlan` s by the rules of the module doc."""

    def __init__(self, workload: Workload, sys_len: dict[tuple[str, bool], int]):
        self.w = workload
        self.p = workload.params
        self.sys_len = sys_len

    def gap(self, delay: float) -> float:
        """A recorded idle time, clamped at 0 and cut at ``max_gap_s`` (both counted)."""
        if delay < 0:
            self.w.counts["negative_gaps_clamped"] += 1
            return 0.0
        if self.p.max_gap_s is not None and delay > self.p.max_gap_s:
            self.w.counts["long_gaps_cut"] += 1
            return float(self.p.max_gap_s)
        return float(delay)

    def group(self, model: str, sidechain: bool) -> int:
        """Index of the shared-prefix group ``(model, sidechain)``."""
        key = (model, sidechain)
        if key not in self.w.prefix_groups:
            self.w.prefix_groups.append(key)
        return self.w.prefix_groups.index(key)

    def _replayable(self, rows: list) -> list:
        """``rows`` up to the first one that cannot be replayed (cut calls are counted)."""
        for i, r in enumerate(rows):
            unknown = pd.isna(r.prompt_tokens) or pd.isna(r.output_tokens)
            if unknown or (self.p.max_prompt_tokens is not None and r.prompt_tokens > self.p.max_prompt_tokens):
                self.w.counts["calls_cut_unknown_length" if unknown else "calls_cut_long_prompt"] += len(rows) - i
                return rows[:i]
        return rows

    def _prefix(self, r, prompt: int, before) -> tuple[int, int]:
        """``(keep_len, prefix_len)`` of a call of ``prompt`` replay tokens whose thread's previous
        recorded call is ``before`` (module doc); hash-identified calls use neither."""
        if r.hash_ids is not None:
            return 0, 0
        scale = self.p.token_scale
        if before is not None and r.prompt_tokens >= before.prompt_tokens:
            growth = r.prompt_tokens - before.prompt_tokens
            return _scaled(before.prompt_tokens + min(before.output_tokens, growth), scale), 0
        if before is not None:
            self.w.counts["prefix_restarts"] += 1
        shared = self.sys_len[(r.model, bool(r.is_sidechain))]
        return 0, min(prompt, _scaled(shared, scale))

    def thread(
        self, frame: pd.DataFrame, session: int, thread: int, t0: float, first_deps: tuple[Dependency, ...]
    ) -> list[CallPlan]:
        """Plans of one thread (cut where it cannot be replayed); ``first_deps`` gate its first call."""
        scale = self.p.token_scale
        rows = self._replayable(list(frame.itertuples()))
        plans: list[CallPlan] = []
        for k, r in enumerate(rows):
            previous = plans[-1] if plans else None
            prompt = max(1, _scaled(r.prompt_tokens, scale))
            keep, prefix = self._prefix(r, prompt, rows[k - 1] if k else None)
            deps = first_deps
            if previous is not None:
                deps = (Dependency(previous.request_id, self.gap(r.request_time - rows[k - 1].response_time)),)
                plans[-1] = replace(previous, next_gap=deps[0].delay)
            plans.append(
                CallPlan(
                    request_id=f"s{session}.t{thread}.c{k}",
                    session=session,
                    thread=thread,
                    index=k,
                    row=int(r.Index),
                    prompt_len=prompt,
                    output_len=max(1, _scaled(r.prompt_tokens + r.output_tokens, scale) - prompt),
                    keep_len=keep,
                    prefix_group=self.group(r.model, bool(r.is_sidechain)),
                    prefix_len=prefix,
                    hash_ids=None if r.hash_ids is None else tuple(int(h) for h in r.hash_ids),
                    deps=deps,
                    start_offset=max(0.0, float(r.request_time) - t0) if k == 0 else 0.0,
                    next_gap=None,
                )
            )
        return plans

    def session(self, frame: pd.DataFrame, session: int, thread_base: int) -> tuple[SessionPlan, int]:
        """One session's plan and the number of thread indices it used."""
        t0 = float(frame["request_time"].min())
        main_frame, others = _split_threads(frame)
        main = self.thread(main_frame, session, thread_base, t0, ()) if main_frame is not None else []
        kept = frame.loc[[p.row for p in main]]
        plan_of_row = {p.row: p for p in main}
        joins: dict[str, list[Dependency]] = {}
        side: list[CallPlan] = []
        for j, thread in enumerate(others, start=1):
            start = float(thread["request_time"].iloc[0])
            before = kept[kept["response_time"] <= start]
            first_deps: tuple[Dependency, ...] = ()
            if len(before):
                parent = before["response_time"].idxmax()
                delay = self.gap(start - kept.at[parent, "response_time"])
                first_deps = (Dependency(plan_of_row[parent].request_id, delay),)
            plans = self.thread(thread, session, thread_base + j, t0, first_deps)
            if not plans:
                continue
            end = float(frame.at[plans[-1].row, "response_time"])
            after = kept[kept["request_time"] >= end]
            if len(after):
                joiner = after["request_time"].idxmin()
                joins.setdefault(plan_of_row[joiner].request_id, []).append(
                    Dependency(plans[-1].request_id, self.gap(kept.at[joiner, "request_time"] - end))
                )
            side.extend(plans)
        main = [replace(p, deps=p.deps + tuple(joins.get(p.request_id, ()))) for p in main]
        first = frame.loc[frame["request_time"].idxmin()]
        calls = tuple(sorted(main + side, key=lambda p: (frame.at[p.row, "request_time"], p.request_id)))
        _check_order(calls)
        return SessionPlan(str(first["session_id"]), str(first["task_id"]), first["model"], calls), 1 + len(others)


def _check_order(calls: tuple[CallPlan, ...]) -> None:
    """Raise :class:`SchemaError` unless every dependency precedes its call."""
    seen: set[str] = set()
    for c in calls:
        late = [d.request_id for d in c.deps if d.request_id not in seen]
        if late:
            raise SchemaError(f"call {c.request_id} (events row {c.row}) is recorded before its predecessor {late[0]}")
        seen.add(c.request_id)


def build_workload(events: pd.DataFrame, params: WorkloadParams, sessions: list[str] | None = None) -> Workload:
    """Plan the sessions of ``events``: all by first request time, or the ``session_id`` s listed.

    Raises :class:`SchemaError` when the table is empty, a listed session is absent, or no
    session is left after the ``max_prompt_tokens`` cut.
    """
    if events.empty:
        raise SchemaError("events table is empty: nothing to replay")
    events = events.reset_index(drop=True)
    events["model"] = events["model"].fillna("").astype(str)
    frames = {key: f for key, f in events.groupby(["source", "session_id"], sort=False)}
    if sessions is None:
        order = sorted(frames, key=lambda k: float(frames[k]["request_time"].min()))
    else:
        key_of = {sid: key for key in frames for sid in [key[1]]}
        missing = [s for s in sessions if s not in key_of]
        if missing:
            raise SchemaError(f"sessions not in the events table: {missing[:5]}")
        order = [key_of[s] for s in sessions]
    workload = Workload(sessions=[], events=events, params=params)
    planner = _Planner(workload, _system_prompt_lengths(events, params))
    thread_base = 0
    for key in order:
        plan, used = planner.session(frames[key], len(workload.sessions), thread_base)
        thread_base += used
        if plan.calls:
            workload.sessions.append(plan)
        else:
            workload.counts["sessions_empty_after_cut"] += 1
    if not workload.sessions:
        raise SchemaError("no session left to replay after the max_prompt_tokens cut")
    return workload
