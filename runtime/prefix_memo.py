"""``PrefixMemo``: the leading blocks of a waiting request that vLLM's GPU prefix cache holds,
remembered between the residency controller's plans instead of looked up afresh.

Residency rule 2 (``readmit_cached``) asks at every plan how many leading blocks of each
withheld request's prompt the GPU cache holds. vLLM's ``find_longest_cache_hit`` answers by
building each block's group key and probing the hash map, about 1.5 µs a block on this CPU: at
real scale (16-token blocks, prompts of thousands of blocks) these lookups were 93% of the
controller's time (README "Controller cost at real scale").

Why a remembered answer stays exact: a cached block keeps the hash key under which it was found
until that key leaves vLLM's map, and every path that removes a key from the map also clears the
block's ``block_hash`` (eviction and promotion through ``_remove_cached_block_hashes``, which
drops all of a block's keys together, and ``reset_prefix_cache``). So a block remembered with
key ``k`` whose ``block_hash`` is still ``k`` would be found again by a probe of ``k``. The
longest cached run now is therefore: the remembered blocks that still carry their keys, up to
the first that does not, then vLLM's probe (``BlockPool.get_cached_block``) from there, block by
block, until the first miss or the limit -- the same count as the dense lookup's. Keys are
compared by identity: a block re-cached under an equal key of another object is probed again
(correct, only slower).

Where it applies: one KV-cache group with vLLM's dense (chained) lookup, the hash block the cache
block (so every key is a block's primary key: no fine-grained partial entries), no decode
context parallelism and no EAGLE drop (:func:`memo_applies`). Anywhere else :meth:`leading`
is vLLM's coordinator lookup, unremembered (on vLLM 0.32 too, whose coordinator names the EAGLE
groups differently). Probes here go to ``BlockPool``'s lookup itself, so a
controller's probe is not counted as a ghost hit by :class:`~cachewise.runtime.block_pool.ScoredBlockPool`
(it is not a request's lookup).

Complexity: :meth:`leading` is O(k) attribute reads for the k remembered blocks checked plus
O(m + 1) probes for the m blocks newly cached since (one probe, of the first missing block,
in the steady state), instead of O(k) probes. Memory: one list of blocks and one of keys per
remembered request; :meth:`forget` drops the requests no longer asked about. Not thread-safe
(the scheduler's thread only).
"""

from __future__ import annotations

from collections.abc import Container

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_coordinator import UnitaryKVCacheCoordinator
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.request import Request

from cachewise.runtime.hooks import is_chained


def memo_applies(manager: KVCacheManager) -> bool:
    """Whether remembered lookups give vLLM's count for ``manager`` (module doc); False when an
    attribute this reads is missing (another vLLM version: the coordinator's lookup is used)."""
    try:
        coordinator = manager.coordinator
        managers = coordinator.single_type_managers
        return (
            type(coordinator) is UnitaryKVCacheCoordinator
            and len(managers) == 1
            and is_chained(type(managers[0]))
            and coordinator.block_size == coordinator.block_pool.hash_block_size
            and coordinator.dcp_world_size == 1
            and not coordinator.drop_eagle_group_ids
        )
    except AttributeError:
        return False


def vllm_cached_blocks(manager: KVCacheManager, request: Request, block_size: int, limit: int | None = None) -> int:
    """Leading full blocks of ``request``'s prompt (at most ``num_tokens - 1`` tokens) the GPU prefix
    cache holds now, at most ``limit``: vLLM's ``find_longest_cache_hit``, read-only. O(blocks) probes."""
    most = (request.num_tokens - 1) // block_size
    if limit is not None:
        most = min(most, limit)
    _, tokens, _ = manager.coordinator.find_longest_cache_hit(request.block_hashes, most * block_size)
    return tokens // block_size


class PrefixMemo:
    """Leading cached blocks per request id, kept across calls (module doc)."""

    def __init__(self, manager: KVCacheManager, block_size: int) -> None:
        self._manager = manager
        self._block_size = block_size
        self.remembers = memo_applies(manager)
        self._found: dict[str, tuple[list[KVCacheBlock], list[bytes]]] = {}  # request id -> (blocks, their keys)

    def leading(self, request: Request, limit: int | None = None) -> int:
        """:func:`vllm_cached_blocks`'s count, from the blocks remembered for ``request`` (module doc)."""
        if not self.remembers:
            return vllm_cached_blocks(self._manager, request, self._block_size, limit)
        hashes = request.block_hashes
        most = min((request.num_tokens - 1) // self._block_size, len(hashes))
        if limit is not None:
            most = min(most, limit)
        blocks, keys = self._found.setdefault(request.request_id, ([], []))
        n, checked = 0, min(len(blocks), most)
        while n < checked and blocks[n].block_hash is keys[n]:
            n += 1
        if n < checked:  # evicted (or re-keyed) at n: what follows is probed again
            del blocks[n:], keys[n:]
        pool = self._manager.block_pool
        while n < most:
            found = BlockPool.get_cached_block(pool, hashes[n], [0])
            if found is None:
                break
            blocks.append(found[0])
            keys.append(found[0].block_hash)
            n += 1
        return n

    def forget(self, keep: Container[str]) -> None:
        """Drop what is remembered of the requests not in ``keep``. O(remembered requests)."""
        for rid in [r for r in self._found if r not in keep]:
            del self._found[rid]
