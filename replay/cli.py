"""``cachewise replay``: agent sessions through vLLM's real scheduler, one run per policy.

Example::

    cachewise replay --events data/events.parquet \\
        --policies lru,lru_arrival,per_tool_mean,ttl,heuristic,recorded_gap,learned,learned_nohints,infinite \\
        --capacity-frac 0.5 --concurrency 32 --seeds 5 --model models/cachewise-reuse --out data/replay

Settings come from the ``replay:`` section of ``--params`` (see
:mod:`cachewise.replay.config`); flags given on the command line win. Without
``--sweep`` every policy runs at one point (``--capacity-frac``, ``--concurrency``); with it,
over the grid of ``replay.sweep`` plus that point. Each of ``--seeds`` seeds (``seed``,
``seed + 1``, ...) replays its own sample of sessions. The learned policies refuse to run on
tasks the exported model was not held out on (:mod:`cachewise.replay.provenance`)
unless ``--allow-train-tasks``. Writes ``results.csv``, plot tables and
``report.md`` under ``--out`` and prints the headline table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any
from pathlib import Path

from cachewise.data.schema import SchemaError, read_events
from cachewise.features.params import ParamsError, load_section
from cachewise.replay.config import ReplayConfig, ReplayConfigError, load_config
from cachewise.replay.costmodel import CostModelError, load_cost_model
from cachewise.replay.driver import ReplayStuck
from cachewise.replay.engine import EngineParams
from cachewise.replay.host_tier import load_transfer_model
from cachewise.replay.host_tier_policies import HOST_TIER_POLICIES, HostTierSettings
from cachewise.replay.policies import IdleStats, PolicyContext, REGISTRY, learned_factory, needs_model
from cachewise.replay.provenance import ProvenanceError, check_replayable
from cachewise.replay.report import markdown_table, write_report
from cachewise.replay.residency_policies import cap_policies
from cachewise.replay.runner import Replayer
from cachewise.replay.selection import Selection, select_sessions
from cachewise.replay.sweep import run_grid
from cachewise.replay.targets import headline
from cachewise.replay.workload import Workload, build_workload
from cachewise.runtime.config import GUARD_STARTS
from cachewise.scoring.exported import ModelLoadError, load_exported


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the replay's flags to ``parser``."""
    parser.add_argument("--params", default="params.yaml", help="params file with a replay: section")
    parser.add_argument("--events", help="events table (Parquet) to replay")
    parser.add_argument(
        "--policies", help=f"comma-separated policies ({','.join(REGISTRY)})"
    )
    parser.add_argument("--capacity-frac", type=float, help="KV capacity as a fraction of the peak live working set")
    parser.add_argument("--concurrency", type=int, help="sessions served at once")
    parser.add_argument(
        "--arrival-rate", type=float, help="sessions per second (Poisson); default: start when a slot frees"
    )
    parser.add_argument("--model", help="exported model folder or MLflow URI for the learned policy")
    parser.add_argument("--sweep", action="store_true", help="run the capacity x concurrency grid of replay.sweep")
    parser.add_argument("--out", help="output folder (default data/replay)")
    parser.add_argument("--max-sessions", type=int, help="replay at most this many sessions")
    parser.add_argument("--split", choices=("test", "all"), help="replay held-out tasks only (test) or every session")
    parser.add_argument("--token-scale", type=int, help="trace tokens per replay token")
    parser.add_argument("--seed", type=int, help="first seed of session sample, order, token ids and arrivals")
    parser.add_argument("--seeds", type=int, help="number of seeds (independent samples), for intervals")
    parser.add_argument("--workers", type=int, help="processes running the sweep in parallel (parts: one seed, concurrency and capacity each)")
    parser.add_argument(
        "--allow-train-tasks",
        action="store_true",
        default=None,
        help="replay the learned model on tasks it may have been trained on (stated in the report)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--scheduler-cls",
        help="vLLM scheduler class of every run, as vllm serve --scheduler-cls "
        "(e.g. cachewise.runtime.scheduler.PrefixAwareScheduler); a residency policy's own class wins",
    )
    parser.add_argument(
        "--host-kv-frac", type=float, help="host-memory KV tier of the *_offload and cachewise_prefetch policies, in GPU KV capacities (0: none)"
    )
    parser.add_argument(
        "--guard-start",
        choices=GUARD_STARTS,
        help="the guarded policies' start (cachewise.guard.start): certified (the default), lru or learned",
    )
    parser.add_argument(
        "--admission-caps", help="comma-separated fixed admission caps N, added as policies capN (e.g. 4,8,12,16,24)"
    )


