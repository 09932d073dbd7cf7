"""Serving logs (:mod:`cachewise.runtime.serving_log`) as rows of the events table.

A serving-log dataset is a folder with ``date=YYYY-MM-DD/hour=HH/*.parquet`` files, as the
runtime writes under its ``log_dir``; list that folder in ``ingest.sources`` (next to
transcript folders, if any) and ``dvc repro`` retrains on served traffic.

Mapping (one log row -> one events row): ``source`` = ``serving_log``; ``session_id`` =
``task_id`` = the hashed session (a served session is its own task: the split unit);
``thread_id`` = the hashed thread; ``call_index`` = rank within the thread by request time
(a thread spans many files: one per flush, so the whole dataset is loaded before indexing);
``time_basis`` = ``wall``; ``hash_ids`` and ``cached_tokens`` null; each tool call's
``input_json`` carries its logged classification
(:func:`cachewise.features.record.classified_input_json`), so the features equal those the
engine computed; tool timing unknown (null). The reuse label is derived downstream from the
next call of the thread, as for transcripts (:mod:`cachewise.features.label`).

Guarantees: only ``*.parquet`` files not starting with ``.`` are read, so a writer's
in-flight ``.<name>.tmp`` (or one a crash left) is never read; an unreadable file or one of
another log-schema version is reported as a skipped file (path and reason) and the rest
loads. Cost: O(rows) plus a sort by thread and time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from cachewise.data.jsonl import utf8_safe
from cachewise.data.report import FileResult, IngestReport
from cachewise.features.record import classified_input_json
from cachewise.runtime.serving_log import LOG_SCHEMA_VERSION, METADATA_KEY, PART_SUFFIX

SOURCE = "serving_log"
PATTERN = f"date=*/hour=*/*{PART_SUFFIX}"


def log_files(folder: Path) -> list[Path]:
    """Published log files under ``folder`` (temp files excluded), in a stable order."""
    return sorted(p for p in folder.glob(PATTERN) if p.is_file() and not p.name.startswith("."))


def is_log_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a serving-log dataset."""
    path = Path(path)
    return path.is_dir() and any(path.glob("date=*/hour=*"))


def _read(path: Path, rel: str, report: IngestReport) -> pd.DataFrame | None:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the rest loads
        report.skip_file(rel, f"unreadable Parquet ({type(exc).__name__}: {exc})")
        return None
    version = (table.schema.metadata or {}).get(METADATA_KEY, b"?").decode()
    if version != LOG_SCHEMA_VERSION:
        report.skip_file(rel, f"serving-log schema version {version!r}, this code reads {LOG_SCHEMA_VERSION!r}")
        return None
    frame = table.to_pandas()
    frame["src_file"] = rel
    return frame


def _tool_calls(logged: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": tc["name"],
            "input_json": classified_input_json(tc["command_class"], tc["facts"]),
            "command_class": tc["command_class"],
            "start_time": None,
            "end_time": None,
            "observation_bytes": None,
            "is_error": False,
        }
        for tc in (logged if logged is not None else ())
    ]


def load_dir(folder: str | Path, report: IngestReport) -> list[dict[str, Any]]:
    """Events rows of every log file under ``folder`` (module doc); files are reported."""
    folder = Path(folder).resolve()
    root = folder.parent
    frames = {}
    for path in log_files(folder):
        rel = utf8_safe(path.relative_to(root).as_posix())
        frame = _read(path, rel, report)
        if frame is not None:
            frames[rel] = (frame, path.stat().st_size)
    if not frames:
        return []
    logs = pd.concat([f for f, _ in frames.values()], ignore_index=True)
    logs = logs.sort_values(["session", "thread", "request_time", "response_time"], kind="stable", ignore_index=True)
    call_index = logs.groupby(["session", "thread"], sort=False).cumcount().astype("int32")
    new_sessions = logs.groupby("session", sort=False)["src_file"].min().value_counts()  # first file, by name
    for rel, (frame, size) in frames.items():
        report.add_file(FileResult(rel, SOURCE, int(new_sessions.get(rel, 0)), len(frame), size))
    return [
        {
            "source": SOURCE,
            "src_file": row.src_file,
            "task_id": row.session,
            "session_id": row.session,
            "thread_id": row.thread,
            "is_sidechain": bool(row.is_sidechain),
            "call_index": int(idx),
            "model": row.model or "",
            "time_basis": "wall",
            "request_time": float(row.request_time),
            "response_time": float(row.response_time),
            "prompt_tokens": int(row.prompt_tokens),
            "cached_tokens": None,
            "output_tokens": int(row.output_tokens),
            "hash_ids": None,
            "tool_calls": _tool_calls(row.tool_calls),
            "ended_turn": bool(row.ended_turn),
        }
        for row, idx in zip(logs.itertuples(index=False), call_index)
    ]
