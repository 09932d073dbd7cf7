"""Fleet-scale featurize and train: the local path vs ``train.backend: dask``.

1. Streams a SYNTHETIC corpus of ``--calls`` LLM calls to a folder of Parquet events parts:
   :func:`cachewise.data.synthetic.generate_events` (the embedded generator's sessions as
   events rows, no transcripts written or parsed) in chunks of ``--chunk-sessions`` sessions,
   chunk ``i`` drawn from seed ``--seed + i`` and written atomically as ``part-iiiii.parquet``
   by one of ``--gen-procs`` processes; task ids get the chunk number so chunks never share a
   task. One chunk in memory per process. Parts already in ``--work`` (same seed) are
   reused, so a larger run extends a smaller one.
2. Runs each path in its own process (so peak memory is that path's):

   * ``local``: read all events, :func:`~cachewise.features.featurize.featurize`, then
     :func:`~cachewise.train.train.train_model`;
   * ``dask``: a ``LocalCluster`` of ``--workers`` worker processes (1 thread each), or the
     cluster at ``--scheduler``: :func:`~cachewise.features.dask_featurize.featurize_on_dask`
     then :func:`~cachewise.train.dask_backend.train_on_dask`.

Prints per path: featurize calls/s, train rows/s (rows of the train part / wall seconds of
the whole train step: split, fit, evaluation), and peak resident memory per process
(``ru_maxrss``: the driver, and every Dask worker). A watchdog polls the resident memory of
each path's process tree and kills it above ``--mem-limit-gb`` (the machine is shared):
reported as out of memory at that size, with the step it was in. Dask featurize uses at
least ``calls / --calls-per-partition`` partitions (and ``train.dask.partitions``).

Run (nice: the machine is shared)::

    nice python tests/benchmarks/bench_fleet.py --calls 200000
    nice python tests/benchmarks/bench_fleet.py --calls 10000000 --work /big/disk/fleet --mem-limit-gb 14

Multi-machine: start ``dask scheduler`` on one host and ``dask worker tcp://HOST:8786`` on
each machine (this package installed, ``--work`` on a file system every worker can read),
then pass ``--scheduler tcp://HOST:8786`` here -- or set ``train.dask.scheduler_address`` in
params.yaml for ``dvc repro``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from concurrent.futures import ProcessPoolExecutor

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from cachewise.atomic_write import atomic_path
from cachewise.data.synthetic import generate_events

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_part(out: Path, seed: int, chunk: int, chunk_sessions: int) -> int:
    """Write events part ``chunk`` (seed ``seed + chunk``) atomically unless it exists; its rows."""
    part = out / f"part-{chunk:05d}.parquet"
    if part.exists():  # same seed, same chunk: reuse (a larger run extends a smaller one)
        return pq.read_metadata(part).num_rows
    prefix = f"c{chunk:05d}/"
    (table,) = generate_events(seed + chunk, chunk_sessions, chunk_sessions)
    for column in ("task_id", "src_file"):  # chunks never share a task
        i = table.schema.get_field_index(column)
        table = table.set_column(i, column, pc.binary_join_element_wise(prefix, table[column], ""))
    with atomic_path(part) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def stream_corpus(out: Path, calls: int, chunk_sessions: int, seed: int, procs: int) -> int:
    """Write at least ``calls`` synthetic calls as events parts under ``out``; the number written.

    ``procs`` worker processes generate chunks in parallel (rounds of ``procs`` chunks, so at
    most one round more than needed); each holds one chunk in memory.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = chunk = 0
    with tqdm(total=calls, desc="corpus", unit="call") as bar, ProcessPoolExecutor(procs) as pool:
        while written < calls:
            rows = pool.map(_write_part, *zip(*[(out, seed, c, chunk_sessions) for c in range(chunk, chunk + procs)]))
            for n in rows:
                written += n
                bar.update(n)
            chunk += procs
    for extra in out.glob("part-*.parquet"):  # parts of a larger earlier run are not part of this one
        if int(extra.stem.split("-")[1]) >= chunk:
            extra.unlink()
    return written


_STEPS_LOG: list[Path] = []  # set by _phase: <work>/<path>-steps.log


def _stage(name: str, so_far: dict | None = None) -> None:
    """Tell the parent which step runs now, with the figures of the steps done so far.

    Also appended to ``<work>/<path>-steps.log`` with the time, so a run cut short (killed by
    the watchdog, or by hand) keeps the figures of the steps it finished.
    """
    line = f"STAGE {name} {json.dumps(so_far or {})}"
    print(line, flush=True)
    for log in _STEPS_LOG:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


def run_local(events_dir: Path, horizon: float, tparams: dict) -> dict:
    from cachewise.features.featurize import featurize
    from cachewise.train.train import train_model

    _stage("read events")
    events = pq.read_table(events_dir).to_pandas()
    _stage("featurize")
    t0 = time.perf_counter()
    table = featurize(events, horizon)
    t1 = time.perf_counter()
    del events
    done = {"calls": len(table.frame), "featurize_calls_per_s": len(table.frame) / (t1 - t0), "peak_mb": _peak_mb()}
    _stage("train", done)
    result = train_model(table.frame, {}, tparams, horizon, "bench")
    t2 = time.perf_counter()
    return {
        **done,
        "train_rows": result.metrics["split"]["train_rows"],
        "train_rows_per_s": result.metrics["split"]["train_rows"] / (t2 - t1),
        "pairwise_accuracy": result.metrics["model"]["pairwise_accuracy"],
        "peak_mb": {"driver": _peak_mb()},
    }


