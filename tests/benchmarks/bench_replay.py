"""Replay benchmark: the full capacity x concurrency sweep, and the harness's own figures.

Prints, for the events table given (default: ingest ../shared/traces/claude-code into a
temporary file):

* token-scale fidelity: LRU and recorded_gap at one point with ``token_scale`` 16 and 4 on the
  same sessions; harmful evictions in trace tokens (blocks x tokens per block), hit rate and
  mean session time, with their relative difference;
* replay speed: LLM calls replayed per second and vLLM steps per second, per policy;
* the full sweep (capacity fractions 0.1 ... 1.0 x concurrency 8, 16, 32, 48, every policy of
  ``replay.policies`` plus the hand-written orders and the ablations the ``evaluate`` stage leaves
  out for time, :data:`HAND_WRITTEN` and :data:`ABLATIONS`), written like ``cachewise replay
  --sweep`` (results.csv, plots, report.md) under ``--out``, and its headline tables.

* with ``--block-check``: block-size fidelity instead. vLLM's blocks are 16 tokens; the replay's
  are 16 replay tokens = 256 trace tokens at ``token_scale`` 16. On a subset (8 sessions,
  4 concurrent, sample seeds ``--seeds``) each policy's harmful evictions (trace tokens) and mean
  JCT relative to ``lru_arrival`` are measured at 25/50/75% capacity at each of ``--scales``
  (default 16) and at token_scale 1 (real 16-token blocks). token_scale 1 costs ~25x, so its
  results are kept in ``--reference`` (JSON; default ``block_check_scale1.json`` beside this file,
  measured on ../shared/traces/claude-code, keyed by the events' SHA-256 and the settings) and
  replayed only for seeds it lacks. It prints,
  per capacity and policy, each ratio at token_scale 1 and at the scale, how far it moved, and
  the mean per-seed move with its 95% interval; the largest |mean| + half-width against 5%; and
  the noise floor: the same figures for the scale against itself with every step time 0.1%
  longer, over ``--floor-seeds`` seeds (a closed loop that a 0.1% slower GPU changes by x%
  cannot resolve x%; token ids are no floor: another token-id seed gives the identical run).
  ``--replay-blocks 16,1`` also runs 1-token replay blocks (16 trace tokens at scale 16: the
  block structure of token_scale 1 exactly, so what moves then is timing, not granularity).

Run: ``python tests/benchmarks/bench_replay.py [--events PATH] [--model DIR] [--out DIR] [--quick]
[--block-check [--scales 16] [--seeds N] [--reference PATH] [--replay-blocks 16,1]]``
(``--quick``: 2 capacities x 1 concurrency, for a smoke check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from cachewise.data.ingest import load_sources
from cachewise.data.schema import read_events, write_events
from cachewise.replay.cli import replay
from cachewise.replay.config import SweepSettings, load_config
from cachewise.replay.costmodel import DECODE_KEYS, PREFILL_KEYS, load_cost_model
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer, RunSpec
from cachewise.replay.selection import select_sessions
from cachewise.replay.stats import interval
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


def _replayer(config, token_scale: int, n_sessions: int, step_time_factor: float = 1.0) -> Replayer:
    """A replayer of ``n_sessions`` sessions (sample ``config.seed``) at ``token_scale``; every step
    time multiplied by ``step_time_factor`` (1.001: the block check's timing perturbation)."""
    events = read_events(config.events)
    chosen = select_sessions(events, "all", n_sessions, config.seed)
    workload = build_workload(events, replace(config.workload, token_scale=token_scale), chosen.sessions)
    cost = load_cost_model(config.cost_coefficients, config.model_shape)
    if step_time_factor != 1.0:
        cost = replace(cost, **{k: getattr(cost, k) * step_time_factor for k in (*PREFILL_KEYS, *DECODE_KEYS)})
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


BLOCK_CHECK = {"policies": ("lru", "lru_arrival", "per_tool_mean", "heuristic"), "fracs": (0.25, 0.5, 0.75),
               "sessions": 8, "concurrency": 4}
"""The block check's subset: no model needed (scale fidelity of the engine and the workload)."""
PERTURBED = 1.001
"""Step-time factor of the noise-floor runs: a 0.1% slower GPU, which no result should hinge on."""


def _check_rows(config, scale: int, seed: int, factor: float = 1.0) -> list[dict]:
    """Harmful evictions (trace tokens), recomputed tokens, hit rate and mean JCT of every block-check
    policy and capacity, on sample ``seed`` at ``scale`` (step times x ``factor``)."""
    rep = _replayer(replace(config, seed=seed), scale, BLOCK_CHECK["sessions"], factor)
    arrivals = config.arrivals(BLOCK_CHECK["concurrency"])
    rows = []
    for frac in BLOCK_CHECK["fracs"]:
        for policy in BLOCK_CHECK["policies"]:
            r = rep.run(RunSpec(policy, frac, arrivals))
            rows.append({"scale": scale, "factor": factor, "seed": seed, "capacity_frac": frac, "policy": policy,
                         "harmful_tokens": r["harmful_evictions"] * r["block_tokens"], "jct_s_mean": r["jct_s_mean"],
                         "recomputed_tokens": r["recomputed_tokens"], "hit_rate": r["hit_rate"]})
    return rows


def _reference(config, path: Path, seeds: range) -> tuple[list[dict], dict[int, float]]:
    """token_scale-1 rows of ``seeds``: read from ``path`` where it holds them for the same settings,
    the missing seeds replayed (the costly part, ~15 min per seed here) and ``path`` rewritten after each."""
    events_sha256 = hashlib.sha256(Path(config.events).read_bytes()).hexdigest()  # ingest output is deterministic
    settings = {"events_sha256": events_sha256, "workload": asdict(config.workload) | {"token_scale": 1},
                "engine": asdict(config.engine), "cost": config.cost_coefficients, **BLOCK_CHECK}
    settings = json.loads(json.dumps(settings))
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "rows": [], "cpu_s": {}}
    for seed in seeds:
        if str(seed) in doc["cpu_s"]:
            continue
        start = time.process_time()
        doc["rows"] += _check_rows(config, 1, seed)
        doc["cpu_s"][str(seed)] = time.process_time() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)
        print(f"token_scale 1, seed {seed}: {doc['cpu_s'][str(seed)]:.0f} CPU-s (stored in {path})", flush=True)
    return [r for r in doc["rows"] if r["seed"] in seeds], {int(k): v for k, v in doc["cpu_s"].items() if int(k) in seeds}


