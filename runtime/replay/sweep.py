"""Run every policy over a grid of KV capacities and concurrencies; results as one table.

One row per (concurrency, capacity fraction, policy) with the columns of
:meth:`cachewise.runtime.replay.runner.Replayer.run`. The infinite cache does not depend
on the capacity: it runs once per concurrency and its row is repeated at every fraction.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from tqdm import tqdm

from cachewise.runtime.replay.driver import ArrivalParams
from cachewise.runtime.replay.runner import Replayer, RunSpec


def run_grid(
    replayer: Replayer,
    policies: tuple[str, ...],
    capacity_fracs: tuple[float, ...],
    concurrencies: tuple[int, ...],
    arrivals: ArrivalParams,
    progress: bool = True,
) -> pd.DataFrame:
    """Results of every policy at every (concurrency, capacity fraction), in that order."""
    specs = [
        RunSpec(policy, frac, replace(arrivals, concurrency=conc))
        for conc in sorted(set(concurrencies))
        for frac in sorted(set(capacity_fracs))
        for policy in policies
    ]
    rows = []
    with tqdm(specs, desc="replay runs", unit="run", disable=not progress) as bar:
        for spec in bar:
            bar.set_postfix_str(f"c={spec.arrivals.concurrency} cap={spec.capacity_frac:g} {spec.policy}")
            rows.append(replayer.run(spec))
    return pd.DataFrame(rows)
