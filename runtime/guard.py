"""The online guard: the learned order serves only while it measurably beats vLLM's LRU.

The measurements behind each rule and default are in ``docs/results/guard.md`` (one section per
question, named below); its section "The guard's rules with their measurements" keeps this
docstring's earlier text, which carried them inline.

A :class:`~cachewise.runtime.block_pool.ScoredBlockPool` sees one real eviction sequence,
so how the *other* order would have done is not observable in the real cache. The guard
estimates both while serving, without knowing the future, by *miniature simulation*
(spatial sampling, as SHARDS / "Cache Modeling and Optimization using Miniature
Simulations", Waldspurger et al., ATC'17): a hash-sampled fraction of the block-hash
space (``sample_rate``, raised so that the pool's blocks give at least
``min_sampled_blocks`` sampled ones: small pools see few accesses and need a larger share
for the same evidence) is simulated under each expert, fed the very stream the pool sees:

* **free** (a cached block reaches ref count 0): the hash joins each shadow's free set;
  the LRU shadow orders it by free time (vLLM's ``free_block_queue``), the learned shadow
  by the prediction the pool recorded for it at release (the same merge rule, soonest
  reuse / latest expiry, as :mod:`cachewise.runtime.eviction_order`);
* **access** (a free cached block is hit -- ``touch`` -- or a block is computed and cached
  -- ``_insert_block_hash``, a real miss): each shadow hits iff it still holds the hash;
* **arrival** (a request enters the queue): the learned shadow marks its prefix requested
  (the pool's arrival rule);
* **eviction pressure**: every real eviction of a cached block gives each shadow
  ``sample_rate`` of an eviction, plus one per sampled access where the shadow's outcome
  differs from the real one (a shadow hit where the pool missed saves the allocation the
  pool made; a shadow miss where the pool hit costs one). So each shadow holds about
  ``sample_rate`` of the cached free blocks it would hold had it been in charge.

The learned shadow evicts as the real order does, minus chain structure (sampled blocks
are not chained): expired first, then unpredicted in LRU order, then the farthest key,
an overdue prefix keyed ``now + overdue_remaining(idle)`` (the one rule of
:mod:`cachewise.scoring.overdue`; the pool re-keys in steps, the shadow continuously), a requested one keyed at its arrival (evicted last).

*Decision*: a **switch with hysteresis**, not LeCaR/CACHEUS expert weights. Sampling one
expert per eviction mixes two orders inside one cache state, and a cache's hit rate is
not the mixture of its experts' hit rates, so Hedge's regret bound does not carry over;
holding one mode keeps the real cache in the chosen expert's state, which is what the
shadow of that expert predicts. With ``h_L``, ``h_V`` the shadows' hit rates over an
exponentially decayed window (half-life ``half_life`` sampled block accesses, i.e. about
``half_life / sample_rate`` real ones) and ``se`` the standard error of ``h_L - h_V``, the
pool starts in vLLM's order (``start: learned`` in the learned one; the default, ``certified``,
in the learned one on certified traffic only, below: the learned order has to earn its place;
docs "Starting the guard in the learned order") and, after ``min_accesses`` sampled accesses:

* serves vLLM's LRU from the first check where ``h_L < h_V - margin - z * se`` (learned
  mode): leaving the learned order is never delayed;
* serves learned from the first check where ``h_L > h_V + margin + z * se`` (LRU mode),
  once it has served LRU for ``min_dwell`` sampled accesses since the last switch.

``se`` is a paired, *cluster-robust* estimate: both shadows see the same accesses, so
only the accesses they disagree on add variance, and the independent units are requests,
not blocks -- one request's prefix blocks hit or miss together (a chain of 24 blocks that
one shadow holds and the other evicted is one piece of evidence, not 24). The pool marks
each new request's lookup (:meth:`Guard.begin_cluster`, from ``touch``, which vLLM calls
once per newly scheduled request); the accesses up to the next mark form one cluster
(a request's hits and the blocks it then caches; a later chunk of a long prefill joins
the next cluster, which only makes the estimate more conservative). With cluster totals
``d_c`` (learned-only minus LRU-only hits) and sizes ``m_c``, weighted by the window,
``se^2 = sum w_c^2 (d_c - diff * m_c)^2 / (sum w_c m_c)^2`` (the ratio estimator's
variance). Treating blocks as independent understates ``se`` by about the square root of
the cluster size, enough for one request's burst to pass the test (docs, "Why the earlier
guard lost 5% on Mooncake at 75%"). The ``z * se`` term makes the warm-up adaptive: a large
difference is acted on after a few hundred sampled requests, a small one only once the window
holds enough evidence. ``z = 2`` (2.3% one-sided per independent check): with an honest ``se``
a false entry is left at the first check that sees it lose, and a larger ``z`` enters later
where the learned order is right.

**The preview** (``preview_frac``, default 0.1; 0 turns it off). The pool's own shadows are
identical until the pool first evicts, and for minutes after that differ on too few reused
blocks for the test above to tell the orders apart -- yet in a closed loop of agent sessions
those minutes decide most of the gain (docs, "When the switch comes decides the gain (session 20)"). So the
same sampled stream is also simulated in a *preview cache* of ``preview_frac`` of the pool's
blocks (:attr:`Guard.preview_capacity` sampled hashes, a second :class:`ShadowPair` that evicts
down to that size on every free, no eviction credit), which is under pressure long before the
pool: a miniature simulation at a smaller size, as SHARDS sizes caches. Its paired window (same
half-life, same cluster-robust ``se'``) gives the learned order its *first* entry, in vLLM's
order and after the dwell, when all of these hold (docs, "The preview: evidence from a smaller
cache (session 21)" and "The preview once memory proves short, shipped: one shortage test (session 23)"):

* the preview's test passes: ``h_L' > h_V' + margin + z * se'``;
* memory has proved short (:mod:`cachewise.runtime.memory_shortage`: the session view's one
  latched test, which the residency controller reads too): the live requests need more blocks
  than the pool holds, or the recomputed blocks passed ``thrash_share`` of the prefilled ones
  (``thrash_share`` null, as ``continuum`` sets it: short from the start). Before that the
  eviction order decides little, and a pool where memory suffices -- a few dozen harmful
  evictions a run -- is not in the regime the preview simulates; there only the test above
  decides. A pool with no session view (used outside vLLM's scheduler, as in
  tests/test_runtime_guard.py) reads its own turnover instead: it has evicted at least as many
  blocks as it holds;
* the pool's own shadows lean the same way: ``h_L - h_V > max(margin, se)``. This is a
  direction, not a test (one request's blocks can satisfy it); the preview is the test. A small
  cache can favour an order a large one does not (random eviction beats LRU in a cache a tenth
  of the pool on tests/test_runtime_guard.py's workload);
* the pool's own evidence has never ended a learned mode (after the first exit the preview
  gives no entries: the pool's test alone decides).

Leaving the learned order is unchanged (the pool's own test, never delayed), so the preview adds
at most one entry per run, counted among the switches of the guarantee below.

**Certified traffic** (``start: certified``, the default). The evidence above comes from the run
itself, and at real scale it comes too late: on agent traffic the learned order's gain is decided
in the first seconds of eviction, before any test on the pool's own stream can tell the orders
apart (docs, "The gain kept at real scale (session 27)"). Evidence from *before* the run is the
model's traffic certificate (:mod:`cachewise.replay.certify`, written by ``cachewise export`` beside
the model; :attr:`ExportedModel.certified_families <cachewise.scoring.exported.ExportedModel.certified_families>`):
the trace families on whose held-out validation sessions the unguarded learned order had fewer
harmful evictions than vLLM's LRU (:mod:`cachewise.replay.certify` states the rule). Clients
name their family in the hint ``family`` (:mod:`cachewise.runtime.request_calls`), or the server
names it for requests that do not (``guard.family``, e.g. on a server only one kind of agent
uses); the session view counts arrivals per declared family. The pool serves the learned order
from the first sampled access at which every request that has arrived declared a certified
family, and goes back to vLLM's order for good at the first one that did not (undeclared, or a
family the certificate does not name). While it serves on the certificate, leaving on the test above is unchanged (and
then final: no certified entry after it). So traffic nobody certified -- chat traffic on which
the model loses, a family the model never saw, a client that says nothing -- is served exactly
as with ``start: lru``; no certificate, or one made for another model, certifies nothing.

*Guarantee* (on the estimates): at every sampled access either the pool runs vLLM's own
eviction order (``get_new_blocks`` is vLLM's, unchanged), or the learned order's
estimated hit rate over the window is at least LRU's minus ``margin + z * se`` -- the
check that ends learned mode runs at every sampled access, with no dwell. So over a run of
``A`` block accesses the guarded pool misses at most ``(margin + z * se) * A_L`` more than
LRU (``A_L <= A``: the accesses served in learned mode), plus the transient of each switch
(the cache was filled by the other order: at most one pool of blocks), plus the sampling
error of ``h_L - h_V`` beyond that (``se`` is about ``sqrt(d * k / n_eff)`` for a share
``d`` of accesses the shadows disagree on, clusters of ``k`` sampled blocks and
``n_eff ~ 2.9 * half_life`` sampled accesses: 0.3 points at the defaults for ``d = 0.1,
k = 1``, 1.5 points for ``k = 24``). Switches into the learned order are at most one per
``min_dwell`` sampled accesses, so at most ``A * sample_rate / min_dwell`` transients.
With ``start: learned``, or certified traffic, add the warm-up (``min_accesses / sample_rate``
accesses served by the learned order unconditionally). tests/test_runtime_guard.py checks the bound on
vLLM's real ``KVCacheManager`` with inverted and random predictors (starting in the
learned order, the harder case), on block clusters of one request.

What the guarantee is not: a ratio on a short run. The bound is additive (points of hit
rate, one pool per switch), so where LRU misses little one switch can exceed 2% of LRU's
harmful evictions while the bound holds: a few dozen misses are below what the window can
tell from noise before they have happened (docs, "Why synthetic/others missed in the stage (1.031x), and what the guarantee covers";
two ways to bound the ratio, on a regret budget, were measured and not kept: "The guard's
rules with their measurements").

One verdict for every reader: :attr:`Guard.learned` decides the pool's ``get_new_blocks`` and,
through :meth:`ScoredBlockPool.serves_learned <cachewise.runtime.block_pool.ScoredBlockPool.serves_learned>`
and the session view (:attr:`SessionView.trusted <cachewise.runtime.sessions.SessionView.trusted>`),
whether the residency controller acts on the model's forecasts (it passes through as vLLM's
scheduler while neither this verdict nor the forecast judge's trusts the model:
:mod:`cachewise.runtime.residency` rule 5) and whether the host-tier
policy evicts by them; no reader keeps a copy.

Complexity: O(1) per block on every path (one comparison of the hash with a 2-byte bound
(:func:`sample_bound`) decides sampling; block hashes are uniform bytes: sha256 / xxhash); a sampled block costs
O(log s) on heaps of the ``s`` sampled free blocks, and O(log p) more in the preview's ``p =
preview_capacity``; a decision that reaches the memory condition before memory has proved short also
sums the live sessions' present KV, O(sessions) (O(1) once latched); until uncertified traffic has
arrived or the pool's test has left a certified learned mode, each decision reads the declared families,
O(families seen). Memory: O(sample_rate * blocks * (1 + preview_frac)).
The measured cost per evicted block (``tests/benchmarks/bench_runtime.py``) is in the README's targets table.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from vllm.v1.core.kv_cache_utils import KVCacheBlock, make_block_hash_with_group_id

from cachewise.runtime.config import GuardConfig
from cachewise.runtime.kv_blocks import cached_key, is_free
from cachewise.runtime.metrics import PoolStats
from cachewise.scoring.overdue import overdue_remaining

logger = logging.getLogger("vllm.cachewise")

_INF = math.inf

# Fields of a learned-shadow entry (a list, mutated in place).
_TOKEN, _SEQ, _FREED, _REUSE, _EXPIRE, _REQUESTED = range(6)


class LearnedShadow:
    """The learned eviction order over a set of sampled free hashes (see module doc).

    Heaps hold ``(key..., token, hash)`` entries; an entry is live iff its token is the
    entry's current one (any change bumps it), so stale entries are skipped lazily and
    the heaps are rebuilt once they outgrow ``8 * live + 64`` entries. A rebuild keeps at most
    three entries per live key, so the next one is at least ``5 * live + 64`` pushes away: O(1)
    amortised per push (a bound of ``4 * live`` rebuilt about four times as often, and cost the
    pool ~40 Python operations per released block at 25% sampling).
    """

    def __init__(self) -> None:
        self.entries: dict[bytes, list] = {}
        self._unpredicted: OrderedDict[bytes, None] = OrderedDict()
        self._far: list[tuple] = []  # (-reuse, seq, token, key): not overdue (or requested)
        self._due: list[tuple] = []  # (reuse, token, key): becomes overdue at reuse
        self._overdue: list[tuple] = []  # (freed_at, seq, token, key): key now + idle, oldest first
        self._expiry: list[tuple] = []  # (expire, token, key)
        self._next_token = 1

    def __len__(self) -> int:
        return len(self.entries)

    def insert(self, key: bytes, now: float, seq: int, prediction: tuple[float, float] | None) -> None:
        """``key`` joined the free set at ``now`` (free order ``seq``) with ``prediction`` or none."""
        self.remove(key)
        if prediction is None:
            self.entries[key] = [0, seq, now, None, _INF, 0]
            self._unpredicted[key] = None
            return
        entry = [0, seq, now, prediction[0], prediction[1], 0]
        self.entries[key] = entry
        self._push(key, entry, now)

    def remove(self, key: bytes) -> bool:
        """Drop ``key`` (a hit or an eviction elsewhere); True iff it was held."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        if entry[_REUSE] is None:
            self._unpredicted.pop(key, None)
        return True

    def request(self, key: bytes, now: float, expire_at: float) -> None:
        """A queued request will hit ``key``: keyed ``min(key, now)``, never overdue (arrival rule)."""
        entry = self.entries.get(key)
        if entry is None:
            return
        if entry[_REUSE] is None:
            self._unpredicted.pop(key, None)
            entry[_REUSE], entry[_EXPIRE] = now, expire_at
        else:
            entry[_REUSE] = min(entry[_REUSE], now)
            entry[_EXPIRE] = max(entry[_EXPIRE], expire_at)
        entry[_REQUESTED] = 1
        self._push(key, entry, now)

    def evict(self, now: float) -> bytes | None:
        """Remove and return the next victim at ``now`` (None when empty)."""
        if not self.entries:
            return None
        entries, due = self.entries, self._due
        while due and due[0][0] <= now:
            _, token, key = heapq.heappop(due)
            entry = entries.get(key)
            if entry is not None and entry[_TOKEN] == token:
                self._retoken(entry)
                heapq.heappush(self._overdue, (entry[_FREED], entry[_SEQ], entry[_TOKEN], key))
                if entry[_EXPIRE] < _INF:
                    heapq.heappush(self._expiry, (entry[_EXPIRE], entry[_TOKEN], key))
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, token, key = heapq.heappop(expiry)
            entry = entries.get(key)
            if entry is not None and entry[_TOKEN] == token:
                del entries[key]
                return key
        if self._unpredicted:
            key, _ = self._unpredicted.popitem(last=False)
            del entries[key]
            return key
        far, overdue = self._top(self._far, 2), self._top(self._overdue, 2)
        if far is None and overdue is None:
            return None
        if overdue is not None and (far is None or now + overdue_remaining(now - overdue[0]) >= -far[0]):
            heapq.heappop(self._overdue)
            key = overdue[3]
        else:
            heapq.heappop(self._far)
            key = far[3]
        del entries[key]
        return key

    def _top(self, heap: list[tuple], token_at: int) -> tuple | None:
        """The heap's first live entry (stale ones popped), or None."""
        entries = self.entries
        while heap:
            top = heap[0]
            entry = entries.get(top[-1])
            if entry is not None and entry[_TOKEN] == top[token_at]:
                return top
            heapq.heappop(heap)
        return None

    def _retoken(self, entry: list) -> None:
        entry[_TOKEN] = self._next_token
        self._next_token += 1

    def _push(self, key: bytes, entry: list, now: float) -> None:
        """(Re-)insert a predicted entry under its current key; its older heap entries die."""
        self._retoken(entry)
        token, reuse, expire = entry[_TOKEN], entry[_REUSE], entry[_EXPIRE]
        if reuse > now or entry[_REQUESTED]:
            heapq.heappush(self._far, (-reuse, entry[_SEQ], token, key))
            if not entry[_REQUESTED] and reuse < _INF:
                heapq.heappush(self._due, (reuse, token, key))
        else:
            heapq.heappush(self._overdue, (entry[_FREED], entry[_SEQ], token, key))
        if expire < _INF:
            heapq.heappush(self._expiry, (expire, token, key))
        limit = 8 * len(self.entries) + 64
        if len(self._far) + len(self._due) + len(self._overdue) + len(self._expiry) > limit:
            self._compact()

    def _compact(self) -> None:
        entries = self.entries

        def live(heap: list[tuple], token_at: int) -> list[tuple]:
            kept = [e for e in heap if (x := entries.get(e[-1])) is not None and x[_TOKEN] == e[token_at]]
            heapq.heapify(kept)
            return kept

        self._far, self._overdue = live(self._far, 2), live(self._overdue, 2)
        self._due, self._expiry = live(self._due, 1), live(self._expiry, 1)


