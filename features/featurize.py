"""``cachewise featurize``: events table -> feature table with reuse labels.

Rows are fed in finish order (``response_time``, ties by thread and call index) through one
:class:`~cachewise.features.online.FeatureState`, exactly as the runtime feeds finished
requests, so training sees the same features serving computes. The output has one row per
event, in that order, with:

* the features (:data:`~cachewise.features.spec.FEATURE_NAMES`, float64);
* the target (:mod:`cachewise.features.label`): ``label``, ``censored``, ``idle_s``, ``next_use_time``;
  and the remaining-work target ``remaining_s`` (seconds the call's session runs after it);
* identity and time columns for splitting and evaluation: ``source``, ``task_id``,
  ``session_id``, ``thread_id``, ``call_index``, ``request_time``, ``response_time``
  (``is_sidechain`` is a feature already);
* baseline inputs: ``primary_class`` (command class of the first tool call, ``<none>`` without
  one) and ``last_use_time`` (the time LRU orders by: the response time).

The Parquet metadata records the feature-set version, the horizon, and the sha256 of the
events file (the training-data fingerprint the exported spec carries). With
``train.backend: dask`` the same :func:`featurize` runs per session partition on a Dask
cluster (:mod:`cachewise.features.dask_featurize`) and the output is a folder of parts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cachewise.atomic_write import atomic_path
from cachewise.data.schema import read_events
from cachewise.features.dask_cluster import DaskSettings, backend_of, dask_client, describe
from cachewise.features.label import remaining_seconds, reuse_labels
from cachewise.features.online import FeatureState
from cachewise.features.params import load_section, param_path, require
from cachewise.features.record import finished_call_from_row
from cachewise.features.spec import FEATURE_NAMES, FEATURE_SET_VERSION, primary_class_name

META_KEY = b"cachewise.features"
ID_COLUMNS = ["source", "task_id", "session_id", "thread_id", "call_index", "request_time", "response_time"]
EXTRA_COLUMNS = [*ID_COLUMNS, "primary_class", "last_use_time", "label", "censored", "idle_s", "next_use_time",
                 "remaining_s"]
assert not set(EXTRA_COLUMNS) & set(FEATURE_NAMES), "a feature name collides with a featurize column"


@dataclass(frozen=True)
class FeatureTable:
    """A featurized events table and how it was made."""

    frame: pd.DataFrame
    us_per_call: float  # mean FeatureState.observe time per call, microseconds
    n_negative_clamped: int
    n_censored: int


def finish_order(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` in the order their responses finish (the order the runtime observes them)."""
    keys = ["response_time", "source", "session_id", "thread_id", "call_index"]
    return events.sort_values(keys, kind="stable").reset_index(drop=True)


