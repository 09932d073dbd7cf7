"""Tolerant readers for JSON-lines and JSON documents, plain or gzip-compressed, and the value
hygiene every loader applies before a value reaches the events table (:func:`utf8_safe`,
:data:`MAX_TOKENS`).

Invariant: a reader never raises on bad content. Every line that is not a JSON object is
reported to the :class:`~cachewise.data.report.IngestReport` with its 1-based line number and
the reader moves on; a gzip stream cut short (or corrupt) ends the file with one report at the
line after the last complete one, keeping every line read before it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cachewise.data.report import IngestReport

GZIP_MAGIC = b"\x1f\x8b"
#: Token counts above this are corrupt values (and would overflow the int64 columns).
MAX_TOKENS = 2**40
#: Start of the report reason for a gzip stream that ends early or is corrupt.
COMPRESSED_CUT = "compressed stream truncated or corrupt"


def is_gzip(path: Path) -> bool:
    """True when the file starts with a gzip header's magic bytes and deflate method byte (RFC 1952:
    ``1f 8b 08``, the only method defined), whatever its name. The method byte keeps a plain JSON-lines
    file whose first line is garbage that happens to start with the two magic bytes from being read
    as a corrupt gzip stream, which would lose every line (found by the garbage-lines property test).
    A gzip stream cut inside its first three bytes is then read as one invalid line: still reported."""
    with open(path, "rb") as f:
        return f.read(3) == GZIP_MAGIC + b"\x08"


def open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, decompressing gzip transparently."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_json_lines(path: Path, rel: str, report: IngestReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every line of ``path`` that is a JSON object.

    Blank lines are skipped silently; any other line that does not decode to a JSON object is
    reported as ``rel:line``.
    """
    lineno = 0
    with open_binary(path) as f:
        try:
            for raw in f:
                lineno += 1
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                    tail = "" if raw.endswith(b"\n") else " (truncated last line)"
                    report.skip_line(rel, lineno, f"invalid JSON{tail}: {_short(e)}")
                    continue
                if not isinstance(obj, dict):
                    report.skip_line(rel, lineno, f"not a JSON object but {type(obj).__name__}")
                    continue
                yield lineno, obj
        except (EOFError, OSError, zlib.error) as e:
            report.skip_line(rel, lineno + 1, f"{COMPRESSED_CUT}: {_short(e)}")


def read_json_document(path: Path) -> Any:
    """Parse a whole (possibly gzip) JSON document; raise ``ValueError`` naming the line."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{COMPRESSED_CUT}: {_short(e)}") from e
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {e.lineno}: invalid JSON: {e.msg}") from e
    except ValueError as e:
        raise ValueError(f"invalid JSON: {_short(e)}") from e


def first_objects(path: Path, limit: int, report: IngestReport) -> list[dict[str, Any]]:
    """Up to ``limit`` leading JSON objects of a JSON-lines file (for format detection)."""
    out: list[dict[str, Any]] = []
    for _, obj in iter_json_lines(path, utf8_safe(str(path)), report):
        out.append(obj)
        if len(out) >= limit:
            break
    return out


def utf8_safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates from JSON escapes or file names) replaced.

    Every string a loader puts in the events table passes through this, so writing Parquet
    (and printing the report) cannot fail on it.
    """
    return text.encode("utf-8", "replace").decode("utf-8")


def _short(e: Exception, limit: int = 120) -> str:
    text = str(e)
    return text if len(text) <= limit else text[: limit - 3] + "..."
