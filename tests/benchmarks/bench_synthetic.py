"""Synthetic generator speed: events streamed directly vs transcripts written then ingested.

Both paths give the same rows for a seed (tests/test_synthetic.py). Prints LLM calls per
second of this process's CPU time (one core: what the generator itself costs, independent of
other load on a shared machine) and of wall time. Run (nice: the machine is shared)::

    nice python tests/benchmarks/bench_synthetic.py [--sessions 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus, generate_events


def _timed(name: str, run: Callable[[], int]) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    calls = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:<34} {calls:>8} calls  {calls / cpu:>8,.0f} calls/s CPU  {calls / wall:>8,.0f} calls/s wall")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    _timed("generate_events (streamed rows)", lambda: sum(t.num_rows for t in generate_events(args.seed, args.sessions)))
    with tempfile.TemporaryDirectory() as tmp:

        def via_transcripts() -> int:
            generate_corpus(Path(tmp) / "corpus", args.seed, args.sessions)
            return len(load_sources([Path(tmp) / "corpus"])[0])

        _timed("generate_corpus + ingest (JSON)", via_transcripts)


if __name__ == "__main__":
    main()
