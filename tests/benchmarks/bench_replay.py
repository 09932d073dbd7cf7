"""Replay benchmark: the full capacity x concurrency sweep, and the harness's own figures.

Prints, for the events table given (default: ingest ../shared/traces/claude-code into a
temporary file):

* token-scale fidelity: LRU and recorded_gap at one point with ``token_scale`` 16 and 4 on the
  same sessions; harmful evictions in trace tokens (blocks x tokens per block), hit rate and
  mean session time, with their relative difference;
* replay speed: LLM calls replayed per second and vLLM steps per second, per policy;
* the full sweep (capacity fractions 0.1 ... 1.0 x concurrency 8, 16, 32, 48, every policy of
  ``replay.policies`` plus the hand-written orders the ``evaluate`` stage leaves out for time,
  :data:`HAND_WRITTEN`), written like ``cachewise replay --sweep`` (results.csv, plots,
  report.md) under ``--out``, and its headline tables.

* with ``--block-check``: block-size fidelity instead. vLLM's blocks are 16 tokens; the replay's
  are 16 replay tokens = 256 trace tokens at ``token_scale`` 16. On a subset (8 sessions,
  4 concurrent) each policy's harmful evictions and mean JCT relative to ``lru_arrival`` are
  measured at each of ``--scales`` (default 16, 4, 2) and at token_scale 1 (real 16-token
  blocks) at 25/50/75% capacity, for ``--seeds`` seeds; it prints, per seed, how far each ratio
  moves from its token_scale-1 value, the largest move per scale against 5%, and each scale's
  wall time relative to token_scale 1.

Run: ``python tests/benchmarks/bench_replay.py [--events PATH] [--model DIR] [--out DIR] [--quick]
[--block-check [--scales 16,4,2] [--seeds N]]``
(``--quick``: 2 capacities x 1 concurrency, for a smoke check).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cachewise.data.ingest import load_sources
from cachewise.data.schema import read_events, write_events
from cachewise.replay.cli import replay
from cachewise.replay.config import SweepSettings, load_config
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer, RunSpec
from cachewise.replay.selection import select_sessions
from cachewise.replay.workload import build_workload

REPO = Path(__file__).resolve().parents[2]
SHARED_TRACES = (REPO / ".." / "shared" / "traces").resolve()
FULL_FRACS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
FULL_CONCURRENCY = (8, 16, 32, 48)  # the test split holds ~52 sessions; 48 are replayed


def _events(path: str | None, tmp: Path) -> str:
    if path:
        return path
    src = SHARED_TRACES / "claude-code"
    if not src.is_dir():
        raise SystemExit(f"no --events given and no real traces at {src}")
    events, _ = load_sources([src])
    out = tmp / "events_cc.parquet"
    write_events(events, out)
    return str(out)


def _replayer(config, token_scale: int, n_sessions: int) -> Replayer:
    events = read_events(config.events)
    chosen = select_sessions(events, "all", n_sessions, config.seed)
    workload = build_workload(events, replace(config.workload, token_scale=token_scale), chosen.sessions)
    cost = load_cost_model(config.cost_coefficients, config.model_shape)
    ctx = PolicyContext(workload, IdleStats.fit(events))
    return Replayer(workload, cost, config.engine.for_scale(token_scale), ctx, seed=config.seed)


def fidelity(config, n_sessions: int = 8) -> None:
    """LRU and recorded_gap at capacity 0.5, concurrency 8: token_scale 16 against 4."""
    print(f"\n== token-scale fidelity ({n_sessions} sessions, concurrency 8, capacity 0.5) ==")
    arrivals = config.arrivals(8)
    rows = {}
    for scale in (16, 4):
        rep = _replayer(config, scale, n_sessions)
        for policy in ("lru", "recorded_gap"):
            start = time.perf_counter()
            r = rep.run(RunSpec(policy, 0.5, arrivals))
            rows[(scale, policy)] = r
            print(
                f"scale {scale:2d} {policy:7s} harmful={r['harmful_evictions'] * r['block_tokens']:>12,} trace tokens"
                f"  hit={r['hit_rate']:.3f}  jct_mean={r['jct_s_mean']:8.1f}s"
                f"  wall={time.perf_counter() - start:6.1f}s"
            )
    for policy in ("lru", "recorded_gap"):
        a, b = rows[(16, policy)], rows[(4, policy)]
        ha, hb = a["harmful_evictions"] * a["block_tokens"], b["harmful_evictions"] * b["block_tokens"]
        print(
            f"{policy:7s} scale 16 vs 4: harmful tokens {100 * (ha / hb - 1):+.1f}%, hit rate"
            f" {a['hit_rate'] - b['hit_rate']:+.3f}, session mean {100 * (a['jct_s_mean'] / b['jct_s_mean'] - 1):+.1f}%"
        )


def block_check(config, scales: tuple[int, ...], seeds: int, n_sessions: int = 8, tolerance: float = 0.05) -> None:
    """Per-policy ratios to lru_arrival at each of ``scales`` against token_scale 1 (module doc)."""
    policies = ["lru", "lru_arrival", "per_tool_mean", "heuristic"]  # no model needed: scale fidelity of the engine
    arrivals = config.arrivals(4)
    fracs = (0.25, 0.5, 0.75)
    ratios: dict[tuple[int, int, float, str], tuple[float, float]] = {}
    wall: dict[int, float] = {}
    for scale in (*scales, 1):
        start = time.perf_counter()
        for seed in range(config.seed, config.seed + seeds):
            rep = _replayer(replace(config, seed=seed), scale, n_sessions)
            for frac in fracs:
                rows = {p: rep.run(RunSpec(p, frac, arrivals)) for p in policies}
                base = rows["lru_arrival"]
                for p, r in rows.items():
                    ratios[(scale, seed, frac, p)] = (
                        r["harmful_evictions"] * r["block_tokens"] / max(base["harmful_evictions"] * base["block_tokens"], 1),
                        r["jct_s_mean"] / base["jct_s_mean"],
                    )
        wall[scale] = time.perf_counter() - start
        print(f"token_scale {scale:2d}: {wall[scale]:6.0f}s wall for {seeds} seed(s)", flush=True)
    print(f"\n== block-size fidelity ({n_sessions} sessions, concurrency 4, {seeds} seed(s)): policy / lru_arrival ==")
    for scale in scales:
        worst = 0.0
        for frac in fracs:
            for p in policies:
                h = [ratios[(scale, s, frac, p)][0] / max(ratios[(1, s, frac, p)][0], 1e-9) - 1 for s in range(config.seed, config.seed + seeds)]
                j = [ratios[(scale, s, frac, p)][1] / ratios[(1, s, frac, p)][1] - 1 for s in range(config.seed, config.seed + seeds)]
                worst = max(worst, *map(abs, h), *map(abs, j))
                print(f"scale {scale:2d} vs 1  cap {frac:.2f} {p:13s} harmful ratio off by"
                      f" {' '.join(f'{x:+6.1%}' for x in h)}   JCT ratio off by {' '.join(f'{x:+6.1%}' for x in j)}")
        verdict = "within" if worst <= tolerance else "NOT within"
        print(f"token_scale {scale}: largest deviation {worst:.1%}: {verdict} {tolerance:.0%};"
              f" cost {wall[scale] / wall[1]:.2f}x of token_scale 1\n")


HAND_WRITTEN = ("per_tool_mean", "ttl", "heuristic")
"""Every hand-written eviction order: the sweep's "best hand-written" is chosen among all of them."""