def _ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row's harmful evictions and mean JCT over lru_arrival's at the same seed and capacity."""
    key = ["seed", "capacity_frac"]
    base = frame.loc[frame["policy"] == "lru_arrival", [*key, "harmful_tokens", "jct_s_mean"]]
    out = frame.merge(base, on=key, suffixes=("", "_base"))
    out["harmful"] = out["harmful_tokens"] / out["harmful_tokens_base"].clip(lower=1)
    out["jct"] = out["jct_s_mean"] / out["jct_s_mean_base"]
    return out[["capacity_frac", "policy", "seed", "harmful", "jct"]]


def _ratio_moves(rows: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Per capacity, policy and seed: each ratio to lru_arrival in ``rows`` over the same ratio in ``base``, minus 1."""
    moved = _ratios(rows).merge(_ratios(base), on=["capacity_frac", "policy", "seed"], suffixes=("", "_1"))
    for m in ("harmful", "jct"):
        moved[f"{m}_move"] = moved[m] / moved[f"{m}_1"] - 1
    return moved


def _print_moves(label: str, moves: pd.DataFrame, tolerance: float) -> float:
    """Per capacity and policy: the ratio's per-seed moves, their mean with a 95% interval, and the move
    of the ratio of means; returns the largest |mean move| + half-width (what the seeds cannot exclude)."""
    worst = 0.0
    for (frac, policy), part in moves[moves["policy"] != "lru_arrival"].groupby(["capacity_frac", "policy"], sort=False):
        cells = []
        for m in ("harmful", "jct"):
            mean, half = interval(part[f"{m}_move"])
            at_1, at_s = part[f"{m}_1"].mean(), part[m].mean()
            worst = max(worst, abs(mean) + (0 if math.isnan(half) else half))
            cells.append(f"{m} {at_1:5.3f}->{at_s:5.3f} {at_s / at_1 - 1:+6.1%} (per seed {mean:+6.1%} ± {half:5.1%})")
        print(f"{label}  cap {frac:.2f} {policy:13s} " + "   ".join(cells))
    verdict = "within" if worst <= tolerance else "NOT within"
    moved = moves[moves["policy"] != "lru_arrival"]
    spread = ", ".join(f"{m} {moved[f'{m}_move'].abs().mean():.1%}" for m in ("harmful", "jct"))
    print(f"{label}: largest |mean move| + 95% half-width {worst:.1%}: {verdict} {tolerance:.0%};"
          f" mean |per-seed move| over all cells: {spread}\n")
    return worst