def _policies(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--policies`` plus ``capN`` for each N of ``--admission-caps`` (None: the params' list)."""
    listed = tuple(p.strip() for p in args.policies.split(",") if p.strip()) if args.policies else ()
    caps = cap_policies(args.admission_caps) if getattr(args, "admission_caps", None) else ()
    if caps and not listed:
        listed = tuple(load_config(args.params, {}).policies)
    return (*listed, *caps) or None


def _config(args: argparse.Namespace) -> ReplayConfig:
    overrides = {
        "events": args.events,
        "policies": _policies(args),
        "capacity_frac": args.capacity_frac,
        "concurrency": args.concurrency,
        "arrival_rate": args.arrival_rate,
        "model": args.model,
        "out": args.out,
        "max_sessions": args.max_sessions,
        "split": args.split,
        "token_scale": args.token_scale,
        "seed": args.seed,
        "seeds": args.seeds,
        "workers": args.workers,
        "allow_train_tasks": args.allow_train_tasks,
        "scheduler_cls": args.scheduler_cls,
        "host_kv_frac": getattr(args, "host_kv_frac", None),
        "guard_start": getattr(args, "guard_start", None),
    }
    return load_config(args.params, overrides)


def _split_params(params: str) -> dict:
    """``seed``, ``test_fraction``, ``valid_fraction`` of the train section (the held-out split)."""
    train = load_section(params, "train")
    keys = {"seed": "split_seed", "test_fraction": "test_fraction", "valid_fraction": "valid_fraction"}
    return {mine: train[theirs] for theirs, mine in keys.items() if theirs in train}


def _setup_lines(config: ReplayConfig, workload: Workload, engine: EngineParams, model_note: str) -> list[str]:
    """The report's description of how the replay was run (``workload``: the first seed's)."""
    groups = ", ".join((m or "?") + (" (sub-agent)" if side else "") for m, side in workload.prefix_groups)
    overlay = f"Poisson arrivals at {config.arrival_rate:g} sessions/s, " if config.arrival_rate else ""
    return [
        (
            f"Events: `{config.events}`, split `{config.split}`: {len(workload.sessions)} sessions per seed,"
            f" {len(workload.calls)} LLM calls in the first seed's sample (closed loop, recorded tool times)."
        ),
        (
            f"Engine: vLLM v1 `{config.scheduler_cls or 'Scheduler'}` + `KVCacheManager` (real code, CPU, no GPU),"
            f" block = {engine.block_size}"
            f" replay tokens; token_scale {config.workload.token_scale} (one replay token = that many trace"
            f" tokens); at most {engine.max_num_batched_tokens} replay tokens per step (a step stands for"
            f" {config.workload.token_scale} real steps of at most {engine.max_num_batched_tokens} trace tokens)."
        ),
        f"Step times: cost model `{config.model_shape}` from `{config.cost_coefficients}`.",
        (
            f"Overlay: {overlay}all sessions submitted at t=0 unless Poisson, at most N running at once (N per table),"
            " sessions in seeded random order."
        ),
        f"Learned model: {model_note}",
        f"Workload adjustments: {dict(workload.counts) or 'none'}; shared system prompt groups: {groups}.",
    ]


def replayed_workload(config: ReplayConfig, params_path: str, seed: int) -> tuple[Workload, Selection]:
    """The sessions ``config`` replays with ``seed`` (split, sample, order) as a workload; also
    what fits the policies.

    ``cachewise agents`` sends the same sessions to a live server through this function.
    """
    events = read_events(config.events)
    split = _split_params(params_path) if config.split == "test" else {}
    chosen = select_sessions(events, config.split, config.max_sessions, seed, sources=config.sources, **split)
    return build_workload(events, config.workload, chosen.sessions), chosen


def load_learned(config: ReplayConfig, workloads: Iterable[Workload], block_size: int) -> tuple[Any, str]:
    """The learned-predictor factory for ``config``'s policies (None when none needs a model)
    and the report's note on the model, after the provenance check over ``workloads``."""
    if not needs_model(config.policies):
        return None, "not run"
    if config.model is None:
        named = [p for p in config.policies if needs_model((p,))]
        raise ReplayConfigError(f"policies {', '.join(named)} need --model (or replay.model)")
    exported = load_exported(config.model)
    tasks = {p.task_id for w in workloads for p in w.sessions}
    if config.allow_train_tasks:
        note = f"`{config.model}`; provenance check OVERRIDDEN (--allow-train-tasks): it may have seen these tasks."
    else:
        check_replayable(exported.spec, config.model, tasks)
        note = f"`{config.model}`; every replayed task is one its training held out (spec test_tasks)."
    return learned_factory(exported, block_size), note


def make_replayer(
    config: ReplayConfig, workload: Workload, chosen: Selection, engine: EngineParams, learned: Any, seed: int
) -> Replayer:
    """The replayer of ``config``'s policies over one seed's ``workload``."""
    cost = load_cost_model(config.cost_coefficients, config.model_shape)
    ctx = PolicyContext(workload, IdleStats.fit(chosen.fit_events), config.ttl_quantile, learned)
    tier = None
    if any(p in HOST_TIER_POLICIES for p in config.policies):
        tier = HostTierSettings(config.host_kv_frac, load_transfer_model(config.transfer_coefficients))
    return Replayer(
        workload, cost, engine, ctx, seed=seed, residency=config.residency, scheduler_cls=config.scheduler_cls, host_tier=tier,
        guard_start=config.guard_start,
    )


def replay(config: ReplayConfig, params_path: str, sweep: bool, progress: bool) -> Path:
    """Run the replay described by ``config``; returns the report's path."""
    engine = config.engine.for_scale(config.workload.token_scale)
    seeds = tuple(range(config.seed, config.seed + config.seeds))
    sampled = {s: replayed_workload(config, params_path, s) for s in seeds}
    learned, model_note = load_learned(config, (w for w, _ in sampled.values()), engine.block_size)

    def replayer_for(seed: int) -> Replayer:
        return make_replayer(config, *sampled[seed], engine, learned, seed)

    fracs = (config.capacity_frac, *(config.sweep.capacity_fracs if sweep else ()))
    concs = (config.concurrency, *(config.sweep.concurrency if sweep else ()))
    results = run_grid(
        replayer_for, seeds, config.policies, fracs, concs, config.arrivals(), progress, workers=config.workers
    )
    setup = _setup_lines(config, sampled[seeds[0]][0], engine, model_note)
    path = write_report(results, config.out, config.policies, config.concurrency, config.capacity_frac, setup)
    point = headline(results, config.concurrency, config.capacity_frac)
    cols = ["harmful_evictions", "min_harmful_evictions", "hit_rate", "recomputed_tokens", "jct_s_mean", "policy_overhead_pct"]
    print(markdown_table(point.loc[[p for p in config.policies if p in point.index], cols]))
    print(f"report: {path}")
    return path


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cachewise replay``; returns the exit status."""
    try:
        config = _config(args)
        replay(config, args.params, args.sweep, progress=not args.no_progress)
    except (
        ReplayConfigError,
        SchemaError,
        CostModelError,
        ParamsError,
        ModelLoadError,
        ProvenanceError,
        ReplayStuck,
        OSError,
        ValueError,
    ) as exc:
        print(f"cachewise replay: error: {exc}", file=sys.stderr)
        return 2
    return 0
