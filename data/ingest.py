"""``cachewise ingest``: read agent traces and write the events table.

Usage::

    cachewise ingest SRC... --out data/events.parquet   # explicit sources (files or folders)
    cachewise ingest --params params.yaml               # DVC mode: ingest.sources / ingest.out

A folder is searched recursively for trace files; each file's format is detected from its
name and first lines (:data:`LOADERS`): Claude Code transcripts (``*.jsonl[.gz]``, with or
without a ``tool_calls.json[.gz]`` sidecar), block-hash request traces (Mooncake / Bailian
``*.jsonl``) and SWE-agent trajectories (``*.traj``). A source folder holding a serving-log
dataset (``date=*/hour=*/*.parquet``, :mod:`cachewise.data.serving_logs`) is read as one.
Guarantees:

* nothing is skipped silently, and one bad file never stops the run: a file or folder that
  cannot be read (permissions, I/O error), a file in no known format (or not JSON at all),
  a ``.traj`` that is not a trajectory object, and a folder holding only a tool-call sidecar
  (replays, no transcript) are each reported as a skipped file with the reason, and the
  rest is ingested; the summary counts skipped files by reason;
* malformed or truncated lines are reported with ``file:line`` and the rest still loads;
* of two files holding the same thread (a copy of a transcript, possibly a shorter partial
  one), the one with more calls on the shared threads is kept (the first in path order on a
  tie) and the other reported as a skipped file; a session may span files (Claude Code
  writes sub-agent runs to their own ``agent-*.jsonl``);
* an empty result is an :class:`IngestError`; so is a missing source path;
* the events table is written atomically (:mod:`cachewise.atomic_write`): a failed write
  (a full disk) leaves the previous table as it was.

In params mode, missing ``ingest.sources`` are skipped with a message; when none exists the
SYNTHETIC corpus of :mod:`cachewise.data.synthetic` is generated (``ingest.synthetic.seed``,
``.sessions``, ``.dir``) and ingested, and the output says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from cachewise.data import blockhash, claude_code, serving_logs, swe_agent
from cachewise.data.jsonl import COMPRESSED_CUT, first_objects, utf8_safe
from cachewise.data.report import FileResult, IngestReport
from cachewise.data.schema import COLUMNS, write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.features.params import KNOWN_KEYS, check_keys

Loader = Callable[[Path, Path, IngestReport], list[dict[str, Any]]]
#: format name -> loader; detection order for JSON-lines files is claude_code, blockhash.
LOADERS: dict[str, Loader] = {
    "claude_code": claude_code.load_file,
    "blockhash": blockhash.load_file,
    "swe_agent": swe_agent.load_file,
}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
TRAJ_SUFFIX = ".traj"
DETECT_LINES = 20
DEFAULT_SYNTHETIC_DIR = "data/synthetic"
_NULLABLE_INT = ("prompt_tokens", "cached_tokens", "output_tokens")
DUPLICATE = "copy of a loaded thread"


class IngestError(RuntimeError):
    """The sources cannot be ingested (unknown format, missing path, nothing loaded)."""


@dataclass(frozen=True)
class TraceFile:
    """One file to load: its path, the root ``src_file`` is relative to, and its format."""

    path: Path
    root: Path
    format: str

    @property
    def rel(self) -> str:
        return utf8_safe(self.path.relative_to(self.root).as_posix())


def _is_trace_name(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES) or path.name.endswith(TRAJ_SUFFIX)


def detect_format(path: Path) -> str | None:
    """The :data:`LOADERS` key for ``path``; None when it has no complete line.

    Raises :class:`IngestError` when its lines are not JSON objects, or objects of no known
    format; ``OSError`` when it cannot be read.
    """
    if path.name.endswith(TRAJ_SUFFIX):
        return "swe_agent"
    probe = IngestReport()
    first = first_objects(path, DETECT_LINES, probe)
    if not first:
        bad = [s for s in probe.skipped_lines if not s.reason.startswith(COMPRESSED_CUT)]
        if bad:
            raise IngestError(f"not JSON lines ({bad[0].reason})")
        return None
    if claude_code.looks_like(first):
        return "claude_code"
    if blockhash.looks_like(first):
        return "blockhash"
    keys = sorted({k for obj in first for k in obj})[:12]
    raise IngestError(
        f"unknown trace format (first objects have keys {keys}); expected a Claude Code"
        " transcript, a block-hash request trace or a SWE-agent .traj"
    )


def _unreadable(exc: OSError) -> str:
    return f"unreadable: {exc.strerror or exc}"


def _walk(folder: Path, root: Path, report: IngestReport) -> list[Path]:
    """Every file under ``folder`` (sorted); sub-folders that cannot be listed are reported."""

    def refused(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        report.skip_file(utf8_safe(_rel(where, root)) + "/", _unreadable(exc))

    files = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=refused):
        dirnames.sort()
        files.extend(Path(dirpath, name) for name in filenames)
    return sorted(p for p in files if not p.is_dir())


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def discover(sources: Iterable[str | Path], report: IngestReport) -> list[TraceFile]:
    """Trace files under ``sources`` in a stable order; everything passed over is reported (module doc)."""
    found: dict[Path, TraceFile] = {}
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise IngestError(f"{src}: no such file or folder")
        root = src.resolve().parent
        if src.is_file():
            if not _is_trace_name(src):
                report.skip_file(src.name, "not a trace file (expected *.jsonl, *.jsonl.gz or *.traj)")
                continue
            candidates = [src.resolve()]
        else:
            candidates = []
            for path in _walk(src.resolve(), root, report):
                if _is_trace_name(path):
                    candidates.append(path)
                elif path.name in claude_code.SIDECAR_NAMES:
                    if not any(_is_trace_name(p) for p in path.parent.iterdir()):
                        report.skip_file(
                            utf8_safe(path.parent.relative_to(root).as_posix()),
                            "tool-call sidecar without a transcript (a replay): no LLM calls",
                        )
                else:
                    report.ignore("non-trace file")
        for path in candidates:
            if path in found:
                continue
            rel = utf8_safe(_rel(path, root))
            try:
                fmt = detect_format(path)
            except OSError as exc:
                report.skip_file(rel, _unreadable(exc))
                continue
            except IngestError as exc:
                report.skip_file(rel, str(exc))
                continue
            if not fmt:
                report.skip_file(rel, "no complete line (empty, or compressed stream cut before it)")
                continue
            found[path] = TraceFile(path, root, fmt)
    return list(found.values())


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows, columns=COLUMNS)
    df["call_index"] = df["call_index"].astype("int32")
    for col in _NULLABLE_INT:
        df[col] = df[col].astype("Int64")
    return df


@dataclass
class _Loaded:
    """One loaded file and the threads it holds (``(source, session, thread)`` -> calls)."""

    trace: TraceFile
    rows: list[dict[str, Any]]
    threads: dict[tuple[str, str, str], int]


def _load_file(tf: TraceFile, report: IngestReport) -> _Loaded | None:
    """Rows of one file; None (reported) when it cannot be read or is no trace after all."""
    try:
        rows = LOADERS[tf.format](tf.path, tf.root, report)
    except OSError as exc:
        report.skip_file(tf.rel, _unreadable(exc))
        return None
    except ValueError as exc:  # a document that is not a trajectory, e.g. a JSON list
        report.skip_file(tf.rel, str(exc).removeprefix(f"{tf.rel}: "))
        return None
    threads: dict[tuple[str, str, str], int] = {}
    for r in rows:
        key = (r["source"], r["session_id"], r["thread_id"])
        threads[key] = threads.get(key, 0) + 1
    return _Loaded(tf, rows, threads)


def _keep_longer_copies(loaded: list[_Loaded], report: IngestReport) -> list[_Loaded]:
    """Files in order, dropping each one whose threads another file holds with more calls (module doc)."""
    kept: dict[Path, _Loaded] = {}  # by path: relative names repeat across sources (attempt_1/...)
    owner: dict[tuple[str, str, str], Path] = {}
    for new in loaded:
        shared = [t for t in new.threads if t in owner]
        rivals = sorted({owner[t] for t in shared})
        if rivals:
            theirs = sum(kept[r].threads.get(t, 0) for r in rivals for t in shared)
            mine = sum(new.threads[t] for t in shared)
            if mine <= theirs:
                report.skip_file(
                    new.trace.rel,
                    f"thread {shared[0][2]} already loaded from {kept[rivals[0]].trace.rel} ({theirs} calls vs {mine})",
                    DUPLICATE,
                )
                continue
            for rival in rivals:
                old = kept.pop(rival)
                report.skip_file(
                    old.trace.rel, f"shorter copy ({theirs} calls vs {mine}) of thread {shared[0][2]} in {new.trace.rel}", DUPLICATE
                )
                for t in old.threads:
                    owner.pop(t, None)
        kept[new.trace.path] = new
        owner.update(dict.fromkeys(new.threads, new.trace.path))
    return list(kept.values())


def load_sources(paths: Iterable[str | Path], progress: bool = False) -> tuple[pd.DataFrame, IngestReport]:
    """Load every trace under ``paths`` into one events frame (not yet validated/written)."""
    paths = list(paths)
    report = IngestReport()
    log_dirs = [p for p in paths if serving_logs.is_log_dir(p)]  # read whole: a thread spans files
    files = discover([p for p in paths if p not in log_dirs], report)
    loaded = [
        got
        for tf in tqdm(files, desc="ingest", unit="file", disable=not progress, file=sys.stderr)
        if (got := _load_file(tf, report)) is not None
    ]
    rows: list[dict[str, Any]] = [r for d in log_dirs for r in serving_logs.load_dir(d, report)]
    seen_sessions: set[tuple[str, str]] = set()
    for item in _keep_longer_copies(loaded, report):
        new_sessions = {t[:2] for t in item.threads} - seen_sessions
        seen_sessions |= new_sessions
        source = item.rows[0]["source"] if item.rows else item.trace.format
        report.add_file(FileResult(item.trace.rel, source, len(new_sessions), len(item.rows), _size(item.trace.path)))
        rows.extend(item.rows)
    if not rows:
        raise IngestError(f"no LLM calls loaded from {[str(p) for p in paths]}\n{report.summary()}")
    return _frame(rows), report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def measured_facts(df: pd.DataFrame) -> list[str]:
    """A few per-source numbers to compare with the traces README (one line per source)."""
    out = []
    for source, g in df.groupby("source", sort=True):
        per_session = g.groupby("session_id").size()
        main = g[~g["is_sidechain"]].sort_values(["thread_id", "call_index"])
        growth = main.groupby("thread_id")["prompt_tokens"].diff().dropna()
        latency = g["response_time"] - g["request_time"]
        if not (latency > 0).any():
            timing = "LLM latency n/a (no completion times)"
        else:
            clock = " (synthetic clock)" if (g["time_basis"] == "synthetic").all() else ""
            timing = f"LLM latency median={latency.median():.2f}s p90={latency.quantile(0.9):.2f}s{clock}"
        out.append(
            f"  {source:<12} calls/session median={per_session.median():.0f} max={per_session.max()}"
            f"  main-thread prompt growth median={growth.median():.0f} tokens/call  {timing}"
        )
    return out


def _read_params(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.is_file():
        if explicit:
            raise IngestError(f"{path}: params file not found")
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    section = data.get("ingest", {}) if isinstance(data, dict) else {}
    if not isinstance(section, dict):
        raise IngestError(f"{path}: 'ingest' is not a mapping")
    check_keys(section, KNOWN_KEYS["ingest"], f"{path}:ingest")
    return section


def _resolve_sources(args: argparse.Namespace, params: dict[str, Any], base: Path) -> list[Path]:
    """Explicit SRCs, else the existing ``ingest.sources``, else a fresh synthetic corpus."""
    if args.sources:
        return [Path(s) for s in args.sources]
    listed = [base / Path(s).expanduser() for s in params.get("sources") or []]
    existing = [p for p in listed if p.exists()]
    for p in listed:
        if not p.exists():
            print(f"ingest: source {p} not found, skipped", file=sys.stderr)
    if existing:
        return existing
    synth = params.get("synthetic") or {}
    out_dir = base / synth.get("dir", DEFAULT_SYNTHETIC_DIR)
    seed, sessions = int(synth.get("seed", 7)), int(synth.get("sessions", 120))
    print(
        f"ingest: no real trace source found; generating the SYNTHETIC corpus (seed {seed},"
        f" {sessions} sessions) in {out_dir} and ingesting it instead",
        file=sys.stderr,
    )
    info = generate_corpus(out_dir, seed, sessions)
    print(f"ingest: wrote {info.calls} SYNTHETIC LLM calls in {info.files} files", file=sys.stderr)
    return [out_dir]


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise ingest``."""
    parser.add_argument(
        "sources", nargs="*", metavar="SRC", help="trace files or folders (default: params ingest.sources)"
    )
    parser.add_argument("--out", help="events table to write (default: params ingest.out)")
    parser.add_argument("--params", help="params file with an 'ingest' section (default: params.yaml if present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Ingest, print the summary, write the table; 2 on an ingest error."""
    params_path = Path(args.params or "params.yaml")
    try:
        params = _read_params(params_path, explicit=bool(args.params))
        base = params_path.resolve().parent
        if not (args.out or params.get("out")):
            raise IngestError("no output path: give --out or set ingest.out in the params file")
        out = Path(args.out) if args.out else base / params["out"]
        sources = _resolve_sources(args, params, base)
        df, report = load_sources(sources, progress=not args.no_progress)
    except (IngestError, FileExistsError) as e:
        print(f"ingest: error: {e}", file=sys.stderr)
        return 2
    if "synthetic" in set(df["source"]):
        report.notes.append("rows with source 'synthetic' come from the generated SYNTHETIC corpus, not real traces")
    print(report.summary())
    print("\n".join(["measured:", *measured_facts(df)]))
    try:
        write_events(df, out)
    except OSError as e:
        print(f"ingest: error: cannot write {out}: {e.strerror or e}; the previous table (if any) is unchanged", file=sys.stderr)
        return 2
    print(f"ingest: wrote {len(df)} rows to {out}")
    return 0
