"""The canonical events table: one row per LLM call of an agent session.

Every loader in :mod:`cachewise.data` produces rows of this shape; every later stage
(features, training, the replay benchmark) reads only this table, never a raw trace.

Invariants (checked by :func:`validate`):

* ``(source, session_id, thread_id, call_index)`` is unique; ``call_index`` counts
  0, 1, 2, ... within a thread in request order.
* Times are seconds since the Unix epoch (float64). ``request_time <= response_time``.
  Sources without wall times (SWE-agent) use a synthetic clock and say so in ``time_basis``.
* A thread is one growing prompt: the main conversation of a session, or one sub-agent
  (Claude Code ``isSidechain``) run. Call ``k+1`` of a thread extends the prompt of call ``k``
  (its prefix is the prefix of call ``k`` plus call ``k``'s output and the tool results).
* ``task_id`` is the unit of the train/test split: all sessions (attempts) of one task
  land on the same side.
* ``hash_ids`` is the block-level prefix identity where the source has it (Mooncake-style
  prefix-chained block hashes, equal id = equal block and equal prefix), else null.
* ``tool_calls`` lists the tool calls this response emitted, in order. ``start_time`` /
  ``end_time`` are null where the source has no tool timing. ``ended_turn`` is true when the
  response emitted no tool call (the agent handed control back to the user).

Bump :data:`SCHEMA_VERSION` on any change to the columns; it is stored in the Parquet
metadata and checked on read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cachewise.atomic_write import atomic_path

SCHEMA_VERSION = "1"
METADATA_KEY = b"cachewise.events.schema_version"

TOOL_CALL_TYPE = pa.struct(
    [
        ("name", pa.string()),  # tool name as the agent called it, e.g. "Bash", "Read", "Task"
        ("input_json", pa.string()),  # raw tool input, JSON-encoded
        ("command_class", pa.string()),  # normalised class, see cachewise.data.commands
        ("start_time", pa.float64()),  # tool execution start (epoch s), null if unknown
        ("end_time", pa.float64()),  # tool execution end (epoch s), null if unknown
        ("observation_bytes", pa.int64()),  # size of the tool result text, null if unknown
        ("is_error", pa.bool_()),  # the tool reported an error
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # "claude_code" | "blockhash" | "swe_agent" | "synthetic" | "serving_log"
        ("src_file", pa.string()),  # file the row came from (relative where possible)
        ("task_id", pa.string()),  # split unit (task); attempts of one task share it
        ("session_id", pa.string()),
        ("thread_id", pa.string()),  # == session_id for the main thread
        ("is_sidechain", pa.bool_()),
        ("call_index", pa.int32()),  # 0-based position within the thread
        ("model", pa.string()),  # model / agent identity, "" if unknown
        ("time_basis", pa.string()),  # "wall" | "synthetic" (no real timestamps)
        ("request_time", pa.float64()),  # when the request was sent (epoch s)
        ("response_time", pa.float64()),  # when the response finished (epoch s)
        ("prompt_tokens", pa.int64()),  # total prompt length in tokens
        ("cached_tokens", pa.int64()),  # prompt tokens served from cache, null if unknown
        ("output_tokens", pa.int64()),  # response length in tokens (estimated if unreliable)
        ("hash_ids", pa.list_(pa.int64())),  # block-level prefix identity, null if unknown
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("ended_turn", pa.bool_()),
    ]
)

COLUMNS = [f.name for f in EVENTS_SCHEMA]


class SchemaError(ValueError):
    """The events table does not satisfy the documented invariants."""


def to_table(df: pd.DataFrame) -> pa.Table:
    """Convert a frame with exactly :data:`COLUMNS` to a schema-tagged Arrow table."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"events frame lacks columns {missing}")
    return tag_schema(pa.Table.from_pandas(df[COLUMNS], schema=EVENTS_SCHEMA, preserve_index=False))


def tag_schema(table: pa.Table) -> pa.Table:
    """``table`` (of :data:`EVENTS_SCHEMA`) with the schema version in its metadata."""
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = SCHEMA_VERSION.encode()
    return table.replace_schema_metadata(meta)


def write_events(df: pd.DataFrame, path: str | Path) -> None:
    """Validate and write the events table as Parquet, atomically (a failed write keeps the old table)."""
    validate(df)
    with atomic_path(path) as tmp:
        pq.write_table(to_table(df), tmp)


def read_events(path: str | Path) -> pd.DataFrame:
    """Read an events table, refusing files written under another schema version."""
    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(METADATA_KEY, b"?").decode()
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: events schema version {version!r}, this code reads {SCHEMA_VERSION!r};"
            " re-run `cachewise ingest`"
        )
    return table.to_pandas()


def validate(df: pd.DataFrame) -> None:
    """Check the invariants in the module docstring; raise :class:`SchemaError` if broken."""
    if df.empty:
        raise SchemaError("events table is empty: no LLM calls were loaded")
    key = ["source", "session_id", "thread_id", "call_index"]
    dup = df.duplicated(key)
    if dup.any():
        row = df.loc[dup, key].iloc[0].to_dict()
        raise SchemaError(f"duplicate call key {row}")
    bad = df["response_time"] < df["request_time"]
    if bad.any():
        row = df.loc[bad, ["src_file", "session_id", "call_index"]].iloc[0].to_dict()
        raise SchemaError(f"response before request at {row}")
