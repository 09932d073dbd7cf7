"""What one replay run measures, fed by the driver as requests arrive, steps run, and calls end.

Definitions (all token counts in *trace* tokens, i.e. replay tokens x ``token_scale``;
blocks are vLLM blocks of ``block_size`` replay tokens):

* ``evictions``: cached blocks whose hash vLLM dropped to reuse the block (``BlockRemoved``).
* ``harmful_evictions``: evictions of a hash that a later request's prompt contains (each
  eviction counted once, when that request arrives).
* ``hit_rate``: vLLM's own prefix-cache metric, hits / queries in tokens over new
  (not preempted) admissions.
* ``prefill_tokens``: tokens the engine prefilled, including recomputation after preemption.
* ``recomputed_tokens``: tokens of the full blocks the engine prefilled although a block
  with the same hash (same tokens, same prefix) had been stored in the cache before that
  step: the prefill an infinite cache would have saved. A block counts in the step that
  prefills its last token.
* ``preemptions``: vLLM preemptions (``Request.num_preemptions`` summed).
* ``session_s_*``: per-session completion time (session start to its last response);
  ``makespan_s``: first session start to last response.
* ``peak_live_blocks``: the largest number of distinct blocks in the latest prompts of
  all started, unfinished sessions (each session's threads), a shared prefix counted once;
  the capacity fractions of the sweep are fractions of this (measured with an infinite cache).

Invariant: ``harmful_evictions <= evictions``; ``0 <= recomputed_tokens <= prefill_tokens``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


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
    steps: int = 0
    busy_s: float = 0.0
    engine_cpu_s: float = 0.0
    policy_cpu_s: float = 0.0
    session_times: dict[int, tuple[float, float]] = field(default_factory=dict)
    live: LiveWorkingSet = field(default_factory=LiveWorkingSet)
    _pending_evicted: Counter = field(default_factory=Counter)
    _ever_stored: set = field(default_factory=set)

    def on_arrival(self, session: int, thread: int, hashes: list, prompt_len: int) -> None:
        """A request with full-block ``hashes`` and ``prompt_len`` replay tokens was sent."""
        for h in hashes:
            n = self._pending_evicted.pop(h, 0)
            self.harmful_evictions += n
        tail = [("tail", session, thread)] if prompt_len % self.block_size else []
        self.live.update(session, thread, list(hashes) + tail)

    def on_kv_events(self, stored: list, removed: list) -> None:
        """Hashes vLLM stored / evicted since the last call."""
        self._ever_stored.update(stored)
        self.evictions += len(removed)
        self._pending_evicted.update(removed)

    def on_step(self, prefill_tokens: int, prefilled_blocks: list, busy_s: float, engine_cpu_s: float) -> None:
        """One engine step; call before :meth:`on_kv_events` of the same step."""
        self.steps += 1
        self.prefill_tokens += prefill_tokens
        self.recomputed_blocks += sum(1 for h in prefilled_blocks if h in self._ever_stored)
        self.busy_s += busy_s
        self.engine_cpu_s += engine_cpu_s

    def on_session(self, session: int, start: float, end: float) -> None:
        self.session_times[session] = (start, end)
        self.live.end_session(session)

    def summary(self) -> dict[str, float]:
        """The run's figures (see the module doc for definitions)."""
        times = np.array([e - s for s, e in self.session_times.values()], dtype=float)
        starts = [s for s, _ in self.session_times.values()]
        ends = [e for _, e in self.session_times.values()]
        scale = self.token_scale
        return {
            "evictions": self.evictions,
            "harmful_evictions": self.harmful_evictions,
            "hit_rate": self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0,
            "prefill_tokens": self.prefill_tokens * scale,
            "recomputed_tokens": self.recomputed_blocks * self.block_size * scale,
            "preemptions": self.preemptions,
            "sessions": len(times),
            "session_s_mean": float(times.mean()) if len(times) else float("nan"),
            "session_s_p50": float(np.percentile(times, 50)) if len(times) else float("nan"),
            "session_s_p90": float(np.percentile(times, 90)) if len(times) else float("nan"),
            "makespan_s": (max(ends) - min(starts)) if times.size else float("nan"),
            "steps": self.steps,
            "busy_s": self.busy_s,
            "engine_cpu_s": self.engine_cpu_s,
            "policy_cpu_s": self.policy_cpu_s,
            "policy_overhead_pct": 100.0 * self.policy_cpu_s / self.busy_s if self.busy_s else 0.0,
            "peak_live_blocks": self.live.peak,
        }