def _worker_peaks(client) -> dict[str, float]:
    return {addr: kb / 1024 for addr, kb in client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).items()}


def run_dask(
    events_dir: Path, horizon: float, tparams: dict, workers: int, scheduler: str | None, work: Path, partitions: int,
    steps: tuple[str, ...] = ("featurize", "train"),
) -> dict:
    from distributed import Client, LocalCluster

    from cachewise.features.dask_featurize import featurize_on_dask
    from cachewise.train.dask_backend import train_on_dask

    features = work / "features"
    out: dict = {"peak_mb": {}}
    for step in steps:
        _stage(step, out)
        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
        address = scheduler or cluster.scheduler_address
        with Client(address) as client:
            t0 = time.perf_counter()
            if step == "featurize":
                summary = featurize_on_dask(events_dir, features, "bench", horizon, partitions)
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
    _STEPS_LOG.append(Path(args.work) / f"{args.phase}-steps.log")
    try:
        if args.phase == "local":
            res = run_local(events, horizon, tparams)
        else:
            n = sum(pq.read_metadata(part).num_rows for part in events.glob("*.parquet"))
            parts = max(int(tparams["dask"]["partitions"]), 2 * args.workers, -(-n // args.calls_per_partition))
            steps = ("train",) if args.train_only else ("featurize", "train")
            res = run_dask(events, horizon, tparams, args.workers, args.scheduler, Path(args.work), parts, steps)
    except MemoryError:
        res = {"out_of_memory": True}
    _stage("done", res)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def _run_watched(cmd: list[str], limit: float) -> tuple[int, str, str, list[float] | None]:
    """Run ``cmd``; kill its process tree when its total resident memory exceeds ``limit`` bytes.

    Returns (exit status, stdout, stderr, resident bytes per process at the kill -- the phase
    first, then its children, e.g. Dask workers -- or None). Polls every 0.5 s,
    so a spike shorter than that can pass; the machine is shared, so this stops a path well
    before the kernel's OOM killer would pick a victim.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        root, over = psutil.Process(proc.pid), None
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in tree]
            except psutil.Error:
                rss = []  # a process ended between listing and reading; the next poll sees the rest
            if sum(rss) > limit:
                over = rss
                for p in reversed(tree):
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                break
            time.sleep(0.5)
        proc.wait()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), over


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--chunk-sessions", type=int, default=500)
    ap.add_argument("--gen-procs", type=int, default=2, help="processes generating the corpus")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None, help="tcp://HOST:8786 of a running Dask cluster (default: LocalCluster)")
    ap.add_argument("--work", default=None, help="folder for the corpus and features (default: a temp folder)")
    ap.add_argument("--paths", default="local,dask")
    ap.add_argument(
        "--calls-per-partition", type=int, default=250_000, help="Dask featurize partitions: at least calls / this"
    )
    ap.add_argument(
        "--mem-limit-gb", type=float, default=16.0,
        help="watchdog: kill a path whose processes together exceed this resident memory (reported as out of memory)",
    )
    ap.add_argument(
        "--train-only", action="store_true", help="dask: train on the features an earlier run left in --work/features"
    )
    ap.add_argument("--phase", choices=["local", "dask"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return _phase(args)
    # SIGTERM unwinds (closing the generator pool and waiting for its workers) instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fleet-"))
    t0 = time.perf_counter()
    n = stream_corpus(work / "events", args.calls, args.chunk_sessions, args.seed, args.gen_procs)
    size = sum(p.stat().st_size for p in (work / "events").glob("*.parquet")) / 2**20
    print(f"corpus: {n} SYNTHETIC calls, {size:.0f} MiB of Parquet events in {time.perf_counter() - t0:.0f} s ({work})")
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--phase", path, "--work", str(work), "--workers", str(args.workers)]
        if args.scheduler:
            cmd += ["--scheduler", args.scheduler]
        cmd += ["--calls-per-partition", str(args.calls_per_partition)] + ["--train-only"] * args.train_only
        t1 = time.perf_counter()
        returncode, stdout, stderr, over = _run_watched(cmd, args.mem_limit_gb * 2**30)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        stages = [ln[len("STAGE "):].partition(" {") for ln in stdout.splitlines() if ln.startswith("STAGE ")]
        step, _, so_far = stages[-1] if stages else ("?", "", "}")
        if over is not None:
            print(
                f"{path}: OUT OF MEMORY at {n} calls: {sum(over) / 2**30:.1f} GB resident"
                f" (per process: {', '.join(f'{b / 2**30:.1f}' for b in over)} GB) > --mem-limit-gb"
                f" {args.mem_limit_gb:g} in step {step!r} after {time.perf_counter() - t1:.0f} s; steps done: {{{so_far}"
            )
            continue
        if returncode != 0 or not lines:
            print(f"{path}: failed (exit {returncode}; -9 = killed, e.g. out of memory)\n{stderr[-2000:]}")
            continue
        res = json.loads(lines[-1][len("RESULT "):])
        if res.get("out_of_memory"):
            print(f"{path}: OUT OF MEMORY at {n} calls")
            continue
        workers = f" workers={res['workers']}" if "workers" in res else ""
        print(
            f"{path}:{workers} "
            + (f"featurize {res['featurize_calls_per_s']:,.0f} calls/s;" if "calls" in res else "featurize not run;")
            + f" train {res['train_rows_per_s']:,.0f} rows/s ({res['train_rows']} train rows);"
            f" held-out pairwise accuracy {res['pairwise_accuracy']:.4f}; peak MB {res['peak_mb']}"
        )
    if not args.work:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