class _AboveEveryKey:
    """Greater than every ``bytes`` value: the sample bound of the whole hash space."""

    def __gt__(self, other: object) -> bool:
        return True


def sample_bound(threshold: int) -> bytes | _AboveEveryKey:
    """The bound ``B`` of a hash sample: for every key of two or more bytes, ``key < B`` iff
    ``(key[0] << 8) | key[1] < threshold`` (``threshold`` in 1..65536). It is the threshold's
    two big-endian bytes (a longer key that starts with them compares greater), or for 65536
    a value above every key; one C comparison per block on the pool's hot paths."""
    return threshold.to_bytes(2, "big") if threshold < 65536 else _AboveEveryKey()


class ShadowPair:
    """The sampled free hashes of one simulated cache under both orders: ``lru`` (vLLM's free
    order, an ``OrderedDict``, oldest first) and ``learned`` (a :class:`LearnedShadow`)."""

    __slots__ = ("lru", "learned")

    def __init__(self) -> None:
        self.lru: OrderedDict[bytes, None] = OrderedDict()
        self.learned = LearnedShadow()

    def insert(self, key: bytes, now: float, seq: int, prediction: tuple[float, float] | None) -> None:
        """``key`` joined the free set at ``now`` (free order ``seq``) with ``prediction`` or none."""
        lru = self.lru
        lru[key] = None
        lru.move_to_end(key)
        self.learned.insert(key, now, seq, prediction)

    def take(self, key: bytes) -> tuple[bool, bool]:
        """``key`` was accessed: (LRU shadow held it, learned shadow held it); it leaves both."""
        lru = self.lru
        hit_lru = key in lru
        if hit_lru:
            del lru[key]
        return hit_lru, self.learned.remove(key)

    def trim(self, capacity: int, now: float) -> None:
        """Each shadow evicts down to ``capacity`` hashes (a cache of fixed size)."""
        lru, learned = self.lru, self.learned
        while len(lru) > capacity:
            lru.popitem(last=False)
        while len(learned) > capacity and learned.evict(now) is not None:
            pass


