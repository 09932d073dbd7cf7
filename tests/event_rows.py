"""Event rows for replay tests: one recorded LLM call per row, in the events schema
(:mod:`cachewise.data.schema`), with the fields a test does not care about filled in."""

from __future__ import annotations

import pandas as pd

from cachewise.data.schema import COLUMNS


def row(session: str, k: int, t0: float, t1: float, prompt: int, output: int, **extra) -> dict:
    """Call ``k`` of ``session`` (its own thread and task), sent at ``t0``, answered at ``t1``; ``extra`` overrides fields."""
    base = {
        "source": "synthetic",
        "src_file": "x.jsonl",
        "task_id": f"task-{session}",
        "session_id": session,
        "thread_id": session,
        "is_sidechain": False,
        "call_index": k,
        "model": "m1",
        "time_basis": "synthetic",
        "request_time": t0,
        "response_time": t1,
        "prompt_tokens": prompt,
        "cached_tokens": None,
        "output_tokens": output,
        "hash_ids": None,
        "tool_calls": [],
        "ended_turn": True,
    }
    base.update(extra)
    return base


def frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as an events table, columns in schema order."""
    return pd.DataFrame(rows)[COLUMNS]
