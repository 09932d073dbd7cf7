"""What one replay run measures, fed by the driver as requests arrive, steps run, and calls end.

Definitions (all token counts in *trace* tokens, i.e. replay tokens x ``token_scale``;
blocks are vLLM blocks of ``block_size`` replay tokens):

* ``evictions``: cached blocks whose hash vLLM dropped to reuse the block (``BlockRemoved``).
* ``harmful_evictions``: evictions of a hash that some request needs again afterwards: counted
  when a request whose prompt contains it arrives, or, for a request that was already waiting
  when the hash was evicted, when the engine prefills that block again or a host tier loads it
  back onto the GPU (its ``BlockStored``; a prefetch too, needed or not) -- each eviction counted
  once. Before 2026-12-02 (session 9) the host-tier load was missed, so a tiered run whose
  waiting requests' prefixes were evicted and loaded back counted fewer harmful evictions than
  the MIN bound of its own sequence (found by tests/test_replay_cli.py: 1,004 against MIN 1,027).
* ``hit_rate``: vLLM's own prefix-cache metric, hits / queries in tokens over new
  (not preempted) admissions.
* ``host_hit_tokens``, ``hit_rate_with_host``: with a host tier, tokens vLLM's offloading
  connector found on the host (loaded instead of recomputed), and the hit rate counting them.
* ``prefill_tokens``: tokens the engine prefilled, including recomputation after preemption.
* ``recomputed_tokens``: tokens of the full blocks the engine prefilled although a block
  with the same hash (same tokens, same prefix) had been stored in the cache before that
  step: the prefill an infinite cache would have saved. A block counts in the step that
  prefills its last token.
* ``preemptions``: vLLM preemptions (``Request.num_preemptions`` summed).
* ``returns``, ``returns_resident_frac``: requests of a thread that had an earlier call whose
  prompt starts with blocks computed before, and the fraction of them that found every such
  leading block cached on the GPU when they arrived (no reload, no recompute of that prefix).
* ``jct_s_*`` (mean, p50, p90, p99): per-session job completion time, from the moment its
  agent submitted the session (batch workload: every session at t=0; Poisson arrivals: its
  arrival time) to its last response, so time spent waiting for a slot counts;
  ``makespan_s``: first submission to last response; ``session_jct_s``: every session's JCT, in
  the seed's session order (a tuple: :mod:`cachewise.replay.session_gap` writes it out as
  ``sessions.csv``, not into ``results.csv``).
* ``service_s_*`` (mean, p50, p90): per-session time from its start (admission to one of the
  ``concurrency`` slots) to its last response: the old "session time", blind to queueing.
* ``min_harmful_evictions`` / ``min_recomputed_tokens``: Belady's MIN over this run's own
  block-access sequence at the same number of blocks (:mod:`cachewise.replay.belady`):
  a lower bound on the run's harmful evictions / recomputed tokens for that sequence.
* ``policy_cpu_s``: wall time in the GPU pool's entry points (vLLM's pool work included);
  ``policy_overhead_pct``: that time as a share of the replayed GPU time (``busy_s``), *at real
  scale*: a replay block stands for ``token_scale`` vLLM blocks of ``block_size`` tokens, each of
  which a served pool evicts, caches and looks up in turn, so the pool's time is counted
  ``token_scale`` times (the per-block cost taken as constant; before session 24 it was counted
  once and the share was understated ``token_scale``-fold: 16x at the default).
  ``token_scale`` is in the row, for the per-step shares of the residency report.
* ``peak_live_blocks``: the largest number of distinct blocks in the latest prompts of
  all started, unfinished sessions (each session's threads), a shared prefix counted once;
  the capacity fractions of the sweep are fractions of this (measured with an infinite cache).

Invariant: ``harmful_evictions <= evictions``; ``0 <= recomputed_tokens <= prefill_tokens``;
``jct_s_* >= service_s_*`` (same percentile).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cachewise.replay.belady import AccessLog, belady_min


@dataclass
class LiveWorkingSet:
    """Distinct blocks of the latest prompt of every thread of every active session."""

    counts: Counter = field(default_factory=Counter)
    latest: dict[tuple[int, int], list] = field(default_factory=dict)
    peak: int = 0

    def _apply(self, keys: list, sign: int) -> None:
        for k in keys:
            self.counts[k] += sign
            if self.counts[k] == 0:
                del self.counts[k]

    def update(self, session: int, thread: int, keys: list) -> None:
        """``keys``: the thread's new latest prompt's block keys (full-block hashes + its tail)."""
        old = self.latest.pop((session, thread), [])
        self._apply(old, -1)
        self._apply(keys, +1)
        self.latest[(session, thread)] = keys
        self.peak = max(self.peak, len(self.counts))

    def end_session(self, session: int) -> None:
        for key in [k for k in self.latest if k[0] == session]:
            self._apply(self.latest.pop(key), -1)


@dataclass
class RunMetrics:
    """Accumulates one run's counters; :meth:`summary` gives the row of the results table."""

    token_scale: int
    block_size: int
    evictions: int = 0
    harmful_evictions: int = 0
    prefill_tokens: int = 0
    recomputed_blocks: int = 0
    preemptions: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    host_queries: int = 0  # host tier (cachewise.replay.host_tier): tokens looked up there / found there
    host_hits: int = 0
    steps: int = 0
    returns: int = 0
    returns_resident: int = 0
    busy_s: float = 0.0
    engine_cpu_s: float = 0.0
    policy_cpu_s: float = 0.0
    session_times: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    live: LiveWorkingSet = field(default_factory=LiveWorkingSet)
    accesses: AccessLog = field(default_factory=AccessLog)
    _pending_evicted: Counter = field(default_factory=Counter)
    _ever_stored: set = field(default_factory=set)

    def on_arrival(self, session: int, thread: int, hashes: list, prompt_len: int) -> None:
        """A request with full-block ``hashes`` and ``prompt_len`` replay tokens was sent."""
        for h in hashes:
            n = self._pending_evicted.pop(h, 0)
            self.harmful_evictions += n
        tail = [("tail", session, thread)] if prompt_len % self.block_size else []
        self.live.update(session, thread, list(hashes) + tail)

    def on_return(self, hashes: list, gpu_prefix_blocks: int) -> None:
        """A request of a thread with an earlier call arrived with full-block ``hashes``, of which the
        first ``gpu_prefix_blocks`` are cached on the GPU; call before :meth:`on_arrival`."""
        computed = 0
        for h in hashes:
            if h not in self._ever_stored:
                break
            computed += 1
        if computed:
            self.returns += 1
            self.returns_resident += gpu_prefix_blocks >= computed

    def on_kv_events(self, stored: list, removed: list) -> None:
        """Hashes vLLM stored / evicted since the last call. A hash stored again after an eviction
        was needed again: a prefill of it was counted by :meth:`on_step`, so what is left pending is a
        host-tier load (or a prefetch), counted here."""
        pending = self._pending_evicted
        for h in stored:
            if h in pending:
                self.harmful_evictions += pending.pop(h)
        self._ever_stored.update(stored)
        self.evictions += len(removed)
        self._pending_evicted.update(removed)

    def on_step(self, prefill_tokens: int, prefilled_blocks: list, busy_s: float, engine_cpu_s: float) -> None:
        """One engine step; call before :meth:`on_kv_events` of the same step."""
        self.steps += 1
        self.prefill_tokens += prefill_tokens
        self.recomputed_blocks += sum(1 for h in prefilled_blocks if h in self._ever_stored)
        for h in prefilled_blocks:  # evicted after its request arrived: needed again all the same
            self.harmful_evictions += self._pending_evicted.pop(h, 0)
        self.busy_s += busy_s
        self.engine_cpu_s += engine_cpu_s

    def on_finish(self, computed_hashes: list) -> None:
        """A request finished holding the full blocks ``computed_hashes`` (prompt and output): the
        chain that had to be resident then, one access of the sequence Belady's MIN is run on."""
        self.accesses.need(computed_hashes)

    def on_session(self, session: int, submitted: float, start: float, end: float) -> None:
        self.session_times[session] = (submitted, start, end)
        self.live.end_session(session)

    def summary(self, capacity_blocks: int | None = None) -> dict[str, Any]:
        """The run's figures (see the module doc); MIN is computed when ``capacity_blocks`` is given."""
        times = [self.session_times[k] for k in sorted(self.session_times)]  # the seed's session order
        submitted, starts, ends = (np.array(x, dtype=float).reshape(-1) for x in zip(*times))
        jct, service = ends - submitted, ends - starts
        scale = self.token_scale
        best = belady_min(self.accesses.chains, capacity_blocks) if capacity_blocks is not None else None
        return {
            "evictions": self.evictions,
            "harmful_evictions": self.harmful_evictions,
            "hit_rate": self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0,
            "host_hit_tokens": self.host_hits * scale,
            "hit_rate_with_host": (self.prefix_hits + self.host_hits) / self.prefix_queries if self.prefix_queries else 0.0,
            "prefill_tokens": self.prefill_tokens * scale,
            "recomputed_tokens": self.recomputed_blocks * self.block_size * scale,
            "preemptions": self.preemptions,
            "returns": self.returns,
            "returns_resident_frac": self.returns_resident / self.returns if self.returns else 0.0,
            "min_harmful_evictions": best.harmful_misses if best else 0,
            "min_recomputed_tokens": best.harmful_misses * self.block_size * scale if best else 0,
            "sessions": len(jct),
            "jct_s_mean": float(jct.mean()),
            "jct_s_p50": float(np.percentile(jct, 50)),
            "jct_s_p90": float(np.percentile(jct, 90)),
            "jct_s_p99": float(np.percentile(jct, 99)),
            "service_s_mean": float(service.mean()),
            "service_s_p50": float(np.percentile(service, 50)),
            "service_s_p90": float(np.percentile(service, 90)),
            "makespan_s": float(ends.max() - submitted.min()),
            "session_jct_s": tuple(float(x) for x in jct),
            "steps": self.steps,
            "busy_s": self.busy_s,
            "engine_cpu_s": self.engine_cpu_s,
            "policy_cpu_s": self.policy_cpu_s,
            "policy_overhead_pct": 100.0 * self.policy_cpu_s * scale / self.busy_s if self.busy_s else 0.0,
            "token_scale": scale,
            "peak_live_blocks": self.live.peak,
        }
