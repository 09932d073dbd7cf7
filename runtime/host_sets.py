"""Each session's host-tier (CPU) working set: which offloaded chunks belong to which session.

Owned by the engine's :class:`~cachewise.runtime.sessions.SessionView` (its ``host``
attribute, one per view); written by the CPU-tier policy
(:class:`~cachewise.runtime.cpu_policy.CacheWiseCachePolicy`) only, through :meth:`stored`,
:meth:`dropped` and :meth:`cleared`, and by the view itself when it forgets or merges sessions
(:meth:`forget`, :meth:`merge`); everything else is a read-only query (:meth:`owner`,
:meth:`keys`, :meth:`groups`, :meth:`blocks`).

Model: a *tier* is one CPU policy instance (one ``CPUOffloadingManager``); an engine
normally runs one, but nothing in vLLM stops two (a ``MultiConnector`` with two offloading
connectors, two engines sharing a view in a test), and the same block hash may be offloaded by
both, so every table is keyed by the tier id the policy got from :meth:`tier` -- keys of
different tiers never collide. Within a tier, every chunk the policy holds has exactly one
*owner*: the session of the last request that stored, read or touched it, or
:data:`UNOWNED` ("": no known session; never a view key).

Invariants (checked by the property tests):

* per tier, the owner groups partition the policy's chunks: ``keys(t, s)`` over all ``s``
  (with :data:`UNOWNED`) are disjoint, their union is the policy's chunk table, and
  ``owner(t, k) == s`` iff ``k in keys(t, s)``; no group is empty;
* every owner other than :data:`UNOWNED` is a session the view knows: a session the view
  forgets (expiry, idle cap) hands its chunks to :data:`UNOWNED` (still cached, evicted first),
  a provisional session merged into its real one hands them to it;
* an access by an unknown session never takes a chunk from a known owner.

Complexity: :meth:`stored` O(1) per key, :meth:`dropped` O(1); :meth:`forget` and
:meth:`merge` O(tiers + chunks moved) (each chunk moves once per store/access event);
:meth:`cleared` O(chunks of the tier); :meth:`blocks` O(tiers). Memory O(chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Set

UNOWNED = ""
"""Owner of chunks whose session is not known (never a view key: the view maps "" to no session)."""


class HostSets:
    """Per tier: chunk -> owner and owner -> chunks (module doc)."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        self._owner: dict[int, dict[Hashable, str]] = {}
        self._keys: dict[int, dict[str, set[Hashable]]] = {}
        self._next_tier = 0

    # ----------------------------------------------------------- write events
    def tier(self) -> int:
        """A new tier id (one per CPU policy attached to the view)."""
        self._next_tier += 1
        self._owner[self._next_tier] = {}
        self._keys[self._next_tier] = {}
        return self._next_tier

    def stored(self, tier: int, keys: Iterable[Hashable], session: str | None) -> None:
        """A request of ``session`` (None or unknown to the view: :data:`UNOWNED`) stored, read or
        touched the chunks ``keys``, all held by the tier: ``session`` owns them now, except that an
        unknown session leaves a chunk with a known owner where it is."""
        if session is None or not self._known(session):
            session = UNOWNED
        owner, groups = self._owner[tier], self._keys[tier]
        mine = groups.get(session)
        for key in keys:
            old = owner.get(key)
            if old == session or (session == UNOWNED and old is not None):
                continue
            if old is not None:
                self._discard(groups, old, key)
            owner[key] = session
            if mine is None:
                mine = groups[session] = set()
            mine.add(key)

    def dropped(self, tier: int, key: Hashable) -> None:
        """The tier no longer holds ``key`` (removed or evicted)."""
        session = self._owner[tier].pop(key, None)
        if session is not None:
            self._discard(self._keys[tier], session, key)

    def cleared(self, tier: int) -> None:
        """The tier holds nothing now."""
        self._owner[tier].clear()
        self._keys[tier].clear()

    def release(self, tier: int) -> None:
        """The tier's policy detached: its tables go."""
        self._owner.pop(tier, None)
        self._keys.pop(tier, None)

    def forget(self, session: str) -> None:
        """The view dropped ``session``: its chunks become :data:`UNOWNED`."""
        self.merge(session, UNOWNED)

    def merge(self, src: str, dst: str) -> None:
        """``src``'s chunks belong to ``dst`` now (a provisional session named, or forgotten)."""
        for tier, groups in self._keys.items():
            moved = groups.pop(src, None)
            if not moved:
                continue
            owner = self._owner[tier]
            for key in moved:
                owner[key] = dst
            into = groups.get(dst)
            if into is None:
                groups[dst] = moved
            else:
                into |= moved

    # ---------------------------------------------------------------- queries
    def owner(self, tier: int, key: Hashable) -> str | None:
        """The session owning ``key`` in ``tier`` (None: unowned or not held)."""
        return self._owner[tier].get(key) or None

    def keys(self, tier: int, session: str) -> Set[Hashable]:
        """The chunks of ``tier`` owned by ``session`` (:data:`UNOWNED`: by no known session). Do not mutate."""
        return self._keys[tier].get(session, frozenset())

    def groups(self, tier: int) -> Iterator[tuple[str, Set[Hashable]]]:
        """(owner, its chunks) for every owner with chunks in ``tier``, in the order owners first got one."""
        return iter(self._keys[tier].items())

    def held(self, tier: int) -> int:
        """Chunks of ``tier`` with an owner entry (= the policy's chunks, by the invariant)."""
        return len(self._owner[tier])

    def blocks(self, session: str) -> int:
        """The session's host-tier working set: its chunks over all tiers."""
        return sum(len(groups.get(session, ())) for groups in self._keys.values())

    # --------------------------------------------------------------- internals
    @staticmethod
    def _discard(groups: dict[str, set[Hashable]], session: str, key: Hashable) -> None:
        keys = groups[session]
        keys.discard(key)
        if not keys:
            del groups[session]
