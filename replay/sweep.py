"""Run every policy over a grid of seeds, KV capacities and concurrencies; results as one table.

One row per (seed, concurrency, capacity fraction, policy) with the columns of
:meth:`cachewise.replay.runner.Replayer.run` plus ``seed``. Each seed has its own
:class:`~cachewise.replay.runner.Replayer` (its own sample of sessions, their order
and token ids); every policy runs on every seed, so comparisons can be paired. The infinite
cache does not depend on the capacity: it runs once per (seed, concurrency) and its row is
repeated at every fraction.

Work is split into *parts*: one (seed, concurrency, capacity fraction) with every policy. With
``workers > 1`` parts run in parallel in forked worker processes (each replay is
single-threaded and deterministic, and a run depends only on its seed and spec, so results do
not depend on ``workers`` or on which process ran a part); rows come back in seed order, then
grid order. Parts, not whole seeds, keep both cores busy to the end (5 seeds on 2 workers
would leave one idle for a whole seed). Each process builds a seed's replayer once and keeps it
(with its cached infinite-cache run); a seed whose parts ran in two processes runs its
infinite-cache reference in both, at most one extra run per process and seed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace

import pandas as pd
from tqdm import tqdm

from cachewise.replay.driver import ArrivalParams
from cachewise.replay.runner import Replayer, RunSpec


@dataclass(frozen=True)
class _Job:
    replayer_for: Callable[[int], Replayer]
    arrivals: ArrivalParams


_job: _Job | None = None  # set before forking: what a worker runs (inherited, never pickled)
_replayers: dict[int, Replayer] = {}  # this process's replayer of each seed it ran (emptied by run_grid)


def _run_part(seed: int, part: list[tuple[str, float, int]], bar: tqdm | None = None) -> list[dict]:
    assert _job is not None
    if seed not in _replayers:
        _replayers[seed] = _job.replayer_for(seed)
    replayer = _replayers[seed]
    rows = []
    for policy, frac, conc in part:
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
    parts = [
        [(policy, frac, conc) for policy in policies]
        for conc in sorted(set(concurrencies))
        for frac in sorted(set(capacity_fracs))
    ]
    work = [(seed, part) for seed in seeds for part in parts]
    _job = _Job(replayer_for, arrivals)
    _replayers.clear()
    rows: list[dict] = []
    total = sum(len(part) for _, part in work)
    try:
        if workers <= 1 or len(work) <= 1:
            with tqdm(total=total, desc="replay runs", unit="run", disable=not progress) as bar:
                for seed, part in work:
                    rows += _run_part(seed, part, bar)
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(work)), mp_context=context) as pool:
                futures = {pool.submit(_run_part, seed, part): len(part) for seed, part in work}
                desc = f"replay runs ({len(seeds)} seeds, {workers} workers)"
                with tqdm(total=total, desc=desc, unit="run", disable=not progress) as bar:
                    for future in as_completed(futures):
                        bar.update(futures[future])
                rows = [row for future in futures for row in future.result()]
    finally:
        _job = None
        _replayers.clear()
    return pd.DataFrame(rows)
