"""Real agent clients: recorded sessions replayed against an OpenAI-compatible server.

Each session of a :class:`~cachewise.replay.workload.Workload` (the plans the
replay benchmark serves, so both see the same sessions, lengths and idle times) becomes an
asyncio agent talking ``/v1/chat/completions`` through the ``openai`` client:

* **Messages follow the trace.** A thread's first call sends a system message of its
  group's shared prefix (``prefix_len`` tokens, the same text for every thread of the
  group) and a user message of its own (``prompt_len - prefix_len``). Call ``k+1`` resends
  call ``k``'s messages, the text the server answered (assistant), and a user message of
  ``prompt_len - keep_len`` tokens: the tool results, as text. So the server sees the
  recorded prompt growth and the recorded prefix sharing. Text is :func:`filler` words;
  ``tokens_per_word`` is measured once with the server's ``/tokenize`` where it has one.
* **Closed loop with recorded think/tool time.** A call is sent ``delay * time_scale``
  seconds after all calls it depends on returned (the replay's dependency rule); the first
  call of a session at ``start_offset * time_scale``.
* **N concurrent agents.** At most ``concurrency`` sessions run at once; the others wait for
  a free slot, in workload order. All sessions are submitted at t=0: a session's JCT is
  its last response's end minus the run's start.
* **Outputs.** ``max_tokens`` = the recorded output length; with ``vllm_extras`` the request
  also carries ``ignore_eos`` (so lengths follow the trace even on a random-weight model)
  and, with ``hints``, the CacheWise hint (the call's recorded tool calls, session and
  thread) as ``vllm_xargs: {"cachewise": "<json>"}``. Greedy sampling (temperature 0).
* **Measures.** Per call: time to first token (first streamed content), end time, the
  server's ``usage`` (prompt, cached and output tokens). Per session: JCT, mean TTFT. The
  server's ``/metrics`` is scraped before and after (:mod:`cachewise.loadgen.prom`).
* **Stopping.** Setting ``stop`` (the CLI sets it on Ctrl-C) cancels every agent; the report
  then holds the calls finished so far and says ``interrupted``. A failed call ends its
  session (recorded as an error); other sessions go on.

Memory: O(calls) records plus one message list per live thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

from cachewise.loadgen import prom
from cachewise.loadgen.filler import filler
from cachewise.replay.workload import CallPlan, SessionPlan, Workload


@dataclass(frozen=True)
class AgentsConfig:
    """Where to send the agents and how."""

    base_url: str = "http://127.0.0.1:8000"
    model: str | None = None  # None: the server's first model in /v1/models
    concurrency: int = 4
    time_scale: float = 1.0  # recorded idle (tool) time is slept times this
    hints: bool = True
    vllm_extras: bool = True  # ignore_eos and vllm_xargs (vLLM's extensions of the API)
    request_timeout_s: float = 600.0
    api_key: str = "EMPTY"
    seed: int = 0  # of the filler text

    def __post_init__(self) -> None:
        if self.concurrency < 1 or not (self.time_scale >= 0) or self.request_timeout_s <= 0:
            raise ValueError(f"invalid agents settings {self}")


@dataclass
class CallRecord:
    """One LLM call as the client saw it (times in seconds since the run's start)."""

    session: str
    request_id: str
    thread: int
    index: int
    planned_prompt_tokens: int
    planned_output_tokens: int
    submitted_s: float
    first_token_s: float | None = None
    finished_s: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.submitted_s


@dataclass
class AgentsReport:
    """What :func:`run_agents` measured."""

    config: dict[str, Any]
    model: str
    tokens_per_word: float
    sessions_planned: int
    calls_planned: int
    wall_s: float = 0.0
    interrupted: bool = False
    calls: list[CallRecord] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    server: dict[str, float] | None = None  # /metrics deltas over the run

    def summary(self) -> dict[str, Any]:
        """Headline numbers: JCT and TTFT distributions, errors, server hit rate and CacheWise counters."""
        done = [s for s in self.sessions if s["completed"]]
        jct = [s["jct_s"] for s in done]
        ttft = [c.ttft_s for c in self.calls if c.ttft_s is not None and c.error is None]
        server = self.server or {}
        return {
            "sessions_completed": len(done),
            "sessions_planned": self.sessions_planned,
            "calls_ok": sum(c.error is None and c.finished_s is not None for c in self.calls),
            "calls_failed": sum(c.error is not None for c in self.calls),
            "calls_planned": self.calls_planned,
            "jct_mean_s": _mean(jct),
            "jct_p50_s": _quantile(jct, 0.5),
            "jct_p95_s": _quantile(jct, 0.95),
            "ttft_mean_s": _mean(ttft),
            "ttft_p50_s": _quantile(ttft, 0.5),
            "ttft_p95_s": _quantile(ttft, 0.95),
            "prompt_tokens": sum(c.prompt_tokens or 0 for c in self.calls),
            "server_prefix_hit_rate": prom.hit_rate(self.server),
            "server_prefix_hits": server.get("vllm:prefix_cache_hits_total"),
            "server_prefix_queries": server.get("vllm:prefix_cache_queries_total"),
            "cachewise": {k: v for k, v in server.items() if k.startswith("cachewise_")} or None,
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "config": self.config,
            "model": self.model,
            "tokens_per_word": self.tokens_per_word,
            "sessions": self.sessions,
            "calls": [{**asdict(c), "ttft_s": c.ttft_s} for c in self.calls],
            "server": self.server,
        }

    def write(self, path: str | Path) -> Path:
        """The report as JSON, written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    def table(self) -> str:
        """A small text table: one row per session, then the totals."""
        rows = [f"{'session':<16} {'calls':>9} {'JCT s':>8} {'TTFT ms':>8}  status"]
        for s in self.sessions:
            ttft = "-" if s["ttft_mean_s"] is None else f"{s['ttft_mean_s'] * 1e3:.0f}"
            jct = "-" if s["jct_s"] is None else f"{s['jct_s']:.1f}"
            status = "ok" if s["completed"] else (s["error"] or "unfinished")
            rows.append(f"{s['session'][:16]:<16} {s['calls_done']:>4}/{s['calls_planned']:<4} {jct:>8} {ttft:>8}  {status[:60]}")
        m = self.summary()
        rate = m["server_prefix_hit_rate"]
        rows.append(
            f"sessions {m['sessions_completed']}/{m['sessions_planned']}, calls {m['calls_ok']}/{m['calls_planned']}"
            f" ({m['calls_failed']} failed); JCT mean {_fmt(m['jct_mean_s'])} s, p95 {_fmt(m['jct_p95_s'])} s;"
            f" TTFT p50 {_fmt(m['ttft_p50_s'], 1e3)} ms, p95 {_fmt(m['ttft_p95_s'], 1e3)} ms;"
            f" server prefix hit rate {'-' if rate is None else f'{rate:.1%}'}"
            + (" (interrupted)" if m["interrupted"] else "")
        )
        if m["cachewise"]:
            rows.append("CacheWise: " + ", ".join(f"{k}={v:g}" for k, v in m["cachewise"].items()))
        return "\n".join(rows)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.1f}"


async def calibrate(http: httpx.AsyncClient, base_url: str, model: str) -> float:
    """Tokens per filler word on this server (``/tokenize``); 1.0 when the server has no such endpoint."""
    words = 200
    try:
        response = await http.post(
            f"{base_url.rstrip('/')}/tokenize", json={"model": model, "prompt": filler(words, "calibrate")}, timeout=30.0
        )
        count = int(response.json()["count"]) if response.status_code == 200 else 0
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        count = 0
    return count / words if count > 0 else 1.0


class _Agents:
    """One run: the shared clients, clock, records and progress callback."""

    def __init__(
        self, workload: Workload, config: AgentsConfig, api: AsyncOpenAI, model: str, tpw: float, tick: Callable[[int], None]
    ) -> None:
        self.workload, self.config, self.api, self.model, self.tpw, self.tick = workload, config, api, model, tpw, tick
        self.t0 = time.monotonic()
        self.records: list[CallRecord] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.slots = asyncio.Semaphore(config.concurrency)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def text(self, tokens: int, key: str) -> str:
        return filler(tokens, f"{self.config.seed}/{key}", self.tpw)

    async def session(self, plan: SessionPlan) -> None:
        state = {"session": plan.key, "calls_planned": len(plan.calls), "calls_done": 0, "started_s": None,
                 "jct_s": None, "session_s": None, "ttft_mean_s": None, "completed": False, "error": None}  # fmt: skip
        self.sessions[plan.key] = state
        async with self.slots:
            state["started_s"] = start = self.now()
            finished: dict[str, float] = {}
            done = {c.request_id: asyncio.Event() for c in plan.calls}
            threads: dict[int, list[dict[str, str]]] = {}
            ttfts: list[float] = []

            async def one(call: CallPlan) -> None:
                for dep in call.deps:
                    await done[dep.request_id].wait()
                try:
                    if state["error"] is not None:
                        return
                    scale = self.config.time_scale
                    release = max((finished[d.request_id] + d.delay * scale for d in call.deps), default=start + call.start_offset * scale)
                    await asyncio.sleep(max(0.0, release - self.now()))
                    messages = self.messages(call, threads.get(call.thread))
                    record, answer = await self.send(plan, call, messages)
                    if record.error is not None:
                        state["error"] = f"{call.request_id}: {record.error}"
                        return
                    threads[call.thread] = [*messages, {"role": "assistant", "content": answer}]
                    finished[call.request_id] = record.finished_s or self.now()
                    state["calls_done"] += 1
                    if record.ttft_s is not None:
                        ttfts.append(record.ttft_s)
                finally:
                    done[call.request_id].set()

            try:
                await asyncio.gather(*(one(c) for c in plan.calls))
            finally:  # also when cancelled: the partial session is reported
                if finished:
                    state["jct_s"] = max(finished.values())
                    state["session_s"] = state["jct_s"] - start
                state["ttft_mean_s"] = _mean(ttfts)
                state["completed"] = state["error"] is None and state["calls_done"] == len(plan.calls)

    def messages(self, call: CallPlan, previous: list[dict[str, str]] | None) -> list[dict[str, str]]:
        """The call's chat messages (module doc): a fresh thread, or the previous ones plus tool results."""
        if call.keep_len == 0 or previous is None:
            return [
                {"role": "system", "content": self.text(call.prefix_len, f"system-{call.prefix_group}")},
                {"role": "user", "content": self.text(call.prompt_len - call.prefix_len, call.request_id)},
            ]
        return [*previous, {"role": "user", "content": self.text(call.prompt_len - call.keep_len, call.request_id)}]

    async def send(self, plan: SessionPlan, call: CallPlan, messages: list[dict[str, str]]) -> tuple[CallRecord, str]:
        """One streamed chat completion; never raises (errors are recorded)."""
        record = CallRecord(plan.key, call.request_id, call.thread, call.index, call.prompt_len, call.output_len, self.now())
        self.records.append(record)
        extra: dict[str, Any] = {}
        if self.config.vllm_extras:
            extra["ignore_eos"] = True
            if self.config.hints:
                extra["vllm_xargs"] = {"cachewise": json.dumps(self.workload.hint(call))}
        parts: list[str] = []
        try:
            stream = await self.api.chat.completions.create(
                model=self.model, messages=messages, max_tokens=call.output_len, temperature=0.0, stream=True,
                stream_options={"include_usage": True}, extra_body=extra or None,
            )  # fmt: skip
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content is not None:
                    if record.first_token_s is None:
                        record.first_token_s = self.now()
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    record.prompt_tokens = chunk.usage.prompt_tokens
                    record.output_tokens = chunk.usage.completion_tokens
                    details = chunk.usage.prompt_tokens_details
                    record.cached_tokens = getattr(details, "cached_tokens", None) if details is not None else None
            record.finished_s = self.now()
        except asyncio.CancelledError:
            record.error = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - one failed call ends its session, not the run
            record.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.tick(1)
        return record, "".join(parts)


async def run_agents(
    workload: Workload,
    config: AgentsConfig,
    stop: asyncio.Event | None = None,
    progress: bool = True,
    http_client: httpx.AsyncClient | None = None,
) -> AgentsReport:
    """Run every session of ``workload`` against ``config.base_url`` (module doc); the report."""
    from tqdm.auto import tqdm

    base = config.base_url.rstrip("/")
    http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(config.request_timeout_s))
    api = AsyncOpenAI(base_url=f"{base}/v1", api_key=config.api_key, http_client=http, max_retries=0)
    try:
        model = config.model or (await api.models.list()).data[0].id
        tpw = await calibrate(http, base, model)
        calls = workload.calls
        report = AgentsReport(asdict(config), model, tpw, len(workload.sessions), len(calls))
        before = await prom.scrape(http, base)
        bar = tqdm(total=len(calls), desc="agent calls", unit="call", disable=not progress)
        agents = _Agents(workload, config, api, model, tpw, bar.update)
        tasks = [asyncio.ensure_future(agents.session(s)) for s in workload.sessions]
        everything = asyncio.ensure_future(asyncio.gather(*tasks))
        waiters: list[asyncio.Future] = [everything]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            report.interrupted = True
            for task in tasks:
                task.cancel()
        await asyncio.gather(everything, return_exceptions=True)
        for waiter in waiters[1:]:
            waiter.cancel()
        bar.close()
        report.wall_s = agents.now()
        report.calls = agents.records
        report.sessions = [agents.sessions[s.key] for s in workload.sessions if s.key in agents.sessions]
        report.server = prom.delta(before, await prom.scrape(http, base))
        return report
    finally:
        if http_client is None:
            await http.aclose()
