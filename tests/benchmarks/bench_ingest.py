"""Ingest throughput: MB/s of compressed and uncompressed input, LLM calls/s.

Prints figures for each real source under ../shared/traces (when present) and for the embedded
synthetic corpus (generation time included separately). Run:
``python tests/benchmarks/bench_ingest.py [--sessions 120] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cachewise.data.ingest import discover, load_sources
from cachewise.data.jsonl import open_binary
from cachewise.data.report import IngestReport
from cachewise.data.synthetic import generate_corpus

SHARED_TRACES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "traces").resolve()


def _sizes(source: Path) -> tuple[int, int]:
    """(on-disk bytes, decompressed bytes) of the trace files under ``source``."""
    disk = raw = 0
    for tf in discover([source], IngestReport()):
        disk += tf.path.stat().st_size
        with open_binary(tf.path) as f:
            raw += sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    return disk, raw


def bench(name: str, source: Path, repeat: int) -> None:
    disk, raw = _sizes(source)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        df, report = load_sources([source])
        best = min(best, time.perf_counter() - start)
    mb = 1 << 20
    print(
        f"{name:<14} files={len(report.files):<5} calls={len(df):<6} disk={disk / mb:7.1f} MB raw={raw / mb:7.1f} MB"
        f"  time={best:6.2f}s  {disk / mb / best:6.1f} MB/s disk  {raw / mb / best:6.1f} MB/s raw"
        f"  {len(df) / best:8.0f} calls/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=120, help="synthetic corpus size")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    if SHARED_TRACES.is_dir():
        for sub in ("claude-code", "mooncake", "swe-agent"):
            if (SHARED_TRACES / sub).is_dir():
                bench(sub, SHARED_TRACES / sub, args.repeat)
        bench("all shared", SHARED_TRACES, args.repeat)
    else:
        print(f"real traces not found at {SHARED_TRACES}: shared-corpus figures skipped")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = generate_corpus(Path(tmp) / "synthetic", seed=7, sessions=args.sessions)
        elapsed = time.perf_counter() - start
        print(
            f"synthetic generation: {args.sessions} sessions, {info.calls} calls, {info.files} files"
            f" in {elapsed:.2f}s (SYNTHETIC)"
        )
        bench("synthetic", info.path, args.repeat)


if __name__ == "__main__":
    main()
