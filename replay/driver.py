"""The closed loop: sessions send calls to the engine as their recorded tool time passes.

:class:`ClosedLoopDriver` owns the simulated clock. Sessions start in workload order; at
most ``concurrency`` run at once, and with an ``arrival_rate`` a session also waits for
its Poisson arrival time. A call is sent once every call it depends on (see
:mod:`cachewise.replay.workload`) has finished in the replay and its recorded
delay has passed. Each engine step advances the clock by the cost model's time for the
batch that vLLM scheduled (at ``token_scale`` s: of the s real steps it stands for); a call
finishes at the end of the step that sampled its last token. When the engine has nothing to
do, the clock jumps to the next release.

``client_hints``: whether requests carry the client's session id and hint
(:meth:`Workload.hint`); without, only what a server sees by itself
(:meth:`Workload.server_view`).

Invariants: the clock never goes back; every call of every session is sent exactly once
and finishes exactly once with exactly its planned output length (checked), or
:class:`ReplayStuck` is raised.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm
from vllm.v1.request import Request

from cachewise.runtime.policy import ManualClock
from cachewise.replay.costmodel import CostModel
from cachewise.replay.engine import VllmEngine
from cachewise.replay.metrics import RunMetrics
from cachewise.replay.tokens import TokenSynth
from cachewise.replay.workload import CallPlan, Workload


class ReplayStuck(RuntimeError):
    """The engine holds requests it can never schedule (KV cache smaller than one request)."""


@dataclass(frozen=True)
class ArrivalParams:
    """How sessions are overlaid (``replay.arrivals`` in params.yaml)."""

    concurrency: int = 32
    arrival_rate: float | None = None  # sessions per second; None: start as soon as a slot frees
    seed: int = 0


class ClosedLoopDriver:
    """Replays ``workload`` through ``engine``; the results accumulate in ``metrics``."""

    def __init__(
        self,
        workload: Workload,
        synth: TokenSynth,
        engine: VllmEngine,
        cost: CostModel,
        arrivals: ArrivalParams,
        metrics: RunMetrics,
        clock: ManualClock,
        client_hints: bool = True,
    ):
        if arrivals.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {arrivals.concurrency}")
        self.w = workload
        self.synth = synth
        self.engine = engine
        self.cost = cost
        self.arrivals = arrivals
        self.metrics = metrics
        self.clock = clock
        self.client_hints = client_hints
        self._plans = {c.request_id: c for c in workload.calls}
        self._successors: dict[str, list[tuple[CallPlan, float]]] = defaultdict(list)
        for c in self._plans.values():
            for d in c.deps:
                self._successors[d.request_id].append((c, d.delay))
        self._waiting_on = {c.request_id: len(c.deps) for c in self._plans.values()}
        self._release_at = {c.request_id: 0.0 for c in self._plans.values()}
        self._ready: list[tuple[float, int, str]] = []
        self._left_in_session = [len(s.calls) for s in workload.sessions]
        self._session_start: dict[int, tuple[float, float]] = {}  # session -> (submitted, started)
        self._previous: dict[int, np.ndarray] = {}
        self._seq = 0
        self._active = 0  # sessions started and not finished

    def _session_queue(self) -> deque[tuple[float, int]]:
        n = len(self.w.sessions)
        if self.arrivals.arrival_rate:
            rng = np.random.default_rng(self.arrivals.seed)
            times = np.cumsum(rng.exponential(1.0 / self.arrivals.arrival_rate, size=n))
            times -= times[0]
        else:
            times = np.zeros(n)
        return deque(zip(times.tolist(), range(n)))

    def _push(self, at: float, call: CallPlan) -> None:
        self._seq += 1
        heapq.heappush(self._ready, (at, self._seq, call.request_id))

    def _start_session(self, idx: int, submitted: float) -> None:
        now = self.clock.now
        self._session_start[idx] = (submitted, now)
        for c in self.w.sessions[idx].calls:
            if not c.deps:
                self._push(now + c.start_offset, c)

    def _send(self, call: CallPlan) -> None:
        previous = self._previous.pop(call.thread, None)
        prompt = self.synth.prompt(call, previous)
        output = self.synth.output(call)
        if self._successors.get(call.request_id):
            self._previous[call.thread] = np.concatenate([prompt, output])
        request = self.engine.add(
            call.request_id,
            prompt,
            output,
            session_id=self.w.sessions[call.session].key if self.client_hints else None,
            arrival_time=self.clock.now,
            hint=self.w.hint(call) if self.client_hints else self.w.server_view(call),
        )
        hashes = VllmEngine.block_hashes(request)
        if previous is not None:  # a return of its thread: was its prefix on the GPU when it arrived?
            self.metrics.on_return(hashes, self.engine.gpu_prefix_blocks(request))
        self.metrics.on_arrival(call.session, call.thread, hashes, len(prompt))

    def _finish(self, request: Request) -> None:
        now = self.clock.now
        call = self._plans[request.request_id]
        if request.num_output_tokens != call.output_len:
            raise RuntimeError(
                f"{call.request_id} generated {request.num_output_tokens} tokens, planned {call.output_len}"
                " (its successor's prompt would not match)"
            )
        self.metrics.preemptions += request.num_preemptions
        computed = (request.num_tokens - 1) // self.engine.params.block_size  # the last token is never computed
        self.metrics.on_finish(VllmEngine.block_hashes(request)[:computed])
        for succ, delay in self._successors.get(call.request_id, ()):
            rid = succ.request_id
            self._waiting_on[rid] -= 1
            self._release_at[rid] = max(self._release_at[rid], now + delay)
            if self._waiting_on[rid] == 0:
                self._push(self._release_at[rid], succ)
        self._left_in_session[call.session] -= 1
        if self._left_in_session[call.session] == 0:
            self.metrics.on_session(call.session, *self._session_start[call.session], now)
            self._active -= 1

    def _step(self, now: float) -> int:
        """One engine step at ``now``; advances the clock; returns the number of calls finished."""
        transfers = self.engine.transfers  # a host tier's simulated worker (cachewise.replay.host_tier), or None
        completed = transfers.poll(now) if transfers is not None else None
        start = time.perf_counter()
        step = self.engine.step(completed)
        cpu = time.perf_counter() - start
        begin = transfers.submit(step.kv_connector_metadata, now) if transfers is not None else now
        if step.idle:
            if completed is not None or step.preempted:  # transfers just landed, or blocks were freed: step again
                return 0
            upcoming = [t for t, _, _ in self._ready[:1]]
            if transfers is not None and transfers.next_completion() is not None:
                upcoming.append(transfers.next_completion())
            if not upcoming:
                raise ReplayStuck(
                    f"vLLM cannot schedule any of {len(self.engine.scheduler.requests)} requests"
                    f" with {self.engine.block_pool.num_gpu_blocks} KV blocks"
                )
            self.clock.now = max(begin, min(upcoming))
            return 0
        dt = self.cost.step_time(
            step.prefill,
            step.decode_ctx,
            self.w.params.token_scale,
            self.engine.params.max_num_batched_tokens,
            step.sampled_after_prefill_ctx,
        )
        self.clock.now = begin + dt
        self.metrics.on_step(sum(n for n, _ in step.prefill), step.prefilled_blocks, dt, cpu)
        self.metrics.on_kv_events(*self.engine.events.take())
        for request in step.finished:
            self._finish(request)
        return len(step.finished)

    def run(self, progress: bool = False) -> RunMetrics:
        """Replay every session to its end; returns the filled :class:`RunMetrics`."""
        queue = self._session_queue()
        with tqdm(
            total=sum(self._left_in_session), desc="replay", unit="call", disable=not progress, leave=False
        ) as bar:
            while True:
                now = self.clock.now
                while queue and self._active < self.arrivals.concurrency and queue[0][0] <= now:
                    self._active += 1
                    submitted, idx = queue.popleft()
                    self._start_session(idx, submitted)
                while self._ready and self._ready[0][0] <= now:
                    self._send(self._plans[heapq.heappop(self._ready)[2]])
                if self.engine.has_work():
                    bar.update(self._step(now))
                    continue
                upcoming = [t for t, _, _ in self._ready[:1]]
                if queue and self._active < self.arrivals.concurrency:
                    upcoming.append(queue[0][0])
                if not upcoming:
                    break
                self.clock.now = max(now, min(upcoming))
        self.metrics.prefix_queries = self.engine.prefix_queries
        self.metrics.prefix_hits = self.engine.prefix_hits
        self.metrics.host_queries = self.engine.host_queries
        self.metrics.host_hits = self.engine.host_hits
        return self.metrics
