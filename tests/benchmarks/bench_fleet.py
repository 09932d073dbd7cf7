"""Fleet-scale featurize and train: the local path vs ``train.backend: dask``.

1. Streams a SYNTHETIC corpus of ``--calls`` LLM calls to a folder of Parquet events parts
   (:func:`cachewise.data.synthetic.generate_corpus` in chunks of ``--chunk-sessions``
   sessions, each ingested and written as ``part-NNNNN.parquet``, its transcripts deleted;
   task ids get the chunk number so chunks never share a task). Never more than one chunk
   in memory. Parts already in ``--work`` (same seed) are reused, so a larger run extends
   a smaller one.
2. Runs each path in its own process (so peak memory is that path's):

   * ``local``: read all events, :func:`~cachewise.features.featurize.featurize`, then
     :func:`~cachewise.train.train.train_model`;
   * ``dask``: a ``LocalCluster`` of ``--workers`` worker processes (1 thread each), or the
     cluster at ``--scheduler``: :func:`~cachewise.features.dask_featurize.featurize_on_dask`
     then :func:`~cachewise.train.dask_backend.train_on_dask`.

Prints per path: featurize calls/s, train rows/s (rows of the train part / wall seconds of
the whole train step: split, fit, evaluation), and peak resident memory per process
(``ru_maxrss``: the driver, and every Dask worker). A local run killed by the OOM killer or
raising ``MemoryError`` is reported as out of memory at that size.

Run (nice: the machine is shared)::

    nice python tests/benchmarks/bench_fleet.py --calls 200000
    nice python tests/benchmarks/bench_fleet.py --calls 10000000 --work /big/disk/fleet

Multi-machine: start ``dask scheduler`` on one host and ``dask worker tcp://HOST:8786`` on
each machine (this package installed, ``--work`` on a file system every worker can read),
then pass ``--scheduler tcp://HOST:8786`` here -- or set ``train.dask.scheduler_address`` in
params.yaml for ``dvc repro``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from cachewise.data.ingest import load_sources
from cachewise.data.schema import to_table
from cachewise.data.synthetic import generate_corpus

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_corpus(out: Path, calls: int, chunk_sessions: int, seed: int) -> int:
    """Write at least ``calls`` synthetic calls as events parts under ``out``; the number written."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with tqdm(total=calls, desc="corpus", unit="call") as bar, tempfile.TemporaryDirectory() as tmp:
        chunk = 0
        while written < calls:
            part = out / f"part-{chunk:05d}.parquet"
            if part.exists():  # same seed, same chunk: reuse (a larger run extends a smaller one)
                rows = pq.read_metadata(part).num_rows
            else:
                info = generate_corpus(Path(tmp) / "c", seed + chunk, chunk_sessions)
                events, _ = load_sources([info.path])
                events["task_id"] = f"c{chunk:05d}/" + events["task_id"]
                events["src_file"] = f"c{chunk:05d}/" + events["src_file"]
                pq.write_table(to_table(events), part)
                shutil.rmtree(info.path)
                rows = len(events)
            written += rows
            bar.update(rows)
            chunk += 1
        for extra in out.glob("part-*.parquet"):  # parts of a larger earlier run are not part of this one
            if int(extra.stem.split("-")[1]) >= chunk:
                extra.unlink()
    return written


def run_local(events_dir: Path, horizon: float, tparams: dict) -> dict:
    from cachewise.features.featurize import featurize
    from cachewise.train.train import train_model

    events = pq.read_table(events_dir).to_pandas()
    t0 = time.perf_counter()
    table = featurize(events, horizon)
    t1 = time.perf_counter()
    del events
    result = train_model(table.frame, {}, tparams, horizon, "bench")
    t2 = time.perf_counter()
    return {
        "calls": len(table.frame),
        "featurize_calls_per_s": len(table.frame) / (t1 - t0),
        "train_rows": result.metrics["split"]["train_rows"],
        "train_rows_per_s": result.metrics["split"]["train_rows"] / (t2 - t1),
        "pairwise_accuracy": result.metrics["model"]["pairwise_accuracy"],
        "peak_mb": {"driver": _peak_mb()},
    }


