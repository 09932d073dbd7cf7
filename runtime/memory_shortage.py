"""Whether the engine's KV memory has proved short: one latched test, owned by the session view.

One :class:`MemoryShortage` per :class:`~cachewise.runtime.sessions.SessionView`
(``SessionView.shortage``). Its writer is the view (:meth:`record`, at each request's first
schedule, from vLLM's ``num_computed_tokens``); its readers are the residency controller
("Standing aside", :mod:`cachewise.runtime.residency`) and the GPU pool's guard (the preview's
entry condition, :mod:`cachewise.runtime.guard`). Both read the same latch: once either finds
memory short, it is short for both, for the life of the engine.

Memory proves short at the first :meth:`check` at which either

* ``live``, the blocks the sessions with live requests hold or need now (their present KV, no
  predicted growth), exceeds ``capacity`` -- they cannot all be on the GPU at once, whatever the
  eviction order; or
* the recomputed blocks exceed ``share`` of the prefilled blocks, and of ``capacity``: both summed
  with a half-life of one ``capacity`` of prefilled blocks (the counts recorded since the previous
  check are folded in at each check). A block is *recomputed* when a returning request's thread
  held it after its last call and its first schedule did not find it cached.

``share`` is the engine's one setting (``cachewise.residency.thrash_share``, default 0.1; set by
the residency scheduler when it starts -- an engine without one, the guard alone, keeps the default;
``None``: short from the start). The residency controller passes its settings' share to each check
(the same value where the scheduler built it; its own where a controller is built by hand). Why these criteria and
this share: :mod:`cachewise.runtime.residency`, "Standing aside"; what the guard gains from them:
:mod:`cachewise.runtime.guard`, "The preview".

Invariants: ``recomputed_blocks <= prefill_blocks`` (each request's recomputed blocks are among its
prefilled ones); the totals only grow; ``short`` never goes back to False.
Complexity: :meth:`record` O(1); :meth:`check` O(1) plus one call of ``live`` until latched, O(1) after.
"""

from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger("vllm.cachewise")

THRASH_SHARE = 0.1  # the default share (ResidencySettings.thrash_share)


class MemoryShortage:
    """The latched shortage test (module doc). ``share`` None: short from the start."""

    def __init__(self, share: float | None = THRASH_SHARE) -> None:
        self.share = share
        self.prefill_blocks = 0  # blocks prefilled at first schedules (prompt less its cached prefix), all requests
        self.recomputed_blocks = 0  # of those, blocks the request's thread had held after its last call
        self._latched = False
        self._seen = (0, 0)  # the totals at the last check
        self._prefill = self._recomputed = 0.0  # their decayed sums

    @property
    def short(self) -> bool:
        """Whether memory has proved short (latched), without testing. O(1)."""
        return self._latched or self.share is None

    def record(self, prefilled: int, recomputed: int) -> None:
        """One request's first schedule prefilled ``prefilled`` blocks, ``recomputed`` of them recomputed. O(1)."""
        self.prefill_blocks += prefilled
        self.recomputed_blocks += recomputed

    def check(self, live: Callable[[], float], capacity: float, reader: str, share: float | None = None) -> bool:
        """:attr:`short`, testing once more (module doc) while not latched, with ``capacity`` blocks of GPU
        KV, ``live()`` the live sessions' present KV and ``share`` the reader's own share (None: the
        engine's, :attr:`share`); ``reader`` names the caller in the one log line."""
        if self.short:
            return True
        share = self.share if share is None else share
        assert share is not None
        prefill, recomputed = self.prefill_blocks - self._seen[0], self.recomputed_blocks - self._seen[1]
        self._seen = (self.prefill_blocks, self.recomputed_blocks)
        keep = 0.5 ** (prefill / capacity)
        self._prefill = self._prefill * keep + prefill
        self._recomputed = self._recomputed * keep + recomputed
        thrashing = self._recomputed > share * max(self._prefill, capacity)
        need = 0.0 if thrashing else live()
        self._latched = thrashing or need > capacity
        if self._latched:
            logger.info(
                "CacheWise: memory proved short (%s, seen by the %s): residency and the guard's preview act from now on",
                f"recomputed {self._recomputed:.0f} of {self._prefill:.0f} blocks prefilled" if thrashing
                else f"live requests need {need:.0f} blocks of {capacity:.0f}",
                reader,
            )  # fmt: skip
        return self._latched