class PairedWindow:
    """The two shadows' hit rates over an exponentially decayed window of sampled accesses, and
    the cluster-robust standard error of their difference (module doc, "Decision").

    Clusters (the accesses between two :meth:`close_cluster` calls: one request's lookup and the
    blocks cached after it) carry the paired difference ``d`` and size ``m`` of the open one, and
    the squared-weight-decayed sums of ``d^2``, ``d*m``, ``m^2`` over closed ones.
    """

    __slots__ = ("decay", "n", "hits_lru", "hits_learned", "_cd", "_cm", "_qdd", "_qdm", "_qmm")

    def __init__(self, decay: float) -> None:
        self.decay = decay  # weight of the window per sampled access
        self.n = self.hits_lru = self.hits_learned = 0.0
        self._cd = self._cm = self._qdd = self._qdm = self._qmm = 0.0

    def close_cluster(self) -> None:
        """The open cluster ends (a new request's lookup starts)."""
        cd, cm = self._cd, self._cm
        if cm:
            self._qdd += cd * cd
            self._qdm += cd * cm
            self._qmm += cm * cm
            self._cd = self._cm = 0.0

    def add(self, hit_lru: bool, hit_learned: bool) -> None:
        """One sampled access: decay the window, count each shadow's outcome."""
        g = self.decay
        g2 = g * g
        self.n = self.n * g + 1.0
        self._qdd, self._qdm, self._qmm = self._qdd * g2, self._qdm * g2, self._qmm * g2
        self._cd += hit_learned - hit_lru
        self._cm += 1.0
        self.hits_lru = self.hits_lru * g + hit_lru
        self.hits_learned = self.hits_learned * g + hit_learned

    def rates(self) -> tuple[float, float]:
        """(learned, LRU) estimated hit rates (0 before any access)."""
        n = self.n or 1.0
        return self.hits_learned / n, self.hits_lru / n

    def lead(self) -> tuple[float, float]:
        """(learned minus LRU hit rate, its standard error): the paired difference per access (+1
        learned hit alone, -1 LRU hit alone) with a cluster-robust (ratio-estimator) variance --
        a request's blocks hit or miss together, so clusters, not accesses, are the units."""
        n = self.n or 1.0
        diff = (self.hits_learned - self.hits_lru) / n
        cd, cm = self._cd, self._cm
        spread = (self._qdd + cd * cd) - 2.0 * diff * (self._qdm + cd * cm) + diff * diff * (self._qmm + cm * cm)
        return diff, math.sqrt(max(spread, 0.0)) / n


