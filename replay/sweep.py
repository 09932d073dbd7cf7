"""Run every policy over a grid of seeds, KV capacities and concurrencies; results as one table.

One row per (seed, concurrency, capacity fraction, policy) with the columns of
:meth:`cachewise.replay.runner.Replayer.run` plus ``seed``. Each seed has its own
:class:`~cachewise.replay.runner.Replayer` (its own sample of sessions, their order
and token ids); every policy runs on every seed, so comparisons can be paired. The infinite
cache does not depend on the capacity: it runs once per (seed, concurrency) and its row is
repeated at every fraction.

With ``workers > 1`` seeds run in parallel in forked worker processes (each replay is
single-threaded and deterministic, so results do not depend on ``workers``); rows come back
in seed order.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import pandas as pd
from tqdm import tqdm

from cachewise.replay.driver import ArrivalParams
from cachewise.replay.runner import Replayer, RunSpec


@dataclass(frozen=True)
class _Job:
    replayer_for: Callable[[int], Replayer]
    grid: list[tuple[str, float, int]]
    arrivals: ArrivalParams


_job: _Job | None = None  # set before forking: what a worker runs (inherited, never pickled)


def _run_seed(seed: int, bar: tqdm | None = None) -> list[dict]:
    assert _job is not None
    replayer = _job.replayer_for(seed)
    rows = []
    for policy, frac, conc in _job.grid:
        if bar is not None:
            bar.set_postfix_str(f"seed={seed} c={conc} cap={frac:g} {policy}")
        spec = RunSpec(policy, frac, replace(_job.arrivals, concurrency=conc, seed=seed))
        rows.append({"seed": seed, **replayer.run(spec)})
        if bar is not None:
            bar.update()
    return rows


def run_grid(
    replayer_for: Callable[[int], Replayer],
    seeds: tuple[int, ...],
    policies: tuple[str, ...],
    capacity_fracs: tuple[float, ...],
    concurrencies: tuple[int, ...],
    arrivals: ArrivalParams,
    progress: bool = True,
    workers: int = 1,
) -> pd.DataFrame:
    """Results of every policy at every (seed, concurrency, capacity fraction), in that order.

    ``replayer_for(seed)`` builds the seed's replayer (once per seed, in the process running it).
    """
    global _job
    grid = [
        (policy, frac, conc)
        for conc in sorted(set(concurrencies))
        for frac in sorted(set(capacity_fracs))
        for policy in policies
    ]
    _job = _Job(replayer_for, grid, arrivals)
    rows: list[dict] = []
    try:
        if workers <= 1 or len(seeds) <= 1:
            with tqdm(total=len(seeds) * len(grid), desc="replay runs", unit="run", disable=not progress) as bar:
                for seed in seeds:
                    rows += _run_seed(seed, bar)
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(seeds)), mp_context=context) as pool:
                futures = [pool.submit(_run_seed, seed) for seed in seeds]
                desc = f"replay seeds ({len(grid)} runs each, {workers} workers)"
                with tqdm(total=len(seeds), desc=desc, unit="seed", disable=not progress) as bar:
                    for future in futures:
                        rows += future.result()
                        bar.update()
    finally:
        _job = None
    return pd.DataFrame(rows)
