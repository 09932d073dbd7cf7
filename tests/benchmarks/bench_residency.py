"""Per-step cost of the residency controller, against the number of sessions the engine knows.

For each size S, builds a :class:`~cachewise.runtime.sessions.SessionView` with S sessions
(a third idle and resident with a forecast, a third running, a third waiting, each with a
main thread of 200-2000 blocks and a 50-block system prompt shared by all), then times
:meth:`~cachewise.runtime.residency.ResidencyController.plan` (the work the scheduler adds
to every ``schedule()`` call while a request waits) over ``--steps`` steps, the clock
advancing 20 ms a step. Prints CPU microseconds per step (process time, so that other jobs
on a shared machine do not inflate it; median and p99) and per session, next to 10 ms, a
small decode step on an H200 (the controller's target is < 1% of step time), and the
median wall time.

Run: ``python tests/benchmarks/bench_residency.py [--sizes 32,128,512] [--steps 200]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.residency import ResidencyController
from cachewise.runtime.sessions import Forecast, SessionView

BLOCK = 16


def build(sessions: int, seed: int = 0) -> SessionView:
    rng = np.random.default_rng(seed)
    view = SessionView(BLOCK)
    shared = [f"sys{i}".encode() for i in range(50)]
    for i in range(sessions):
        key, kind = f"S{i}", i % 3
        blocks = int(rng.integers(200, 2000))
        view.on_arrival(f"{key}.0", key, "main", blocks * BLOCK, 0.0)
        view.on_scheduled(f"{key}.0")
        view.on_forecast(f"{key}.0", key, "main", Forecast.from_samples(np.sort(rng.exponential(20.0, 50))))
        view.on_finished(f"{key}.0", blocks * BLOCK, shared + [f"{key}.{b}".encode() for b in range(blocks)], 0.0)
        view.set_residency(key, kind != 2)
        if kind == 1:
            view.on_arrival(f"{key}.1", key, "main", (blocks + 20) * BLOCK, 0.0)
            view.on_scheduled(f"{key}.1")
        elif kind == 2:
            view.on_arrival(f"{key}.1", key, "main", (blocks + 20) * BLOCK, 0.0)
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128,512")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"{'sessions':>9} {'CPU us/step p50':>16} {'p99':>9} {'us/session':>11} {'% of 10 ms':>11} {'wall us p50':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        view = build(size)
        total = sum(view.working_set(s.key) for s in view)
        controller = ResidencyController(ResidencySettings(max_wait_s=1e9, max_passes=10**9), int(total * 0.5), 256)
        cpu, wall = [], []
        for step in range(args.steps):
            start, start_wall = time.process_time_ns(), time.perf_counter_ns()
            controller.plan(view, 1.0 + 0.02 * step, running=size // 3)
            cpu.append(time.process_time_ns() - start)
            wall.append(time.perf_counter_ns() - start_wall)
        us = np.array(cpu) / 1e3
        p50 = float(np.median(us))
        print(
            f"{size:>9} {p50:>16.1f} {np.percentile(us, 99):>9.1f} {p50 / size:>11.2f} {p50 / 100:>10.2f}%"
            f" {np.median(wall) / 1e3:>12.1f}"
        )


if __name__ == "__main__":
    main()
