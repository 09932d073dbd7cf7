"""``cachewise agents``: replay recorded agent sessions as real clients of an OpenAI-compatible server.

The sessions are the ones ``cachewise replay`` serves with the same settings (``replay:``
section of ``params.yaml``, overridable here: split, sample size, seed, token scale), so a
live run and a replay can be compared call for call. Prints a table, writes the JSON report
(:class:`~cachewise.loadgen.client.AgentsReport`) atomically; Ctrl-C stops the agents and
writes what was measured so far (exit status 130).

Example (a server started as in README "Serving with vLLM")::

    cachewise agents --url http://127.0.0.1:8000 --max-sessions 8 --concurrency 4 --time-scale 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from cachewise.data.schema import SchemaError
from cachewise.features.params import ParamsError
from cachewise.loadgen.client import AgentsConfig, AgentsReport, run_agents
from cachewise.replay.cli import replayed_workload
from cachewise.replay.config import ReplayConfigError, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (without /v1)")
    parser.add_argument("--model", help="model name to request (default: the server's first)")
    parser.add_argument("--params", default="params.yaml", help="params file with a replay: section")
    parser.add_argument("--events", help="events table (default: replay.events)")
    parser.add_argument("--split", choices=("test", "all"), help="held-out tasks only (test) or every session")
    parser.add_argument("--max-sessions", type=int, default=8, help="number of sessions (seeded sample)")
    parser.add_argument("--seed", type=int, help="seed of the session sample (default: replay.seed)")
    parser.add_argument("--token-scale", type=int, help="trace tokens per sent token (default: replay.workload)")
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=96000,
        help="cut each thread before its first call with a longer recorded prompt (trace tokens)",
    )  # fmt: skip
    parser.add_argument("--max-gap-s", type=float, help="cap on recorded idle times (s, before --time-scale)")
    parser.add_argument("--concurrency", type=int, default=4, help="agents running at once")
    parser.add_argument("--time-scale", type=float, default=1.0, help="recorded tool time is slept times this")
    parser.add_argument("--no-hints", action="store_true", help="send no CacheWise hints")
    parser.add_argument(
        "--no-vllm-extras", action="store_true", help="plain OpenAI requests (no ignore_eos, no vllm_xargs)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    parser.add_argument("--out", default="data/agents/report.json", help="JSON report path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _main(args: argparse.Namespace, config: AgentsConfig, workload) -> AgentsReport:  # noqa: ANN001
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # not the main thread / platform without signals
        pass
    return await run_agents(workload, config, stop=stop, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cachewise agents``; returns the exit status."""
    overrides = {
        "events": args.events, "split": args.split, "max_sessions": args.max_sessions, "seed": args.seed,
        "token_scale": args.token_scale, "max_prompt_tokens": args.max_prompt_tokens, "max_gap_s": args.max_gap_s,
    }  # fmt: skip
    try:
        replay_config = load_config(args.params, overrides)
        workload, _ = replayed_workload(replay_config, args.params, replay_config.seed)
        config = AgentsConfig(
            base_url=args.url, model=args.model, concurrency=args.concurrency, time_scale=args.time_scale,
            hints=not args.no_hints, vllm_extras=not args.no_vllm_extras, request_timeout_s=args.timeout,
            seed=replay_config.seed,
        )  # fmt: skip
    except (ReplayConfigError, SchemaError, ParamsError, OSError, ValueError) as exc:
        print(f"cachewise agents: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_main(args, config, workload))
    except Exception as exc:  # noqa: BLE001 - e.g. the server is unreachable before the first call
        print(f"cachewise agents: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    path = report.write(Path(args.out))
    print(f"report: {path}")
    return 130 if report.interrupted else 0
