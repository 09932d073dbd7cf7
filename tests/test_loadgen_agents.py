"""``cachewise agents`` against a mock OpenAI-compatible server (httpx transport, no network).

What is checked: prompts grow as the trace says (each call resends the previous messages,
the server's answer and the tool results), recorded idle time is slept times
``--time-scale``, at most ``concurrency`` agents run at once, hints travel as JSON in
``vllm_xargs``, a failed call ends only its session, a stop keeps partial results, and the
server's counters are scraped. The real vLLM server is exercised in tests/test_live_server.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest

from cachewise.data.schema import COLUMNS, write_events
from cachewise.loadgen import prom
from cachewise.loadgen.client import AgentsConfig, run_agents
from cachewise.loadgen.filler import WORDS, filler
from cachewise.replay.workload import WorkloadParams, build_workload

METRICS = """# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} %d
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} %d
# TYPE cachewise_predictions counter
cachewise_predictions_total %d
# TYPE cachewise_fallbacks counter
cachewise_fallbacks_total{reason="load"} 0.0
"""


def events_frame(sessions: int = 2, calls: int = 3, gap_s: float = 2.0) -> pd.DataFrame:
    """``sessions`` main-thread sessions of ``calls`` calls; prompts grow by 40 tokens + the output."""
    rows = []
    for s in range(sessions):
        t = 1000.0 * s
        for k in range(calls):
            rows.append({
                "source": "synthetic", "src_file": "f.jsonl", "task_id": f"task{s}", "session_id": f"s{s}",
                "thread_id": f"s{s}", "is_sidechain": False, "call_index": k, "model": "agent", "time_basis": "wall",
                "request_time": t, "response_time": t + 1.0, "prompt_tokens": 100 + 50 * k, "cached_tokens": None,
                "output_tokens": 10, "hash_ids": None,
                "tool_calls": [{"name": "Bash", "input_json": '{"command": "pytest"}', "command_class": "test",
                                "start_time": t + 1.0, "end_time": t + 1.0 + gap_s, "observation_bytes": 100,
                                "is_error": False}],
                "ended_turn": False,
            })  # fmt: skip
            t += 1.0 + gap_s
    return pd.DataFrame(rows)[COLUMNS]


class MockServer:
    """An OpenAI-compatible server in-process: answers ``max_tokens`` words, streams, counts."""

    def __init__(self, fail_session: str | None = None, delay_s: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.fail_session = fail_session
        self.delay_s = delay_s
        self.active = 0
        self.max_active = 0
        self.completions = 0
        self.before = (1000, 250, 7)  # what the server had counted before the run: deltas must drop it

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]})
        if path == "/tokenize":
            return httpx.Response(200, json={"count": len(json.loads(request.content)["prompt"].split())})
        if path == "/metrics":
            counts = (100 * self.completions, 60 * self.completions, self.completions)
            return httpx.Response(200, text=METRICS % tuple(b + c for b, c in zip(self.before, counts)))
        body = json.loads(request.content)
        self.requests.append(body)
        hint = json.loads(body.get("vllm_xargs", {}).get("cachewise", "{}"))
        if hint.get("session_id") == self.fail_session:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(self.delay_s)
        self.active -= 1
        self.completions += 1
        words = sum(len(m["content"].split()) for m in body["messages"])
        chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}]}
                  for _ in range(body["max_tokens"])]  # fmt: skip
        chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                       "usage": {"prompt_tokens": words, "completion_tokens": body["max_tokens"], "total_tokens": 0}})  # fmt: skip
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})


def _run(server: MockServer, events: pd.DataFrame, stop_after: int | None = None, **config):  # noqa: ANN003, ANN202
    workload = build_workload(events, WorkloadParams(token_scale=1, system_prompt_tokens=40))

    async def go():  # noqa: ANN202
        http = httpx.AsyncClient(transport=httpx.MockTransport(server.handle))
        stop = asyncio.Event()
        if stop_after is not None:

            async def stopper() -> None:
                while server.completions < stop_after:
                    await asyncio.sleep(0.005)
                stop.set()

            asyncio.ensure_future(stopper())
        try:
            return await run_agents(workload, AgentsConfig(base_url="http://mock", **config), stop=stop, progress=False, http_client=http)
        finally:
            await http.aclose()

    return workload, asyncio.run(go())


def _words(message: dict) -> int:
    return len(message["content"].split())


def test_filler_is_deterministic_and_sized() -> None:
    assert filler(50, "a") == filler(50, "a") != filler(50, "b")
    assert len(filler(50, "a").split()) == 50 and len(filler(50, "a", tokens_per_word=2.0).split()) == 25
    assert filler(0, "a") == "" and set(filler(200, 1).split()) <= set(WORDS)


def test_prompts_grow_as_recorded_and_resend_the_answers() -> None:
    server = MockServer()
    workload, report = _run(server, events_frame(sessions=1), time_scale=0.0)
    calls = workload.sessions[0].calls
    bodies = server.requests
    assert len(bodies) == 3 and report.summary()["calls_ok"] == 3
    first = bodies[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user"]
    assert _words(first[0]) == calls[0].prefix_len and _words(first[1]) == calls[0].prompt_len - calls[0].prefix_len
    for k in (1, 2):
        previous, now = bodies[k - 1]["messages"], bodies[k]["messages"]
        assert now[: len(previous)] == previous  # the prefix is resent unchanged
        assert now[len(previous)] == {"role": "assistant", "content": "ok " * 10}  # the server's answer
        assert now[-1]["role"] == "user" and _words(now[-1]) == calls[k].prompt_len - calls[k].keep_len
        assert sum(_words(m) for m in now) == calls[k].prompt_len + (10 - min(10, calls[k].prompt_len - calls[k - 1].prompt_len))
    assert all(b["max_tokens"] == 10 and b["ignore_eos"] is True for b in bodies)


def test_hints_travel_as_json_in_vllm_xargs_and_can_be_turned_off() -> None:
    server = MockServer()
    workload, _ = _run(server, events_frame(sessions=1), time_scale=0.0)
    hint = json.loads(server.requests[0]["vllm_xargs"]["cachewise"])
    assert hint == workload.hint(workload.sessions[0].calls[0]) and hint["tool_calls"][0]["name"] == "Bash"
    plain = MockServer()
    _run(plain, events_frame(sessions=1), time_scale=0.0, vllm_extras=False)
    assert all("vllm_xargs" not in b and "ignore_eos" not in b for b in plain.requests)


def test_recorded_tool_time_is_slept_scaled() -> None:
    server = MockServer()
    workload, report = _run(server, events_frame(sessions=1, gap_s=2.0), time_scale=0.05)
    records = sorted(report.calls, key=lambda c: c.index)
    for call, (before, after) in zip(workload.sessions[0].calls[1:], zip(records, records[1:])):
        delay = call.deps[0].delay
        assert delay >= 2.0 and after.submitted_s - before.finished_s >= delay * 0.05 * 0.99


def test_concurrency_bounds_running_agents_and_jct_counts_from_submission() -> None:
    server = MockServer(delay_s=0.01)
    _, report = _run(server, events_frame(sessions=4), time_scale=0.0, concurrency=2)
    assert server.max_active <= 2
    starts = sorted(s["started_s"] for s in report.sessions)
    assert starts[2] > starts[0]  # the third agent waited for a free slot
    assert all(s["completed"] and s["jct_s"] >= s["session_s"] for s in report.sessions)


def test_a_failing_session_ends_alone() -> None:
    server = MockServer(fail_session="s0")
    _, report = _run(server, events_frame(sessions=2), time_scale=0.0)
    by_key = {s["session"]: s for s in report.sessions}
    failed = [k for k, s in by_key.items() if not s["completed"]]
    assert len(failed) == 1 and "500" in by_key[failed[0]]["error"]
    assert report.summary()["sessions_completed"] == 1 and report.summary()["calls_failed"] == 1


def test_stop_keeps_partial_results(tmp_path: Path) -> None:
    server = MockServer(delay_s=0.01)
    _, report = _run(server, events_frame(sessions=3, gap_s=5.0), stop_after=2, time_scale=1.0, concurrency=3)
    summary = report.summary()
    assert report.interrupted and 2 <= summary["calls_ok"] < summary["calls_planned"]
    written = json.loads(report.write(tmp_path / "r.json").read_text())
    assert written["summary"]["interrupted"] is True and len(written["calls"]) == len(report.calls)


def test_server_counters_are_scraped_as_deltas() -> None:
    server = MockServer()
    _, report = _run(server, events_frame(sessions=1), time_scale=0.0)
    summary = report.summary()
    assert summary["server_prefix_queries"] == 300 and summary["server_prefix_hits"] == 180
    assert summary["server_prefix_hit_rate"] == pytest.approx(0.6)
    assert summary["cachewise"]["cachewise_predictions_total"] == 3
    assert "cachewise_fallbacks_total{reason=load}" in report.server
    assert "sessions 1/1" in report.table()


def test_prom_parse_drops_engine_labels_and_buckets() -> None:
    text = METRICS % (10, 4, 2) + '# TYPE cachewise_scorer_latency_seconds histogram\ncachewise_scorer_latency_seconds_bucket{le="0.1"} 3\n'
    parsed = prom.parse(text)
    assert parsed["vllm:prefix_cache_hits_total"] == 4 and not any("bucket" in k for k in parsed)
    assert prom.delta(None, parsed) is None and prom.hit_rate({"vllm:prefix_cache_queries_total": 0}) is None


def test_cli_reports_an_unreachable_server(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(events_frame(sessions=1), events)
    out = subprocess.run(
        [sys.executable, "-m", "cachewise.cli", "agents", "--url", "http://127.0.0.1:9", "--events", str(events),
         "--split", "all", "--params", str(tmp_path / "none.yaml"), "--no-progress", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "cachewise agents: error" in out.stderr


class _StubHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible HTTP server (stdlib) for the CLI's Ctrl-C test."""

    chat_calls = 0

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def _send(self, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1/models":
            self._send(json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]}))
        else:
            self._send(METRICS % (0, 0, 0), "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            self._send(json.dumps({"count": len(body["prompt"].split())}))
            return
        type(self).chat_calls += 1
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}]}  # fmt: skip
        self._send(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", "text/event-stream")


def test_cli_ctrl_c_writes_partial_results(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(events_frame(sessions=2, calls=5, gap_s=30.0), events)  # long tool times: still running at Ctrl-C
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "r.json"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachewise.cli", "agents", "--url", f"http://127.0.0.1:{server.server_port}",
             "--events", str(events), "--split", "all", "--params", str(tmp_path / "none.yaml"), "--token-scale", "1",
             "--no-progress", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _StubHandler.chat_calls < 2:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 130, stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["summary"]["interrupted"] is True and report["summary"]["calls_ok"] == 2  # each session's first call
    assert "(interrupted)" in stdout
