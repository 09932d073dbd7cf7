"""The eviction order over a block pool's free blocks, driven by reuse predictions.

:class:`EvictionOrder` decides *which* free block a :class:`ScoredBlockPool` hands out
next; it never owns vLLM's bookkeeping (hashes, ref counts, the free queue), it only reads
it to validate its own entries. Order of candidates (first = evicted first):

1. blocks with no prefix-cache hash, most recently freed first (as vLLM's free queue);
2. hashed blocks whose prediction expired (``expire_at <= now``), earliest expiry first;
3. hashed blocks with no prediction, in vLLM's LRU order (free sequence);
4. hashed blocks by their reuse key, farthest first, then deeper block first, then the
   order they became candidates (which follows vLLM's free order).

Time rule. A block's reuse key starts as the predicted ``reuse_at``. When ``now`` passes the
key without a reuse, the block is *overdue* and is re-keyed to
``now + overdue_remaining(now - freed_at)``, the one overdue rule of
:mod:`cachewise.scoring.overdue` ("idle as long again", at least ``MIN_OVERDUE_STEP_S``), so
it sinks steadily instead of keeping a stale, already passed reuse time; each re-key at least
doubles its idle horizon, so a block is re-keyed O(log(max_idle / MIN_OVERDUE_STEP_S)) times
per free period. At ``expire_at`` it is
evicted before every predicted block. Re-keys and expiries are driven lazily by a timer
heap keyed by the time of the next change, processed at eviction time only.

Chains: for KV-cache groups whose prefix lookup stops at the first missing block (full
attention), each cached block remembers its parent (the block before it in the releasing
request's block table) and counts its cached children. Only *leaves* (no cached child)
are candidates, so an ancestor is never evicted while a cached descendant exists. When a
leaf's hash is dropped its prediction is folded into its parent (soonest ``reuse_at``,
latest ``expire_at``): a parent's key is therefore never later than that of any cached
descendant, including descendants freed while the parent was still in use elsewhere.

A block's prediction is consumed by its next reuse: :meth:`on_touch` clears it, and the
request that reused it sets a new one when it is released.

Demoted blocks (:meth:`on_demote`, a session demoted by the residency controller) are keyed
"never reused, expired at the demotion time", so they are evicted before every predicted and
no-opinion block, earlier demotions first -- also while the pool serves vLLM's order (the
guard's LRU mode), where :meth:`EvictionOrder.take` with ``demoted_only`` hands out the unhashed
and then the demoted free blocks before vLLM's own choice: a demotion is the residency
controller's decision, made only while it acts on the model, not the learned order's.
:attr:`EvictionOrder.demoted_free` counts the free
cached blocks in that state (a flag per block, cleared when the block is reused, its hash
dropped, or a later prediction or request mark merged into it): the hashed blocks a block
demoted now would wait behind (the residency controller's eviction-chance estimate).

Requested blocks: when a request arrives, the free cached blocks of its prefix are
*requested* (:meth:`on_request`): their key becomes ``min(key, arrival time)`` and they are
never re-keyed as overdue (their only timer is their expiry), so while the request waits
they rank after every other predicted block (whose keys are all later than ``now`` once due
re-keys are done), latest arrival evicted first. The mark is consumed like a prediction
(the request's hit touches the blocks) and dropped with the hash; a fold from a requested
child makes its parent requested (the parent is the previous block of the same prefix).
Each requested block counts the waiting requests that marked it; when a request leaves the
queue without being served (aborted, or finished while waiting) :meth:`on_withdraw` takes
its count back, and a block no waiting request wants any more drops its mark: its key (no
later than that arrival, so already passed) makes it overdue, re-keyed as any other.

Complexity: every operation is O(1) or O(log n) in the number of blocks (amortised over
the bounded re-keys) except :meth:`on_release`, which is O(blocks of the released request)
like vLLM's own free. Candidates live in two binary heaps (by reuse key; by time of the
next re-key or expiry) and a stack (unhashed blocks) with lazy deletion: an entry is live
iff its block is still free, hashed, a leaf, and carries the entry's token (each push
issues a new token). Stale entries are dropped when they surface or by a compaction of all
three containers that runs as soon as any one of them exceeds ``3 * num_blocks + 1024``
entries (a live block has at most one live entry per container, so a compaction leaves at
most ``num_blocks`` in each and the next is at least ``2 * num_blocks`` pushes away): each
container always holds at most ``3 * num_blocks + 1025`` entries, so memory is O(num blocks).
The timer heap is checked on its own: its entries do not leave when the candidate heap's
are consumed by evictions (a far expiry stays queued), so it can outgrow the candidate heap.
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Sequence

from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

from cachewise.runtime.kv_blocks import cached_key, is_free, is_free_cached, is_free_uncached
from cachewise.scoring.overdue import overdue_remaining

_INF = math.inf
_NEG_INF = -math.inf
_FAR = -sys.float_info.max  # primary key of a "never reused" prediction: after the no-opinion tier
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1
_WORD = 64
_WORD_MASK = (1 << _WORD) - 1
_DEPTH_LIMIT = 1 << 31


class EvictionOrder:
    """Candidate structures and per-block prediction state for ``blocks`` (block_id = index).

    Per-block state lives in flat arrays (8 bytes or less per field and block, no boxed
    objects). vLLM's block state (free, cached) is read through :mod:`cachewise.runtime.kv_blocks`.
    """

    def __init__(self, blocks: Sequence[KVCacheBlock]) -> None:
        n = len(blocks)
        self._blocks = blocks
        self._num_blocks = n
        self._reuse = array("d", [_INF]) * n  # current reuse key
        self._expire = array("d", [_NEG_INF]) * n
        self._freed_at = array("d", [0.0]) * n
        self._keyed = bytearray(n)  # 1 iff the block carries a prediction since its last reuse
        self._requested = bytearray(n)  # 1 iff keyed by a queued request's arrival: no overdue re-key
        self._requesters = array("i", [0]) * n  # waiting requests that marked the block (see on_withdraw)
        self._demoted = bytearray(n)  # 1 iff in the demoted state (module doc); counted in demoted_free
        self.demoted_free = 0
        self._depth = array("i", [0]) * n
        self._parent = array("i", [-1]) * n
        self._parent_epoch = array("q", [0]) * n
        self._epoch = array("q", [0]) * n  # bumped whenever the block's hash is dropped
        self._children = array("i", [0]) * n  # cached children linked to the current epoch
        self._seq = array("q", [0]) * n  # free sequence number (LRU order) of the last free
        self._token = array("q", [0]) * n  # token of the block's live heap entries
        self._next_seq = 1
        self._next_token = 1
        self._heap: list[tuple[float, int]] = []
        self._timers: list[tuple[float, int]] = []
        self._unhashed: list[int] = [b.block_id for b in reversed(blocks) if is_free(b)]
        self._demotions: deque[int] = deque()  # demoted blocks in demotion order, deepest first per demotion (lazy)
        self._compact_at = 3 * n + 1024
        self.rekeys = 0  # overdue re-keys done so far

    # ----------------------------------------------------------------- events
    def on_release(
        self,
        chain: Sequence[KVCacheBlock],
        reuse_at: float | None,
        expire_at: float,
        chained: bool,
    ) -> None:
        """A request lets go of ``chain`` (its block table of one KV-cache group, in order).

        Links each hashed block to the hashed block before it (when ``chained``), records
        its depth, and merges the prediction into every hashed block of the chain (soonest
        ``reuse_at``, latest ``expire_at``); ``reuse_at`` None leaves predictions as they are.
        """
        blocks, parent, parent_epoch, epoch, children = (
            self._blocks,
            self._parent,
            self._parent_epoch,
            self._epoch,
            self._children,
        )
        merge, depth, keyed, demoted, reuse, expire = (
            self._merge,
            self._depth,
            self._keyed,
            self._demoted,
            self._reuse,
            self._expire,
        )
        n = self._num_blocks
        prev = -1
        for i, blk in enumerate(chain):
            b = blk.block_id
            if cached_key(blk) is None or b < 0 or b >= n or blocks[b] is not blk:
                prev = -1  # null, unhashed or foreign block: the chain is broken here
                continue
            if chained:
                depth[b] = i if i < _DEPTH_LIMIT else _DEPTH_LIMIT - 1
                if prev >= 0:
                    p = parent[b]
                    if p < 0 or epoch[p] != parent_epoch[b]:
                        parent[b] = prev
                        parent_epoch[b] = epoch[prev]
                        children[prev] += 1
            if reuse_at is not None:
                if keyed[b] or demoted[b]:
                    merge(b, reuse_at, expire_at)
                else:  # _merge's first-prediction case without its call (once per released block)
                    keyed[b], reuse[b], expire[b] = 1, reuse_at, expire_at
            prev = b

    def on_free(self, blocks: Iterable[KVCacheBlock], now: float) -> None:
        """``blocks`` just reached ref count 0 at ``now`` and joined the free queue.

        Unhashed ones become first candidates (the last one given is reused first, like
        vLLM's ``prepend_n`` of a reversed chain); hashed leaves join the heaps.
        """
        seq, freed_at, children, token = self._seq, self._freed_at, self._children, self._token
        unhashed: list[int] = []
        next_seq = self._next_seq
        for blk in blocks:
            b = blk.block_id
            if cached_key(blk) is None:
                unhashed.append(b)
                continue
            seq[b] = next_seq
            next_seq += 1
            freed_at[b] = now
            if children[b] == 0:
                self._push(b)
            else:
                token[b] = 0  # entries from an earlier free period must not revive
        self._next_seq = next_seq
        if unhashed:
            unhashed.reverse()
            self._unhashed.extend(unhashed)
            if len(self._unhashed) > self._compact_at:
                self._compact()

    def on_request(self, blocks: Iterable[KVCacheBlock], now: float, expire_at: float) -> None:
        """A request that arrived at ``now`` will hit ``blocks`` (free, cached, its prefix in order).

        Each is keyed ``min(key, now)`` (latest ``expire_at``) and marked requested (no
        overdue re-key); leaves are re-pushed under the new key (their old entries die).
        Keys only decrease, so a parent's key stays no later than its descendants'.
        """
        merge, requested, requesters, children = self._merge, self._requested, self._requesters, self._children
        for blk in blocks:
            b = blk.block_id
            merge(b, now, expire_at)
            requested[b] = 1
            requesters[b] += 1
            if children[b] == 0:
                self._push(b)

    def on_withdraw(self, blocks: Iterable[KVCacheBlock]) -> None:
        """A waiting request that marked ``blocks`` (its free cached prefix, as :meth:`on_request`
        was given it) left the queue unserved. A block no other waiting request marked loses its
        requested mark and, if a candidate, is re-pushed so that the overdue rule applies again."""
        requested, requesters, children = self._requested, self._requesters, self._children
        for blk in blocks:
            b = blk.block_id
            if requesters[b] <= 0:
                continue
            requesters[b] -= 1
            if requesters[b] == 0 and requested[b]:
                requested[b] = 0
                if children[b] == 0 and is_free_cached(blk):
                    self._push(b)

    def on_demote(self, blocks: Iterable[KVCacheBlock], now: float) -> None:
        """``blocks`` (free, cached) belong to a session demoted at ``now``: each becomes
        "ended" (never reused, expired now), overriding the merge rule, so they are evicted
        before every predicted block; leaves are re-pushed (their old entries die)."""
        keyed, requested, requesters = self._keyed, self._requested, self._requesters
        reuse, expire, children, demoted = self._reuse, self._expire, self._children, self._demoted
        depth = self._depth
        ordered = sorted(blocks, key=lambda blk: -depth[blk.block_id])
        self._demotions.extend(blk.block_id for blk in ordered)
        for blk in ordered:
            b = blk.block_id
            keyed[b], requested[b], requesters[b], reuse[b], expire[b] = 1, 0, 0, _INF, now
            if not demoted[b]:
                demoted[b] = 1
                self.demoted_free += 1
            if children[b] == 0:
                self._push(b)

    def on_touch(self, block: KVCacheBlock) -> None:
        """``block`` was hit by a new request: its prediction is consumed, its entries die."""
        self._undemote(block.block_id)
        self._keyed[block.block_id] = 0
        self._requested[block.block_id] = 0
        self._requesters[block.block_id] = 0
        self._token[block.block_id] = 0

    def on_drop(self, block: KVCacheBlock) -> None:
        """``block``'s prefix-cache hash is being dropped (evicted or overwritten).

        Unlinks it from its parent, folds its prediction into the parent, and makes the
        parent a candidate if it is now a free leaf. Idempotent.
        """
        parent = self._detach(block.block_id)
        if parent >= 0:
            self._push(parent)

    # ---------------------------------------------------------------- queries
    def take(
        self, count: int, now: float, queue: FreeKVCacheBlockQueue, demoted_only: bool = False
    ) -> list[KVCacheBlock]:
        """Up to ``count`` victims at time ``now``, in eviction order, removed from ``queue``.

        Hashed victims are unlinked from their parents as they are taken, so a parent that
        becomes a free leaf can be taken in the same call; when it would be the very next
        pick anyway (it beats the heap top and no timer is due) it is taken without a heap
        round trip. Fewer than ``count`` blocks are returned only when no candidate is left.

        ``demoted_only``: while some free block is demoted, only unhashed blocks and then demoted
        ones (earlier demotions first, each chain deepest block first), fewer than ``count`` when
        those run out; none while nothing is demoted: what the pool evicts first while the guard
        serves vLLM's order (the rest is vLLM's choice, so with no demotion it is vLLM's order
        exactly). O(victims + stale demotion entries) amortised.
        """
        if demoted_only and not self.demoted_free:
            return []  # nothing demoted: vLLM's order alone, exactly
        blocks, unhashed, remove = self._blocks, self._unhashed, queue.remove
        victims: list[KVCacheBlock] = []
        while unhashed and len(victims) < count:  # unhashed first (taking never adds one)
            cand = blocks[unhashed.pop()]
            if is_free_uncached(cand):
                remove(cand)
                victims.append(cand)
        detach, next_anyway, push = self._detach, self._next_anyway, self._push
        pending = -1  # a parent known to be the next hashed pick, kept out of the heap
        skipped: list[int] = []  # demoted blocks that are not leaves now (demoted_only), put back after
        picks = count - len(victims)
        for i in range(picks):
            if pending >= 0:
                blk, pending = blocks[pending], -1
            else:
                blk = self._next_demoted(skipped) if demoted_only else self._next_hashed(now)
                if blk is None:
                    break
            remove(blk)
            parent = detach(blk.block_id)
            if parent >= 0:
                if not demoted_only and next_anyway(parent, now, i + 1 < picks):
                    pending = parent
                else:
                    push(parent)
            victims.append(blk)
        if pending >= 0:
            self._push(pending)
        self._demotions.extendleft(reversed(skipped))
        return victims

    def prediction(self, block_id: int) -> tuple[float, float] | None:
        """``(reuse key, expire_at)`` the block currently carries, or None."""
        if not self._keyed[block_id]:
            return None
        return self._reuse[block_id], self._expire[block_id]

    def parent(self, block_id: int) -> int:
        """Block id of the block's cached parent, or -1."""
        p = self._parent[block_id]
        return p if p >= 0 and self._epoch[p] == self._parent_epoch[block_id] else -1

    def num_entries(self) -> int:
        """Entries held in the candidate containers, stale ones included."""
        return sum(self.container_sizes())

    def container_sizes(self) -> tuple[int, int, int]:
        """Entries (stale ones included) of the candidate heap, the timer heap and the unhashed stack;
        each is at most :attr:`max_container_entries`."""
        return len(self._heap), len(self._timers), len(self._unhashed)

    @property
    def max_container_entries(self) -> int:
        """The documented bound on each container: ``3 * num_blocks + 1025``."""
        return self._compact_at + 1

    # --------------------------------------------------------------- internals
    def _next_hashed(self, now: float) -> KVCacheBlock | None:
        """The best hashed candidate: an expired one, else the heap top (re-keying overdue ones)."""
        blocks, token = self._blocks, self._token
        while self._timers and self._timers[0][0] <= now:  # re-read: a re-key may compact
            _, packed = heapq.heappop(self._timers)
            b = packed & _ID_MASK
            blk = blocks[b]
            if not (token[b] == (packed >> _ID_BITS) & _WORD_MASK and is_free_cached(blk)):
                continue
            if self._expire[b] <= now:
                return blk
            self._rekey(b, now)
            self._push(b)
        heap = self._heap
        while heap:
            _, packed = heapq.heappop(heap)
            b = packed & _ID_MASK
            blk = blocks[b]
            if token[b] == (packed >> _ID_BITS) & _WORD_MASK and is_free_cached(blk):
                return blk
        return None

    def _next_demoted(self, skipped: list[int]) -> KVCacheBlock | None:
        """The first demoted free cached leaf in demotion order; entries that left the demoted state
        are dropped, demoted blocks that still have cached children are moved to ``skipped``."""
        demotions, blocks = self._demotions, self._blocks
        while demotions:
            b = demotions.popleft()
            if not (self._demoted[b] and is_free_cached(blocks[b])):
                continue
            if self._children[b]:
                skipped.append(b)
                continue
            return blocks[b]
        return None

    def _detach(self, b: int) -> int:
        """Unlink block ``b`` from its parent (folding its key upward) and reset its state.

        Returns the parent's id when the parent just became a free cached leaf (a new
        candidate the caller must push or take), else -1.
        """
        parent, children, keyed = self._parent, self._children, self._keyed
        p = parent[b]
        freed_parent = -1
        if p >= 0:
            if self._epoch[p] == self._parent_epoch[b]:
                left = children[p] - 1
                children[p] = left
                # fold the child's key up, unless that changes nothing (the common case in a chain
                # released with one prediction; conservative: always while requested or demoted)
                reuse, expire = self._reuse, self._expire
                if keyed[b] and not (
                    keyed[p]
                    and not self._requested[b]
                    and not self._demoted[p]
                    and reuse[b] >= reuse[p]
                    and expire[b] <= expire[p]
                ):
                    self._fold(b, p)
                if left == 0 and is_free_cached(self._blocks[p]):
                    freed_parent = p
            parent[b] = -1
        self._epoch[b] += 1
        children[b] = 0
        if self._demoted[b]:
            self._undemote(b)
        keyed[b] = self._requested[b] = self._requesters[b] = self._token[b] = 0  # its heap entries are dead
        return freed_parent

    def _fold(self, child: int, parent: int) -> None:
        """Merge ``child``'s prediction (and requested mark) into ``parent``'s."""
        if self._requested[child]:
            self._requested[parent] = 1
            if self._requesters[child] > self._requesters[parent]:
                self._requesters[parent] = self._requesters[child]
        self._merge(parent, self._reuse[child], self._expire[child])

    def _merge(self, b: int, reuse_at: float, expire_at: float) -> None:
        """Merge the prediction ``(reuse_at, expire_at)`` into block ``b``'s: the sooner reuse, the later expiry.

        A block without a prediction takes it as is. Leaves the requested mark alone (a
        block without a prediction is never requested: marks are cleared with predictions).
        A demoted block leaves the demoted state unless the merge keeps its key (another
        demotion's "never reused" with no later expiry).
        """
        if self._demoted[b] and (reuse_at < _INF or expire_at > self._expire[b]):
            self._undemote(b)
        if self._keyed[b]:
            if reuse_at < self._reuse[b]:
                self._reuse[b] = reuse_at
            if expire_at > self._expire[b]:
                self._expire[b] = expire_at
        else:
            self._keyed[b] = 1
            self._reuse[b] = reuse_at
            self._expire[b] = expire_at

    def _undemote(self, b: int) -> None:
        """Block ``b`` leaves the demoted state (no-op if not in it)."""
        if self._demoted[b]:
            self._demoted[b] = 0
            self.demoted_free -= 1

    def _key(self, b: int) -> tuple[float, float]:
        """Block ``b``'s primary heap key (farthest reuse first; ``-inf`` for the LRU tier) and due
        time (of its next re-key or its expiry; ``inf`` for none)."""
        if not self._keyed[b]:
            return _NEG_INF, _INF
        reuse, expire = self._reuse[b], self._expire[b]
        return (-reuse if reuse < _INF else _FAR), (reuse if reuse < expire and not self._requested[b] else expire)

    def _entry(self, b: int) -> tuple[tuple[float, int], float]:
        """Heap entry of block ``b`` under its current key (with a new token) and its due time."""
        token = self._next_token
        self._next_token = token + 1
        self._token[b] = token
        tail = (token << _ID_BITS) | b
        primary, due = self._key(b)
        if not self._keyed[b]:  # LRU tier: vLLM's free order
            return (primary, (self._seq[b] << (_WORD + _ID_BITS)) | tail), due
        # predicted tier: deeper first, then push order (the token), which follows free order
        return (primary, ((_DEPTH_LIMIT - self._depth[b]) << (_WORD + _ID_BITS)) | tail), due

    def _push(self, b: int) -> None:
        """Make free leaf ``b`` a candidate under its current key (new token: old entries die).

        A free block never gains a child (children are linked only through a releasing
        request's block table, which holds the parent), so a pushed leaf stays a leaf.
        """
        entry, due = self._entry(b)
        heapq.heappush(self._heap, entry)
        if due < _INF:
            heapq.heappush(self._timers, (due, entry[1]))
        if len(self._heap) > self._compact_at or len(self._timers) > self._compact_at or len(self._demotions) > self._compact_at:
            self._compact()

    def _next_anyway(self, b: int, now: float, rekey: bool) -> bool:
        """Whether candidate ``b`` would be the next hashed pick of :meth:`_next_hashed`.

        True for an expired ``b`` due no later than every timer, and for a ``b`` that is not
        due while no timer is due and ``b`` beats the heap top. An overdue ``b`` (due, not
        expired) is False, except with ``rekey`` (another pick follows in the same :meth:`take`)
        while no timer is due: then the next pick's :meth:`_next_hashed` would pop only ``b``'s
        timer and re-key it at this same ``now``, so it is re-keyed here and compared as any
        candidate, without its push, timer and second push (the same victims: ties on the key
        go to the newest token either way). Without ``rekey`` it waits for the next call's time.
        """
        primary, due = self._key(b)
        timers = self._timers
        if due <= now:
            if self._expire[b] <= now:
                return not timers or due <= timers[0][0]
            if not rekey or (timers and timers[0][0] <= now):
                return False
            self._rekey(b, now)
            primary, due = self._key(b)  # due > now now: re-keyed ahead, expiry later still
        elif timers and timers[0][0] <= now:
            return False
        heap = self._heap
        if not heap or primary < heap[0][0]:
            return True
        # a tie on the primary key is decided by the whole entry (built only then: it takes a token)
        return primary == heap[0][0] and self._entry(b)[0] < heap[0]

    def _rekey(self, b: int, now: float) -> None:
        """Overdue block ``b``'s reuse key becomes ``now + overdue_remaining(idle)`` (the time rule)."""
        self._reuse[b] = now + overdue_remaining(now - self._freed_at[b])
        self.rekeys += 1

    def _live(self, packed: int) -> bool:
        """Whether a heap entry still describes a candidate."""
        b = packed & _ID_MASK
        return (
            self._token[b] == (packed >> _ID_BITS) & _WORD_MASK
            and is_free_cached(self._blocks[b])
            and self._children[b] == 0
        )

    def _compact(self) -> None:
        """Drop stale entries of every container (amortised O(1): runs once one outgrows ``3 * num_blocks + 1024``)."""
        self._heap = [e for e in self._heap if self._live(e[1])]
        heapq.heapify(self._heap)
        self._timers = [e for e in self._timers if self._live(e[1])]
        heapq.heapify(self._timers)
        blocks = self._blocks
        seen: set[int] = set()
        kept: list[int] = []
        for b in reversed(self._unhashed):  # keep each block's most recent entry
            blk = blocks[b]
            if b not in seen and is_free_uncached(blk):
                seen.add(b)
                kept.append(b)
        kept.reverse()
        self._unhashed = kept
        self._demotions = deque(b for b in self._demotions if self._demoted[b])