def speed(config, n_sessions: int = 16) -> None:
    """Calls and engine steps per second of wall time, per policy, at capacity 0.5."""
    print(f"\n== replay speed ({n_sessions} sessions, token_scale {config.workload.token_scale}, concurrency 16) ==")
    rep = _replayer(config, config.workload.token_scale, n_sessions)
    calls = len(rep.w.calls)
    arrivals = config.arrivals(16)
    blocks, _ = rep.num_blocks(0.5, arrivals)  # runs (and caches) the infinite-cache sizing run
    for policy in [p for p in config.policies if p != "learned"]:
        start = time.perf_counter()
        r = rep.run_at(policy, rep.infinite_blocks if policy == "infinite" else blocks, arrivals)
        wall = time.perf_counter() - start
        print(
            f"{policy:14s} {calls / wall:7.1f} calls/s  {r['steps'] / wall:8.1f} steps/s"
            f"  engine CPU {r['engine_cpu_s']:6.2f}s  policy CPU {r['policy_cpu_s']:6.2f}s"
            f" ({r['policy_overhead_pct']:.3f}% of replayed step time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events")
    parser.add_argument("--model")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default="/tmp/cw/replay_full")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--block-check", action="store_true", help="block-size fidelity only (--scales vs token_scale 1)")
    parser.add_argument("--scales", default="16,4,2", help="token scales compared with 1 by --block-check")
    parser.add_argument("--seeds", type=int, default=1, help="seeds for --block-check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = _events(args.events, Path(tmp))
        config = load_config(args.params, {"events": events, "model": args.model, "out": args.out})
        if args.model is None:
            config = replace(config, policies=tuple(p for p in config.policies if not p.startswith("learned")))
        if args.block_check:
            block_check(config, tuple(int(x) for x in args.scales.split(",")), args.seeds)
            return
        config = replace(config, policies=tuple(dict.fromkeys(("lru", "lru_arrival", *HAND_WRITTEN, *config.policies))))
        fidelity(config)
        speed(config)
        grid = SweepSettings((0.3, 0.7), (32,)) if args.quick else SweepSettings(FULL_FRACS, FULL_CONCURRENCY)
        print(f"\n== sweep: capacity {grid.capacity_fracs} x concurrency {grid.concurrency} ==")
        start = time.perf_counter()
        replay(replace(config, sweep=grid), args.params, sweep=True, progress=True)
        print(f"sweep wall time {time.perf_counter() - start:.0f}s; report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
