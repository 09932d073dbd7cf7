"""The wide session-residency sweep: closed loop and open-loop Poisson arrivals at three loads.

For each concurrency C (default 32 and 64) it runs ``cachewise replay --sweep`` over the
capacities (default 25/50/75/100% of the peak live working set) and seeds, first as a closed
loop (every session submitted at t=0), then with Poisson session arrivals at the offered
loads ``rho`` (default 0.5, 0.8, 1.0). A load is defined against the closed loop's
infinite-cache run at the same C: ``rate = rho * C / S`` sessions/s, ``S`` the mean
session service time (admission to last response) with unlimited KV memory, i.e. ``rho = 1``
offers as many sessions per second as C slots serve when memory is no constraint. JCT is
measured from each session's submission (its arrival under Poisson). Each workload's
report is written under ``--out/<workload>_c<C>/``; all rows together, with a ``workload``
column, to ``--out/results.csv``; the residency table of each workload is printed
(:func:`cachewise.replay.residency_report.residency_table`).

Policies: ``--policies`` plus ``capN`` of ``--admission-caps``. Sized for a machine with
cores to spare (a full run is hours on 2 cores); ``--seeds``, ``--capacities`` and
``--loads`` trim it.

Run: ``python tests/benchmarks/bench_residency_sweep.py [--concurrency 32,64] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cachewise.replay.cli import replay
from cachewise.replay.config import SweepSettings, load_config
from cachewise.replay.report import markdown_table
from cachewise.replay.residency_policies import cap_policies
from cachewise.replay.residency_report import residency_table

POLICIES = "lru,lru_arrival,learned,continuum,cachewise_nomodel,cachewise,infinite"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--admission-caps", default="4,8,12,16,24")
    parser.add_argument("--concurrency", default="32,64")
    parser.add_argument("--capacities", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--loads", default="0.5,0.8,1.0", help="offered loads rho (module doc); empty: closed loop only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-sessions", type=int, default=48)
    parser.add_argument("--out", default="data/residency_sweep")
    args = parser.parse_args()
    policies = (*(p for p in args.policies.split(",") if p), *cap_policies(args.admission_caps))
    fracs = _floats(args.capacities)
    base = load_config(args.params, {"policies": policies, "max_sessions": args.max_sessions, "seeds": args.seeds,
                                     "workers": args.workers})  # fmt: skip
    out = Path(args.out)
    frames = []
    for conc in (int(c) for c in args.concurrency.split(",")):
        closed = None
        for name, rho in [("closed", None), *((f"poisson{rho:g}", rho) for rho in _floats(args.loads))]:
            rate = None
            if rho is not None and closed is not None:
                rate = rho * conc / float(closed.loc[closed["policy"] == "infinite", "service_s_mean"].mean())
            config = replace(base, concurrency=conc, capacity_frac=fracs[0], arrival_rate=rate,
                             out=str(out / f"{name}_c{conc}"), sweep=SweepSettings(fracs, (conc,)))  # fmt: skip
            replay(config, args.params, sweep=True, progress=True)
            results = pd.read_csv(Path(config.out) / "results.csv")
            results.insert(0, "workload", name)
            if rate is None:
                closed = results
            frames.append(results)
            label = "closed loop, all submitted at t=0" if rate is None else f"Poisson {rate:.4g} sessions/s ({name})"
            print(f"\n## {label}, C={conc}\n")
            print(markdown_table(residency_table(results, conc).T))
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(out / "results.csv", index=False)
    print(f"\nall rows: {out / 'results.csv'}")


if __name__ == "__main__":
    main()
