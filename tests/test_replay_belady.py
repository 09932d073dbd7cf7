"""Belady's MIN over chain accesses: optimal against an exhaustive search, and a lower bound."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.replay.belady import belady_min


def _chains(paths: list[tuple[int, ...]]) -> list[list]:
    """Each path of a prefix tree as the chain of its prefixes (a block = its whole prefix)."""
    return [[p[: d + 1] for d in range(len(p))] for p in paths]


def _optimal_harmful(chains: list[list], capacity: int) -> int:
    """Fewest repeat misses over every eviction choice (no leaf rule imposed), by exhaustive search."""

    @cache
    def best(i: int, cached: frozenset, seen: frozenset) -> int:
        if i == len(chains):
            return 0
        chain = set(chains[i])
        missing = chain - cached
        cost = len(missing & seen)
        excess = len(cached | chain) - capacity
        victims = sorted(cached - chain)
        options = itertools.combinations(victims, excess) if excess > 0 else [()]
        return cost + min(best(i + 1, (cached - set(v)) | chain, seen | chain) for v in options)

    return best(0, frozenset(), frozenset())


paths = st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=3).map(tuple), min_size=1, max_size=9)


@settings(max_examples=150, deadline=None)
@given(paths=paths, capacity=st.integers(3, 5))
def test_min_is_optimal(paths: list[tuple[int, ...]], capacity: int) -> None:
    chains = _chains(paths)
    assert belady_min(chains, capacity).harmful_misses == _optimal_harmful(chains, capacity)


def _lru_harmful(chains: list[list], capacity: int) -> int:
    """Repeat misses of an LRU cache of ``capacity`` blocks (a chain's blocks are used together)."""
    cached: dict = {}  # block -> last use, insertion-ordered by use
    seen: set = set()
    misses = 0
    for t, chain in enumerate(chains):
        misses += sum(1 for b in chain if b not in cached and b in seen)
        for b in chain:
            cached.pop(b, None)
            cached[b] = t
        while len(cached) > capacity:
            del cached[next(b for b in cached if b not in chain)]
        seen.update(chain)
    return misses


def test_lru_pays_more_than_min() -> None:
    # Cyclic access to 3 chains (5 blocks: the root (0,) is shared) with room for 4 blocks: LRU
    # evicts the block used next every time; MIN keeps the root and two leaves.
    chains = _chains([(0, 0), (1, 1), (0, 1)] * 3)
    result = belady_min(chains, 4)
    assert result.harmful_misses == _optimal_harmful(chains, 4)
    assert _lru_harmful(chains, 4) > result.harmful_misses
    assert result.accesses == sum(len(c) for c in chains)
    assert result.evictions >= result.harmful_misses


def test_shared_root_is_kept_and_leaves_go_first() -> None:
    # Root r shared by every chain: MIN never evicts it while a descendant is cached.
    chains = _chains([(0, 1), (0, 2), (0, 3), (0, 1), (0, 2), (0, 3)])
    # Room for the root and two leaves: one of the three leaves must come back once.
    assert belady_min(chains, 3).harmful_misses == _optimal_harmful(chains, 3) == 1


def test_chain_longer_than_the_cache_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        belady_min(_chains([(0, 1, 2)]), 2)