def block_check(
    config, scales: tuple[int, ...], blocks: tuple[int, ...], seeds: range, reference: Path, floor: bool = True,
    floor_seeds: int = 0, tolerance: float = 0.05,
) -> None:
    """Each block-check policy's ratios to lru_arrival at each of ``scales`` x replay ``blocks`` against
    token_scale 1 (module doc), and the noise floor over ``floor_seeds`` seeds (at least ``seeds``): the same
    scale with step times x :data:`PERTURBED`."""
    base, ref_cpu = _reference(config, reference, seeds)
    base = pd.DataFrame(base)
    n, c = BLOCK_CHECK["sessions"], BLOCK_CHECK["concurrency"]
    print(f"\n== block-size fidelity ({n} sessions, concurrency {c}, seeds {seeds.start}-{seeds.stop - 1}):"
          " move of each policy / lru_arrival ratio (harmful evictions in trace tokens, mean JCT) ==")
    print("'r1->rs +a%': the seeds' mean ratio at token_scale 1 and at the scale, moved by a%;"
          " 'per seed m ± h': the mean of the per-seed moves with its 95% interval")
    floor_seeds = range(seeds.start, seeds.start + max(floor_seeds, len(seeds)))
    for scale, block in ((s, b) for s in scales for b in blocks):
        shape = replace(config, engine=replace(config.engine, block_size=block))
        label = f"scale {scale} (block {block * scale} trace tokens)"
        start = time.process_time()
        plain = pd.DataFrame([r for s in (floor_seeds if floor else seeds) for r in _check_rows(shape, scale, s)])
        cpu = (time.process_time() - start) / len(floor_seeds if floor else seeds)
        _print_moves(f"{label} vs 1", _ratio_moves(plain, base), tolerance)  # the reference's seeds only
        ref = sum(ref_cpu.values()) / len(ref_cpu)
        print(f"{label}: {cpu:.0f} CPU-s per seed, {cpu / ref:.3f}x of token_scale 1 ({ref:.0f} CPU-s per seed)\n", flush=True)
        if floor:
            perturbed = pd.DataFrame([r for s in floor_seeds for r in _check_rows(shape, scale, s, PERTURBED)])
            _print_moves(f"noise floor ({len(floor_seeds)} seeds): {label}, step times x{PERTURBED} vs x1",
                         _ratio_moves(perturbed, plain), tolerance)


HAND_WRITTEN = ("per_tool_mean", "ttl", "heuristic")
"""Every hand-written eviction order: the sweep's "best hand-written" is chosen among all of them."""

ABLATIONS = ("learned_nohints",)
"""Learned policies the ``evaluate`` stage leaves out for time (dropped, as every learned one, without ``--model``)."""


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
            f" ({r['policy_overhead_pct']:.3f}% of the replayed GPU time at real scale)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events")
    parser.add_argument("--model")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default="/tmp/cw/replay_full")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--block-check", action="store_true", help="block-size fidelity only (--scales vs token_scale 1)")
    parser.add_argument("--scales", default="16", help="token scales compared with 1 by --block-check")
    parser.add_argument("--no-floor", action="store_true", help="--block-check without the noise-floor runs")
    parser.add_argument("--floor-seeds", type=int, default=0, help="seeds of the noise floor (default: --seeds)")
    parser.add_argument("--replay-blocks", default="16", help="replay block sizes (replay tokens) tried at each scale")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (session samples) for --block-check")
    parser.add_argument("--reference", default=str(REPO / "tests" / "benchmarks" / "block_check_scale1.json"),
                        help="--block-check's token_scale-1 results: read when present for the same settings, else written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = _events(args.events, Path(tmp))
        config = load_config(args.params, {"events": events, "model": args.model, "out": args.out})
        config = replace(config, policies=tuple(dict.fromkeys(("lru", "lru_arrival", *HAND_WRITTEN, *config.policies, *ABLATIONS))))
        if args.model is None:
            config = replace(config, policies=tuple(p for p in config.policies if not p.startswith("learned")))
        if args.block_check:
            scales = tuple(int(x) for x in args.scales.split(",") if x)
            blocks = tuple(int(x) for x in args.replay_blocks.split(","))
            block_check(config, scales, blocks, range(config.seed, config.seed + args.seeds), Path(args.reference),
                        not args.no_floor, args.floor_seeds)
            return
        fidelity(config)
        speed(config)
        grid = SweepSettings((0.3, 0.7), (32,)) if args.quick else SweepSettings(FULL_FRACS, FULL_CONCURRENCY)
        print(f"\n== sweep: capacity {grid.capacity_fracs} x concurrency {grid.concurrency} ==")
        start = time.perf_counter()
        replay(replace(config, sweep=grid), args.params, sweep=True, progress=True)
        print(f"sweep wall time {time.perf_counter() - start:.0f}s; report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
