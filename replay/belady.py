"""Belady's MIN over the block-access sequence one replay run produced: a lower bound for that sequence.

A run records, in the order its requests finished, the block chain each held at its finish
(:class:`AccessLog`): its full computed chain, prompt plus the output blocks it filled. vLLM
must have had that whole chain resident at that moment (a running request holds its
blocks). :func:`belady_min` replays that sequence against a cache of the same number of
blocks with true next-use knowledge:

* a chain is accessed block by block, root first; a block absent from the cache is a miss,
  and a miss on a block that was in the cache before (not its first appearance) is a
  *harmful* miss: an eviction that a later request paid for;
* to make room it evicts, among the cached blocks not in the chain being accessed, the one
  whose next access is farthest in the future (never again = infinitely far), ties to the
  deeper block. A block's next access is always later than its parent's (every chain that
  holds a block holds its parent, earlier), so only chain *leaves* are evicted: a cached
  block always has its whole prefix cached, as a prefix hit requires.

Why it bounds the run: the run's cache, looked at just after each finish, is a feasible
schedule for this sequence, and every block it brings back after having dropped it is an
eviction the run counted as harmful (the block was needed again: recomputed, or requested).
Farthest-next-use eviction is optimal (fewest repeat loads, prefetching allowed or not) for a
sequence of sets that must each be resident in turn (Belady's exchange argument, unchanged
when the current set is pinned; checked against exhaustive search in the tests),
so ``harmful_misses`` is a lower bound on the harmful evictions of *any* eviction order on
this same sequence, and ``harmful_misses x block tokens`` on its recomputed tokens. It is not
a bound across policies: in the closed loop each policy produces its own sequence (requests
come back sooner when they were served sooner); the infinite cache is the bound on session
time.

Complexity: O(A log A) time and O(A) memory for A block accesses (lazy-deletion heap).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

_NEVER = math.inf
_PINNED = object()  # marks a block of the chain being accessed (never evicted)


@dataclass
class AccessLog:
    """Block chains (lists of hashable block ids, root first) in the order a run needed them."""

    chains: list[list] = field(default_factory=list)

    def need(self, chain: list) -> None:
        if chain:
            self.chains.append(list(chain))


@dataclass(frozen=True)
class MinResult:
    """What MIN does on a sequence: accesses, misses, harmful (repeat) misses, evictions."""

    accesses: int
    misses: int
    harmful_misses: int
    evictions: int


def belady_min(chains: list[list], capacity: int) -> MinResult:
    """Run MIN (module doc) over ``chains`` with ``capacity`` blocks.

    Raises ``ValueError`` when a chain is longer than ``capacity`` (it can never be resident).
    """
    ids: dict = {}
    flat: list[int] = []
    depth: list[int] = []
    bounds: list[tuple[int, int]] = []
    for chain in chains:
        if len(chain) > capacity:
            raise ValueError(f"a chain of {len(chain)} blocks does not fit in {capacity} blocks")
        start = len(flat)
        for d, h in enumerate(chain):
            flat.append(ids.setdefault(h, len(ids)))
            depth.append(d)
        bounds.append((start, len(flat)))
    next_use = [_NEVER] * len(flat)
    last_seen: dict[int, int] = {}
    for pos in range(len(flat) - 1, -1, -1):
        b = flat[pos]
        next_use[pos] = last_seen.get(b, _NEVER)
        last_seen[b] = pos

    cached: dict[int, object] = {}  # block -> next access (its live heap entry's key), or _PINNED
    seen: set[int] = set()
    heap: list[tuple[float, int, int]] = []  # (-next access, -depth, block); stale entries skipped
    misses = harmful = evictions = 0
    for start, end in bounds:
        for b in flat[start:end]:
            if b in cached:
                cached[b] = _PINNED  # its heap entries are stale while the chain is accessed
        for pos in range(start, end):
            b = flat[pos]
            if b not in cached:
                misses += 1
                if b in seen:
                    harmful += 1
                seen.add(b)
                if len(cached) >= capacity:
                    evictions += 1
                    _evict_one(heap, cached)
                cached[b] = _PINNED
        for pos in range(start, end):  # unpinned, keyed by the access after this chain
            b = flat[pos]
            cached[b] = next_use[pos]
            heapq.heappush(heap, (-next_use[pos], -depth[pos], b))
    return MinResult(len(flat), misses, harmful, evictions)


def _evict_one(heap: list[tuple[float, int, int]], cached: dict[int, object]) -> None:
    """Drop the cached, unpinned block with the farthest next access (deeper on a tie)."""
    while True:
        neg_next, _, b = heapq.heappop(heap)
        if cached.get(b) == -neg_next:  # else stale: evicted, pinned, or re-keyed since
            del cached[b]
            return
