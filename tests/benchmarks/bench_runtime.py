"""Overhead of CacheWise's scored block pool against vLLM's BlockPool (prints figures).

For each pool size (default 10k, 100k, 1M blocks) both pools are filled the same way:
requests of ``--chain`` blocks are allocated, their blocks hashed (vLLM's
``cache_full_blocks``) and freed; the scored pool first receives one prediction per
request (a scripted predictor: reuse in U(1 s, 1 h), expiry 3x later, so the timer heap
and overdue re-keys are exercised when the clock is advanced). Then blocks are evicted in
batches of ``--batch`` through ``get_new_blocks`` until ``--evict`` blocks (default: the
whole pool) have been evicted, the pool's clock advancing ``--batch / --evict-rate`` seconds before
each batch. The rate decides how much overdue re-keying each evicted block shares: the default, 32
blocks a second, evicts slower than the replay does (its real-scale runs, C=32, 48 Claude Code sessions,
``--token-scale 1``, evict 110-630 blocks a second: ``evictions`` over ``makespan_s`` in their
``results.csv``), so it is the harder case; ``--evict-rate 128`` is closer to a cache under pressure.
Reported:

* release: µs per finished request (scored: ``on_request_released`` + ``free_blocks``;
  vLLM: ``free_blocks``) and per block;
* evict: µs per evicted block, amortised over the batches (median of ``--trials`` phases),
  and the difference;
* memory: bytes per block of each pool (tracemalloc, separate untimed build and fill,
  heaps included);
* the guard (:mod:`cachewise.runtime.guard`, default settings) is timed separately: pool
  ``scored`` has it off, ``guarded`` on and serving the learned order (``start: learned``;
  the fill makes no prefix-cache hits, so it never switches: the guard's bookkeeping on top
  of the learned order, the costlier of its two modes); ``certified`` the same on the
  certified start (the default ``start: certified``: an engine session view to which one
  request declared the family the predictor's certificate names, so the learned order serves
  from the first access and each sampled access also asks the view); block hashes are sha256
  digests as in vLLM, so the guard samples its default fraction of them;
* learned scorer: µs per prediction (features + LightGBM) with ``--model`` (an export
  folder), else with a random 400-tree model of the real feature set.

Times are CPU time of this process (``time.process_time``), so other jobs on a shared
machine inflate them less than wall time would (caches and frequency still shared); on a
shared virtual machine they have varied by up to ±30% between runs (±1.5% on a quiet one). ``--ops`` prints instead a
count that repeats (to about 0.1 operation per block: the scorer-latency histogram's bucket
search depends on the measured time): Python bytecode operations and Python function calls per evicted
and per released block (``sys.settrace`` opcode events and ``sys.setprofile`` calls, C calls
not counted), for comparing two versions of the pool's code.

Target: scored-pool eviction overhead (guard included) < 5 µs amortised per evicted block.
Run: ``python tests/benchmarks/bench_runtime.py [--sizes 10000,100000] [--model models/cachewise-reuse]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import sys
import time
import tracemalloc
from types import SimpleNamespace

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

from vllm.v1.core.block_pool import BlockPool  # noqa: E402
from vllm.v1.core.kv_cache_utils import init_none_hash  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402

from cachewise.runtime.policy import ManualClock as Clock
from cachewise.runtime.block_pool import ScoredBlockPool  # noqa: E402
from cachewise.runtime.config import GuardConfig, PoolConfig  # noqa: E402
from cachewise.runtime.policy import ReusePrediction  # noqa: E402
from cachewise.runtime.sessions import SessionView  # noqa: E402

BLOCK = 16
DEFAULT_EVICT_RATE = 32.0  # evicted blocks per second of the pool's clock: one 32-block batch a second


class Scripted:
    """Reuse in U(1 s, 1 h), expiry three times as far: one prediction per request; its traffic
    certificate names the family ``bench``."""

    certified_families = frozenset({"bench"})

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def on_request_finished(self, request, now: float) -> ReusePrediction:
        gap = self.rng.uniform(1.0, 3600.0)
        return ReusePrediction(now + gap, now + 3 * gap)


def _digest(tag: bytes, serial: int, i: int) -> bytes:
    """A block hash like vLLM's: 32 uniform bytes."""
    return hashlib.sha256(tag + serial.to_bytes(8, "big") + i.to_bytes(8, "big")).digest()