def featurize(
    events: pd.DataFrame,
    horizon_s: float,
    max_threads: int = 65536,
    max_sessions: int = 16384,
    progress: bool = False,
) -> FeatureTable:
    """Features and labels of every event (see module doc), rows in finish order."""
    ordered = finish_order(events)
    labels = reuse_labels(ordered, horizon_s)
    state = FeatureState(max_threads=max_threads, max_sessions=max_sessions)
    matrix = np.empty((len(ordered), len(FEATURE_NAMES)), dtype=np.float64)
    records = ordered[["source", "session_id", "thread_id", "request_time", "response_time", "prompt_tokens",
                       "output_tokens", "tool_calls", "ended_turn", "model", "is_sidechain"]].to_dict("records")
    calls = [finished_call_from_row(r) for r in records]
    spent = 0.0
    for i, call in enumerate(tqdm(calls, desc="featurize", unit="call", disable=not progress)):
        t0 = time.perf_counter()
        matrix[i] = state.observe(call)
        spent += time.perf_counter() - t0

    frame = pd.DataFrame(matrix, columns=list(FEATURE_NAMES))
    first_class = frame["class_first"].astype(int)
    frame["primary_class"] = [primary_class_name(c) for c in first_class]
    frame["last_use_time"] = ordered["response_time"].to_numpy()
    for col in ID_COLUMNS:
        frame[col] = ordered[col].to_numpy()
    for col in ["label", "censored", "idle_s", "next_use_time"]:
        frame[col] = labels.frame[col].to_numpy()
    frame["remaining_s"] = remaining_seconds(ordered)
    us = spent / max(len(calls), 1) * 1e6
    return FeatureTable(frame, us, labels.n_negative_clamped, labels.n_censored)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_features(table: FeatureTable, path: str | Path, events_sha256: str, horizon_s: float) -> None:
    """Write the feature frame as Parquet, with its provenance in the metadata (atomically)."""
    arrow = pa.Table.from_pandas(table.frame, preserve_index=False)
    meta = {
        "feature_set_version": FEATURE_SET_VERSION,
        "horizon_s": horizon_s,
        "events_sha256": events_sha256,
    }
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_features(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a feature table and its provenance; refuse another feature-set version."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("feature_set_version") != FEATURE_SET_VERSION:
        raise ValueError(
            f"{path}: feature set version {meta.get('feature_set_version')!r}, this code makes"
            f" {FEATURE_SET_VERSION!r}; re-run `cachewise featurize`"
        )
    return table.to_pandas(), meta


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise featurize``."""
    parser.add_argument("--events", default=None, help="events table (default: params ingest.out)")
    parser.add_argument("--out", default=None, help="feature table to write (default: params features.out)")
    parser.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")


def run(args: argparse.Namespace) -> int:
    """Featurize the events table and print the per-call feature cost."""
    fparams = load_section(args.params, "features")
    where = f"{args.params}:features"
    events_path = args.events or param_path(
        args.params, require(load_section(args.params, "ingest"), "out", f"{args.params}:ingest")
    )
    out = args.out or param_path(args.params, require(fparams, "out", where))
    horizon = float(require(fparams, "horizon_s", where))
    tparams = load_section(args.params, "train")
    if backend_of(tparams, f"{args.params}:train") == "dask":
        return _run_on_dask(events_path, out, horizon, fparams, DaskSettings.from_params(tparams.get("dask"), where))
    events = read_events(events_path)
    table = featurize(
        events,
        horizon,
        max_threads=int(fparams.get("max_threads", 65536)),
        max_sessions=int(fparams.get("max_sessions", 16384)),
        progress=True,
    )
    if Path(out).is_dir():  # parts of an earlier dask run
        shutil.rmtree(out)
    write_features(table, out, sha256_of(events_path), horizon)
    print(
        f"featurize: {len(table.frame)} calls -> {out}; {len(FEATURE_NAMES)} features;"
        f" {table.n_censored} censored (no reuse within {horizon:g} s);"
        f" {table.n_negative_clamped} negative gaps clamped to 0;"
        f" FeatureState.observe {table.us_per_call:.1f} us/call"
    )
    return 0


def _run_on_dask(events_path: Path, out: Path, horizon: float, fparams: dict, settings: DaskSettings) -> int:
    """``cachewise featurize`` with ``train.backend: dask`` (:mod:`cachewise.features.dask_featurize`)."""
    from cachewise.features.dask_featurize import featurize_on_dask  # noqa: PLC0415 - dask only when used

    with dask_client(settings) as client:
        print(f"featurize: backend=dask {describe(client)}", flush=True)
        summary = featurize_on_dask(
            events_path, out, sha256_of(events_path), horizon, settings.partitions,
            int(fparams.get("max_threads", 65536)), int(fparams.get("max_sessions", 16384)),
        )
    print(
        f"featurize: {int(summary['rows'].sum())} calls -> {out}/ ({int((summary['rows'] > 0).sum())} parts);"
        f" {len(FEATURE_NAMES)} features; {int(summary['censored'].sum())} censored (no reuse within {horizon:g} s);"
        f" {int(summary['clamped'].sum())} negative gaps clamped to 0"
    )
    return 0
