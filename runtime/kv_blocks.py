"""The one place CacheWise reads vLLM's per-block state: is a block free, cached, being reused.

vLLM's ``KVCacheBlock`` (``vllm/v1/core/kv_cache_utils.py``) has no public query for
"free and cached"; its pool decides it from the block's fields. CacheWise's eviction order,
pool and guard need the same facts, so they ask these functions instead of spelling the
field tests out (the fields are private and may change between vLLM releases: a change is
then made here, see :mod:`cachewise.runtime.vllm_compat` for the tested series).

Fields read (vLLM 0.32 / 0.33), and why:

* ``ref_cnt``: requests holding the block; 0 = held by none. Not enough on its own: the
  null block's count is not maintained (vLLM's ``free_blocks`` skips it) and a block
  vLLM's ``get_new_blocks`` just popped also has count 0 until it is handed out.
* ``prev_free_block``: the link of vLLM's ``FreeKVCacheBlockQueue``. The queue has a
  sentinel head and tail, so a block is in the queue iff this link is set (``popleft``,
  ``popleft_n`` and ``remove`` clear it). With ``ref_cnt == 0`` it tells a *free* block
  (queued, an eviction candidate) from one being reused (popped, its hash about to be
  dropped). The null block (block 0) is popped at start-up and never queued again, so it
  is never free: ``is_null`` needs no separate test here.
* ``_block_hash``: the prefix-cache key (block hash + KV-cache group id), set while the
  block is full and cached, None otherwise. Read as the slot, not through the
  ``block_hash`` property: the property adds a Python call to every step of the pool's
  hot loops and only returns this slot.

* ``pool``: the ``BlockPool`` the block belongs to (a deferred free may hand a pool blocks of
  another); :func:`freed_in` keeps the pool's own.

``is_null`` is a public flag of the dataclass; the pool's ``touch`` tests it exactly as
vLLM's own ``touch`` does. Every function is O(1) and keeps no state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import attrgetter

from vllm.v1.core.kv_cache_utils import KVCacheBlock

cached_key: Callable[[KVCacheBlock], bytes | None] = attrgetter("_block_hash")
"""The block's prefix-cache key (hash + group id), None when it is not cached."""


def is_free(block: KVCacheBlock) -> bool:
    """In vLLM's free queue: held by no request, an eviction candidate (cached or not)."""
    return block.ref_cnt == 0 and block.prev_free_block is not None


def is_free_cached(block: KVCacheBlock) -> bool:
    """Free and holding a prefix-cache hash: a prefix a later request could still hit."""
    return block.ref_cnt == 0 and block.prev_free_block is not None and block._block_hash is not None


def is_free_uncached(block: KVCacheBlock) -> bool:
    """Free and holding no hash: reusing it evicts nothing."""
    return block.ref_cnt == 0 and block.prev_free_block is not None and block._block_hash is None


def is_being_reused(block: KVCacheBlock) -> bool:
    """Held by no request yet out of the free queue: popped by vLLM's ``get_new_blocks``,
    so any hash it loses now is an eviction the pool itself chose."""
    return block.ref_cnt == 0 and block.prev_free_block is None


def freed_in(pool: object, blocks: Iterable[KVCacheBlock]) -> list[KVCacheBlock]:
    """Those of ``blocks`` that belong to ``pool`` and are free, in order: after vLLM's
    ``free_blocks``, the ones that reached ref count 0. One comprehension, no call per block."""
    return [b for b in blocks if b.ref_cnt == 0 and b.pool is pool and b.prev_free_block is not None]