def _finished_request() -> SimpleNamespace:
    return SimpleNamespace(is_finished=lambda: True)


def _fill(pool: BlockPool, chain: int, clock: Clock) -> tuple[float, int]:
    """Allocate, hash and free every block in chains of ``chain``; seconds spent releasing, requests."""
    scored = isinstance(pool, ScoredBlockPool)
    release_s, n_req, serial = 0.0, 0, 0
    for _ in range((pool.num_gpu_blocks - 1) // chain):  # every block reused from the never-used ones
        blocks = pool.get_new_blocks(chain)
        hashes = [_digest(b"f", serial, i) for i in range(chain)]
        serial += 1
        pool.cache_full_blocks(SimpleNamespace(block_hashes=hashes), blocks, 0, chain, BLOCK, 0)
        clock.now += 0.01
        t0 = time.process_time()
        if scored:
            pool.on_request_released(_finished_request(), [(blocks, True)])
        pool.free_blocks(reversed(blocks))
        release_s += time.process_time() - t0
        n_req += 1
    return release_s, n_req


def _evict(
    pool: BlockPool, total: int, batch: int, clock: Clock, phase: int = 0, rate: float = DEFAULT_EVICT_RATE
) -> tuple[float, int]:
    """(seconds, blocks) evicting at least ``total`` cached blocks in batches of ``batch``, the
    pool's clock advancing ``batch / rate`` seconds before each batch (``rate``: evicted blocks per
    second of the pool's clock).

    After each timed batch the blocks are hashed again (hashes unique to ``phase``: a hash seen
    in an earlier phase would be a miss the guard's LRU shadow hits, and would switch it) and
    released (untimed), so every batch evicts cached blocks from a full cache.
    """
    spent, done = 0.0, 0
    while done < total:
        clock.now += batch / rate  # time passes: some predictions become overdue or expire
        t0 = time.process_time()
        blocks = pool.get_new_blocks(batch)
        spent += time.process_time() - t0
        pool.free_blocks(blocks)  # unhashed: back at the head, reused first; excluded from timing
        done += batch
        # re-hash the returned blocks so that the next batch evicts cached blocks again
        hashes = [_digest(b"e%d" % phase, done, i) for i in range(batch)]
        got = pool.get_new_blocks(batch)
        pool.cache_full_blocks(SimpleNamespace(block_hashes=hashes), got, 0, batch, BLOCK, 0)
        if isinstance(pool, ScoredBlockPool):
            pool.on_request_released(_finished_request(), [(got, True)])
        pool.free_blocks(reversed(got))
    return spent, done


def _build(kind: str, n: int, clock: Clock) -> BlockPool:
    if kind == "vllm":
        return BlockPool(n, True, BLOCK)
    certified = kind == "certified"
    guard = GuardConfig(enabled=kind != "scored", start="certified" if certified else "learned")
    config = PoolConfig(log_interval_s=0, guard=guard)
    view = SessionView(BLOCK) if certified else None
    if view is not None:
        view.on_arrival("r0", "s0", None, BLOCK, 0.0, family="bench")
    return ScoredBlockPool(n, True, BLOCK, predictor=Scripted(1), clock=clock, config=config, sessions=view)


def bench_pool(
    kind: str, n: int, chain: int, batch: int, evict: int, trials: int, rate: float = DEFAULT_EVICT_RATE
) -> dict[str, float]:
    """Release and eviction timings (median of ``trials`` eviction phases on one filled pool)."""
    clock = Clock()
    gc.collect()
    pool = _build(kind, n, clock)
    release_s, n_req = _fill(pool, chain, clock)
    phases = []
    for phase in range(trials):
        spent, evicted = _evict(pool, min(evict, n - chain), batch, clock, phase, rate)
        phases.append(spent / evicted * 1e6)
    return {
        "release_us_per_req": release_s / n_req * 1e6,
        "release_us_per_block": release_s / (n_req * chain) * 1e6,
        "evict_us_per_block": statistics.median(phases),
        "rekeys": getattr(getattr(pool, "_order", None), "rekeys", 0),
    }


def bytes_per_block(kind: str, n: int, chain: int) -> float:
    """Memory (tracemalloc) of a pool built and filled as in :func:`bench_pool`, per block."""
    gc.collect()
    tracemalloc.start()
    pool = _build(kind, n, Clock())
    _fill(pool, chain, Clock())
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del pool
    return used / n


def bench_scorer(model_path: str | None, n: int = 2000) -> float:
    """µs per learned prediction (``FeatureState.observe`` + ``ExportedModel.predict_one``).

    Uses the export at ``model_path``, else a random 400-tree, 31-leaf model of the real
    feature set written to a temporary export folder (the size of the pipeline's model).
    """
    import tempfile
    from pathlib import Path

    import lightgbm as lgb
    import numpy as np

    from cachewise.features.online import FeatureState
    from cachewise.features.record import FinishedCall, ToolCallInfo
    from cachewise.features.spec import FEATURE_NAMES, spec_fields
    from cachewise.scoring.exported import load_exported, write_export
    from cachewise.scoring.idle import N_LEVELS

    with tempfile.TemporaryDirectory() as tmp:
        if model_path is None:
            rng = np.random.default_rng(0)
            x = rng.normal(size=(5000, len(FEATURE_NAMES)))
            params = {"objective": "regression", "num_leaves": 31, "verbose": -1}
            booster = lgb.train(params, lgb.Dataset(x, rng.normal(size=5000)), 400)
            spec = {**spec_fields(), "residual_quantiles": {"model": list(np.linspace(-1, 1, N_LEVELS))}}
            write_export(Path(tmp), booster, spec)
            model_path = tmp
        model = load_exported(model_path)
        state = FeatureState()
        tools = (ToolCallInfo("Bash", {"command": "python -m pytest -x tests/test_app.py"}),)
        calls = [FinishedCall(f"t{i % 50}", f"s{i % 50}", float(i), i + 2.0, 4000 + i, 120, tools, False, "qwen") for i in range(n)]
        t0 = time.process_time()
        for call in calls:
            model.predict_one(state.observe(call))
        return (time.process_time() - t0) / n * 1e6


class _OpCounter:
    """Counts Python bytecode operations and Python calls while active."""

    def __init__(self) -> None:
        self.ops = self.calls = 0

    def _trace(self, frame, event, arg):  # noqa: ANN001, ANN202 - sys.settrace's protocol
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._opcode

    def _opcode(self, frame, event, arg):  # noqa: ANN001, ANN202
        if event == "opcode":
            self.ops += 1
        return self._opcode

    def _profile(self, frame, event, arg) -> None:  # noqa: ANN001
        if event == "call":
            self.calls += 1

    def __enter__(self) -> "_OpCounter":
        sys.settrace(self._trace)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)
        sys.setprofile(None)