class Guard:
    """Chooses, per pool, between the learned order and vLLM's LRU by measured regret.

    The pool calls the ``on_*`` methods from its eviction paths (all O(1) for unsampled
    blocks) and reads :attr:`learned` in ``get_new_blocks``. Counters go to ``stats``
    (``guard_*`` fields); one log line per switch.
    """

    def __init__(
        self,
        config: GuardConfig,
        stats: PoolStats,
        label: str,
        clock: Callable[[], float],
        num_blocks: int,
        memory_short: Callable[[], bool] | None = None,
        certified: Callable[[], bool | None] | None = None,
    ) -> None:
        self.config = config
        self._memory_short = memory_short  # the session view's shortage test (the preview's entry); None: turnover
        # Whether the traffic is certified (module doc, "Certified traffic"); None: no certified start (any more).
        self._certified = certified if config.start == "certified" else None
        self._by_certificate = False  # the learned order serves on the certificate, not on measured evidence
        self._clock = clock
        self.learned = config.start == "learned"  # which order serves now
        self._stats = stats
        stats.guard_learned = self.learned
        self._label = label
        self.sample_rate = max(config.sample_rate, min(1.0, config.min_sampled_blocks / max(num_blocks, 1)))
        self._below = sample_bound(int(round(self.sample_rate * 65536)))
        decay = 0.5 ** (1.0 / config.half_life)
        self._window = PairedWindow(decay)  # the pool's own capacity
        # The preview cache: sampled hashes it holds (None: no preview), and its window.
        preview = config.preview_frac
        self.preview_capacity = max(1, round(self.sample_rate * preview * num_blocks)) if preview else None
        self._preview_window = PairedWindow(decay)
        self._hits_real = 0.0  # the real pool's hits, decayed as the window
        self._accesses = 0
        self._since_switch = config.min_dwell  # the dwell applies after a switch, not to the start
        self._left_learned = False  # the pool's own evidence has ended a learned mode: the preview is done
        self._num_blocks = num_blocks
        self._evicted = 0  # cached blocks the pool has evicted
        self.reset()

    def reset(self) -> None:
        """Forget every shadow (vLLM's prefix cache was reset); the mode and windows stay."""
        self._pending: dict[bytes, list[float]] = {}
        self._shadows = ShadowPair()
        self._preview = ShadowPair() if self.preview_capacity is not None else None
        self._seq = 0
        self._credit_lru = 0.0
        self._credit_learned = 0.0

    # ------------------------------------------------------------- sampling
    def sampled(self, key: bytes) -> bool:
        """Whether ``key`` (a block hash, with or without group id) is in the sampled fraction."""
        return key < self._below

    def _sampled_keys(self, blocks: Iterable[KVCacheBlock]) -> Iterator[bytes]:
        """The sampled keys of ``blocks``' cached ones, in order; the unsampled are skipped in C
        (``filter`` over bound C methods: no Python step per unsampled block)."""
        return filter(self._below.__gt__, filter(None, map(cached_key, blocks)))

    # ---------------------------------------------------------------- events
    def on_release(self, chain: Sequence[KVCacheBlock], reuse_at: float, expire_at: float) -> None:
        """A request released ``chain`` with this prediction: remembered for its sampled blocks."""
        pending = self._pending
        for key in self._sampled_keys(chain):
            old = pending.get(key)
            if old is None:
                pending[key] = [reuse_at, expire_at]
            else:
                old[0], old[1] = min(old[0], reuse_at), max(old[1], expire_at)
        if len(pending) > 4 * (len(self._shadows.lru) + 1024):  # predictions of blocks never freed since
            pending.clear()

    def on_free(self, blocks: Iterable[KVCacheBlock], now: float) -> None:
        """``blocks`` reached ref count 0: their sampled hashes join every shadow's free set."""
        shadows, preview = self._shadows, self._preview
        for key in self._sampled_keys(blocks):
            self._seq += 1
            prediction = self._pending.pop(key, None)
            shadows.insert(key, now, self._seq, prediction)
            if preview is not None:
                preview.insert(key, now, self._seq, prediction)
                preview.trim(self.preview_capacity, now)

    def on_request(self, hashes: Iterable[bytes], group_id: int, now: float, expire_at: float) -> None:
        """A request arrived whose prefix has block ``hashes`` (no group id): the arrival rule."""
        below, preview = self._below, self._preview
        for h in hashes:
            if h < below:
                key = make_block_hash_with_group_id(h, group_id)
                self._shadows.learned.request(key, now, expire_at)
                if preview is not None:
                    preview.learned.request(key, now, expire_at)

    def begin_cluster(self) -> None:
        """A new request's lookup starts (vLLM touches each new request's hit blocks once, even
        none): the accesses since the last call form one cluster of correlated outcomes."""
        self._window.close_cluster()
        if self._preview is not None:
            self._preview_window.close_cluster()

    def on_touch(self, block: KVCacheBlock) -> None:
        """``block`` is about to be touched by a new request (a real prefix-cache hit)."""
        key = cached_key(block)
        if key is None or not key < self._below:
            return
        if is_free(block):
            self._access(key, True, self._clock())
        else:  # held by another request: no eviction choice involved; its prediction is consumed
            self._pending.pop(key, None)

    def on_cached(self, key: bytes) -> None:
        """``key`` was just computed and cached (a real miss)."""
        if key < self._below:
            self._access(key, False, self._clock())

    def on_evicted(self, count: int) -> None:
        """The pool evicted ``count`` cached blocks: eviction pressure for both shadows."""
        self._evicted += count
        credit = self.sample_rate * count
        self._credit_lru += credit
        self._credit_learned += credit
        if self._credit_lru >= 1.0 or self._credit_learned >= 1.0:
            self._drain(self._clock())

    # -------------------------------------------------------------- internals
    def _access(self, key: bytes, real_hit: bool, now: float) -> None:
        hit_lru, hit_learned = self._shadows.take(key)
        self._pending.pop(key, None)
        self._credit_lru += real_hit - hit_lru
        self._credit_learned += real_hit - hit_learned
        self._window.add(hit_lru, hit_learned)
        if self._preview is not None:
            self._preview_window.add(*self._preview.take(key))
        self._hits_real = self._hits_real * self._window.decay + real_hit
        self._accesses += 1
        self._since_switch += 1
        self._drain(now)
        self._decide()

    def _drain(self, now: float) -> None:
        """Each of the pool's shadows evicts its whole eviction credit (credit is dropped when it is empty)."""
        lru, learned = self._shadows.lru, self._shadows.learned
        while self._credit_lru >= 1.0:
            if not lru:
                self._credit_lru = 0.0
                break
            lru.popitem(last=False)
            self._credit_lru -= 1.0
        while self._credit_learned >= 1.0:
            if learned.evict(now) is None:
                self._credit_learned = 0.0
                break
            self._credit_learned -= 1.0

    def _decide(self) -> None:
        cfg, stats, window = self.config, self._stats, self._window
        h_learned, h_lru = window.rates()
        stats.guard_hit_rate_lru = h_lru
        stats.guard_hit_rate_learned = h_learned
        stats.guard_hit_rate_observed = self._hits_real / window.n
        stats.guard_sampled_accesses = self._accesses
        if self._preview is not None:
            stats.guard_preview_hit_rate_learned, stats.guard_preview_hit_rate_lru = self._preview_window.rates()
        if self._certified is not None:
            self._follow_certificate()
        if self._accesses < cfg.min_accesses:
            return
        diff, se = window.lead()
        threshold = cfg.margin + cfg.z * se
        if self.learned:
            if diff < -threshold:  # back to vLLM's order: never delayed
                self._left_learned = True
                self._certified, self._by_certificate = None, False
                self._switch(False, window, "")
        elif self._since_switch >= cfg.min_dwell:
            if diff > threshold:
                self._switch(True, window, "")
            elif self._preview is not None and not self._left_learned and diff > max(cfg.margin, se):
                preview_diff, preview_se = self._preview_window.lead()
                if preview_diff > cfg.margin + cfg.z * preview_se and self._short():
                    self._switch(True, self._preview_window, f" in the preview cache ({self.preview_capacity} sampled blocks)")

    def _follow_certificate(self) -> None:
        """The certified start (module doc): the learned order serves while every request so far
        declared a certified family; the first request that did not ends it for good (and the
        check: the answer cannot turn again)."""
        assert self._certified is not None
        verdict = self._certified()
        if verdict is None:  # no request has arrived yet
            return
        if not verdict:
            self._certified = None
            if self._by_certificate:
                self._by_certificate = False
                self._switch(False, None, "a request arrived whose family the model's traffic certificate does not name")
        elif not self.learned:
            self._by_certificate = True
            self._switch(True, None, "every request so far declared a family the model's traffic certificate names")

    def _short(self) -> bool:
        """The preview's memory condition (module doc): the session view's test, else the pool's turnover."""
        return self._memory_short() if self._memory_short is not None else self._evicted >= self._num_blocks

    def _switch(self, learned: bool, evidence: PairedWindow | None, where: str) -> None:
        """Serve the learned order (``learned``) or vLLM's, on ``evidence`` (``where`` says whose) or,
        with no evidence, on the certificate (``where`` says why). One log line."""
        self.learned = learned
        self._since_switch = 0
        self._stats.guard_learned = learned
        self._stats.guard_certified = self._by_certificate
        self._stats.guard_switches += 1
        mode = "the learned order" if learned else "vLLM's LRU order"
        if evidence is None:
            logger.info("CacheWise guard %s: switching to %s: %s", self._label, mode, where)
            return
        h_learned, h_lru = evidence.rates()
        logger.info(
            "CacheWise guard %s: switching to %s: estimated hit rate learned %.1f%% vs vLLM LRU %.1f%%%s "
            "(margin %.1f points) over the last ~%d sampled block accesses",
            self._label,
            mode,
            100 * h_learned,
            100 * h_lru,
            where,
            100 * self.config.margin,
            int(evidence.n),
        )
