"""Serving logs: every finished call's feature metadata, appended to a partitioned Parquet dataset.

Opt-in with ``--additional-config '{"cachewise": {..., "log_dir": "/var/log/cachewise"}}'``.
Per finished request (the :class:`~cachewise.features.record.FinishedCall` the predictor
builds) one row is written under::

    <log_dir>/date=YYYY-MM-DD/hour=HH/<engine-id>-<seq>.parquet      (UTC of the finish time)

Row (:func:`log_schema`): ``engine_id``; ``session`` and ``thread`` as hashes (16 hex
digits of BLAKE2b). ``thread`` is always hashed together with the engine id (a thread's
cached prefix lives on one engine, and engine-local keys such as ``t1`` must never merge);
``session`` too when it is engine-local (no client ``session_id``: the session is its
thread), while a client's ``session_id`` hashes the same on every engine; ``is_sidechain``;
``model``; ``request_time`` / ``response_time`` (epoch seconds: the call's times on the
pool's clock -- :func:`~cachewise.runtime.policy.engine_clock` in a served engine -- plus the wall-minus-pool offset taken
once when the log opens, so every difference is exactly the engine's);
``prompt_tokens`` / ``output_tokens``; ``ended_turn``;
and per tool call its ``name``, ``command_class`` and numeric argument facts
(:func:`cachewise.data.commands.classify`, the values the features use). No prompt, output
or tool-argument text is ever written.

Realized next reuse: not written as a second record. The next call of the same thread *is*
the reuse, so ingest derives the label exactly as it does for transcripts
(:mod:`cachewise.features.label`: next request of the thread minus this finish, censored at
``features.horizon_s``), from rows already in the log. A second "reuse" record would need
per-thread state held until the horizon passes, more memory in the engine and a join key
anyway; the derived label is the same number, and the horizon stays a training parameter
rather than something frozen into the logs.

Off the hot path: :meth:`ServingLog.record` appends the call to a bounded
deque and returns (O(1), no I/O, no lock held across anything slow); classification,
hashing, Arrow conversion and writing run on one daemon thread, woken every
``flush_interval_s`` or when ``flush_rows`` records wait. When ``max_buffer`` records wait
the new record is dropped and counted (:attr:`ServingLog.dropped`), with ONE warning.
Write errors are counted (:attr:`ServingLog.write_errors`) and warned once; the records of
that batch are lost, the engine never sees an exception.

Atomic files: a batch is written to ``.<name>.tmp`` in its partition (a dot file, which
readers skip), fsynced, then renamed to ``<name>.parquet``; a reader sees a whole file or
none. Crash (SIGKILL, power loss): at most the unflushed buffer is lost -- at most
``max_buffer`` records, in practice the last ``flush_interval_s`` of traffic -- plus a
stray ``.tmp`` file. A normal interpreter exit flushes (``atexit``).

Imports: standard library and ``pyarrow`` only (imported on the flush thread), never pandas.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cachewise.data.commands import classify
from cachewise.features.record import FinishedCall
from cachewise.runtime.policy import engine_clock

logger = logging.getLogger("vllm.cachewise")

LOG_SCHEMA_VERSION = "1"
METADATA_KEY = b"cachewise.serving_log.schema_version"
PART_SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@functools.cache
def log_schema() -> Any:
    """The Arrow schema of a serving-log file (pyarrow imported on first use)."""
    import pyarrow as pa

    tool = pa.struct([("name", pa.string()), ("command_class", pa.string()), ("facts", pa.list_(pa.float64()))])
    fields = [
        ("engine_id", pa.string()),
        ("session", pa.string()),  # keyed hash, see module doc
        ("thread", pa.string()),
        ("is_sidechain", pa.bool_()),
        ("model", pa.string()),
        ("request_time", pa.float64()),  # wall clock, epoch s
        ("response_time", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("ended_turn", pa.bool_()),
        ("tool_calls", pa.list_(tool)),
    ]
    return pa.schema(fields, metadata={METADATA_KEY: LOG_SCHEMA_VERSION.encode()})


def key_hash(key: str, scope: str = "") -> str:
    """16 hex digits of BLAKE2b of ``key`` (``scope`` prepended, e.g. the engine id)."""
    return hashlib.blake2b(f"{scope}\x1f{key}".encode(), digest_size=8).hexdigest()


def default_engine_id() -> str:
    """``<host>-<pid>-<random>``: distinct per engine process, safe in a file name."""
    return _UNSAFE.sub("_", f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


def partition_of(wall_time: float) -> str:
    """``date=YYYY-MM-DD/hour=HH`` (UTC) of an epoch time."""
    t = datetime.fromtimestamp(wall_time, tz=timezone.utc)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def publish(tmp: Path, final: Path) -> None:
    """Make a fully written temp file visible under its final name (atomic on POSIX)."""
    os.replace(tmp, final)


class ServingLog:
    """Bounded buffer + background writer of serving-log rows (module doc)."""

    def __init__(
        self,
        log_dir: str | Path,
        engine_id: str | None = None,
        max_buffer: int = 100_000,
        flush_rows: int = 20_000,
        flush_interval_s: float = 10.0,
        clock: Callable[[], float] = engine_clock,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_buffer < 1 or flush_rows < 1 or not flush_interval_s > 0:
            raise ValueError("max_buffer, flush_rows and flush_interval_s must be positive")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.engine_id = _UNSAFE.sub("_", engine_id) if engine_id else default_engine_id()
        self.max_buffer = max_buffer
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._offset = wall_clock() - clock()  # pool clock -> epoch seconds
        self._buffer: deque[FinishedCall] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()  # one flush at a time (thread, close, tests)
        self._seq = 0
        self.dropped = 0
        self.write_errors = 0
        self.rows_written = 0
        self.files_written = 0
        self._warned_full = self._warned_write = False
        self._thread = threading.Thread(target=self._run, name="cachewise-serving-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(self, call: FinishedCall) -> None:
        """Queue ``call`` for writing; O(1), never blocks, never raises on a full buffer."""
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "CacheWise serving log: buffer full (%d records), dropping records (counted in"
                    " ServingLog.dropped); the writer to %s cannot keep up", self.max_buffer, self.log_dir,
                )
            return
        buffer.append(call)
        if len(buffer) >= self.flush_rows:
            self._wake.set()

    def flush(self) -> int:
        """Write every queued record now (on the calling thread); returns the rows written."""
        with self._write_lock:
            batch = []
            while self._buffer:
                batch.append(self._buffer.popleft())
            if not batch:
                return 0
            try:
                written = self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a full disk must not reach the engine
                self.write_errors += 1
                if not self._warned_write:
                    self._warned_write = True
                    logger.warning("CacheWise serving log: cannot write to %s (%s); records lost", self.log_dir, exc)
                return 0
            self.rows_written += written
            return written

    def close(self) -> None:
        """Stop the thread and flush what is left (idempotent; registered with ``atexit``)."""
        if not self._stop.is_set():
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def _write(self, batch: list[FinishedCall]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_partition: dict[str, list[dict[str, Any]]] = {}
        for call in batch:
            row = self._row(call)
            by_partition.setdefault(partition_of(row["response_time"]), []).append(row)
        for part, rows in sorted(by_partition.items()):
            folder = self.log_dir / part
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            name = f"{self.engine_id}-{self._seq:06d}"
            tmp, final = folder / f".{name}{TMP_SUFFIX}", folder / f"{name}{PART_SUFFIX}"
            pq.write_table(pa.Table.from_pylist(rows, schema=log_schema()), tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            publish(tmp, final)
            self.files_written += 1
        return len(batch)

    def _row(self, call: FinishedCall) -> dict[str, Any]:
        engine_local = call.session_key == call.thread_key
        tools = []
        for tc in call.tool_calls:
            info = classify(tc.name, tc.input)
            tools.append({"name": tc.name, "command_class": info.command_class, "facts": [float(f) for f in info.facts]})
        return {
            "engine_id": self.engine_id,
            "session": key_hash(call.session_key, self.engine_id if engine_local else ""),
            "thread": key_hash(call.thread_key, self.engine_id),
            "is_sidechain": call.is_sidechain,
            "model": call.model,
            "request_time": call.request_time + self._offset,
            "response_time": call.finish_time + self._offset,
            "prompt_tokens": call.prompt_tokens,
            "output_tokens": call.output_tokens,
            "ended_turn": call.ended_turn,
            "tool_calls": tools,
        }