def count_ops(kind: str, n: int, chain: int, batch: int, requests: int = 20, batches: int = 40) -> dict[str, float]:
    """Operations and calls per block of ``requests`` releases and ``batches`` evictions of ``batch``
    blocks, on a pool filled and evicted once as :func:`bench_pool`'s (untraced)."""
    clock = Clock()
    pool = _build(kind, n, clock)
    _fill(pool, chain, clock)
    _evict(pool, min(2000, n - chain), batch, clock)
    held = []
    for k in range(requests):
        blocks = pool.get_new_blocks(chain)
        pool.cache_full_blocks(SimpleNamespace(block_hashes=[_digest(b"o", k, i) for i in range(chain)]), blocks, 0, chain, BLOCK, 0)
        held.append(blocks)
    with _OpCounter() as release:
        for blocks in held:
            if kind != "vllm":
                pool.on_request_released(_finished_request(), [(blocks, True)])
            pool.free_blocks(reversed(blocks))
    clock.now += 1.0
    with _OpCounter() as evict:
        for _ in range(batches):
            pool.get_new_blocks(batch)
    per_release, per_evict = requests * chain, batches * batch
    return {
        "release_ops": release.ops / per_release,
        "release_calls": release.calls / per_release,
        "evict_ops": evict.ops / per_evict,
        "evict_calls": evict.calls / per_evict,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="CacheWise runtime overhead vs vLLM's BlockPool")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--chain", type=int, default=64, help="blocks per request")
    parser.add_argument("--batch", type=int, default=32, help="blocks per get_new_blocks call")
    parser.add_argument("--evict", type=int, default=200000, help="blocks evicted per size (capped at the pool)")
    parser.add_argument("--trials", type=int, default=3, help="eviction phases per size (median reported)")
    parser.add_argument("--model", default=None, help="export folder for the scorer timing")
    parser.add_argument("--evict-rate", type=float, default=DEFAULT_EVICT_RATE,
                        help="evicted blocks per second of the pool's clock (fewer: more overdue re-keys per eviction)")
    parser.add_argument("--ops", action="store_true", help="count Python operations per block instead of timing")
    args = parser.parse_args()
    init_none_hash(sha256)
    if args.ops:
        print("Python bytecode operations and Python calls per block (repeatable; C calls not counted)")
        for n in (int(s) for s in args.sizes.split(",")):
            rows = {kind: count_ops(kind, n, args.chain, args.batch) for kind in ("vllm", "scored", "guarded", "certified")}
            for kind, r in rows.items():
                over = (r["evict_ops"] + r["release_ops"]) - (rows["vllm"]["evict_ops"] + rows["vllm"]["release_ops"])
                print(f"{n:>9} {kind:>9}  evict {r['evict_ops']:6.1f} ops {r['evict_calls']:5.1f} calls   release "
                      f"{r['release_ops']:6.1f} ops {r['release_calls']:5.1f} calls   evict+release over vLLM {over:6.1f} ops")
        return
    print(f"chain={args.chain} blocks/request, eviction batch={args.batch}, {args.evict_rate:g} evicted blocks per "
          f"second of the pool's clock, median of {args.trials} eviction phases")
    print(f"{'blocks':>9} {'pool':>9} {'release us/req':>15} {'us/block':>9} {'evict us/block':>15} {'bytes/block':>12} {'rekeys':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        kinds = ("vllm", "scored", "guarded", "certified")
        rows = {kind: bench_pool(kind, n, args.chain, args.batch, args.evict, args.trials, args.evict_rate) for kind in kinds}
        for kind, r in rows.items():
            r["bytes_per_block"] = bytes_per_block(kind, n, args.chain)
            print(f"{n:>9} {kind:>9} {r['release_us_per_req']:>15.1f} {r['release_us_per_block']:>9.3f} "
                  f"{r['evict_us_per_block']:>15.3f} {r['bytes_per_block']:>12.0f} {r['rekeys']:>7}")
        for kind in kinds[1:]:
            d = {k: rows[kind][k] - rows["vllm"][k] for k in ("release_us_per_req", "release_us_per_block", "evict_us_per_block", "bytes_per_block")}
            total = d["evict_us_per_block"] + d["release_us_per_block"]
            print(f"{n:>9} {'d_' + kind:>9} {d['release_us_per_req']:>15.1f} {d['release_us_per_block']:>9.3f} "
                  f"{d['evict_us_per_block']:>15.3f} {d['bytes_per_block']:>12.0f}   evict+release per block {total:.2f} us; "
                  f"target < 5 us/evicted block: {'MET' if total < 5 else 'MISSED'}")
    print(f"learned scorer: {bench_scorer(args.model):.1f} us per finished request (features + LightGBM)")


if __name__ == "__main__":
    main()