def _worker_peaks(client) -> dict[str, float]:
    return {addr: kb / 1024 for addr, kb in client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).items()}


def run_dask(events_dir: Path, horizon: float, tparams: dict, workers: int, scheduler: str | None, work: Path) -> dict:
    from distributed import Client, LocalCluster

    from cachewise.features.dask_featurize import featurize_on_dask
    from cachewise.train.dask_backend import train_on_dask

    features = work / "features"
    out: dict = {"peak_mb": {}}
    for step in ("featurize", "train"):
        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
        address = scheduler or cluster.scheduler_address
        with Client(address) as client:
            t0 = time.perf_counter()
            if step == "featurize":
                parts = int(tparams.get("dask", {}).get("partitions", 8))
                summary = featurize_on_dask(events_dir, features, "bench", horizon, max(parts, 2 * workers))
                out["calls"] = int(summary["rows"].sum())
                out["featurize_calls_per_s"] = out["calls"] / (time.perf_counter() - t0)
            else:
                settings = {**tparams, "dask": {**tparams.get("dask", {}), "scheduler_address": address}}
                result = train_on_dask(features, {}, settings, horizon, "bench")
                out["train_rows"] = result.metrics["split"]["train_rows"]
                out["train_rows_per_s"] = out["train_rows"] / (time.perf_counter() - t0)
                out["pairwise_accuracy"] = result.metrics["model"]["pairwise_accuracy"]
            out["workers"] = len(client.scheduler_info(n_workers=-1)["workers"])
            out["peak_mb"][f"{step} workers"] = sorted(round(v) for v in _worker_peaks(client).values())
        if cluster is not None:
            cluster.close()
    out["peak_mb"]["driver"] = _peak_mb()
    return out


def _phase(args: argparse.Namespace) -> int:
    params = yaml.safe_load(PARAMS.read_text())
    horizon, tparams = float(params["features"]["horizon_s"]), params["train"]
    events = Path(args.work) / "events"
    try:
        if args.phase == "local":
            res = run_local(events, horizon, tparams)
        else:
            res = run_dask(events, horizon, tparams, args.workers, args.scheduler, Path(args.work))
    except MemoryError:
        res = {"out_of_memory": True}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--chunk-sessions", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None, help="tcp://HOST:8786 of a running Dask cluster (default: LocalCluster)")
    ap.add_argument("--work", default=None, help="folder for the corpus and features (default: a temp folder)")
    ap.add_argument("--paths", default="local,dask")
    ap.add_argument("--phase", choices=["local", "dask"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return _phase(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fleet-"))
    t0 = time.perf_counter()
    n = stream_corpus(work / "events", args.calls, args.chunk_sessions, args.seed)
    size = sum(p.stat().st_size for p in (work / "events").glob("*.parquet")) / 2**20
    print(f"corpus: {n} SYNTHETIC calls, {size:.0f} MiB of Parquet events in {time.perf_counter() - t0:.0f} s ({work})")
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--phase", path, "--work", str(work), "--workers", str(args.workers)]
        if args.scheduler:
            cmd += ["--scheduler", args.scheduler]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode < 0 or not lines:
            print(f"{path}: failed (exit {proc.returncode}; -9 = killed, e.g. out of memory)\n{proc.stderr[-2000:]}")
            continue
        res = json.loads(lines[-1][len("RESULT "):])
        if res.get("out_of_memory"):
            print(f"{path}: OUT OF MEMORY at {n} calls")
            continue
        workers = f" workers={res['workers']}" if "workers" in res else ""
        print(
            f"{path}:{workers} featurize {res['featurize_calls_per_s']:,.0f} calls/s;"
            f" train {res['train_rows_per_s']:,.0f} rows/s ({res['train_rows']} train rows);"
            f" held-out pairwise accuracy {res['pairwise_accuracy']:.4f}; peak MB {res['peak_mb']}"
        )
    if not args.work:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
