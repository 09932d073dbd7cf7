"""What an ingest run read, loaded and refused: the :class:`IngestReport`.

Invariant: nothing a loader drops is silent. Every malformed or truncated input line is a
:class:`SkippedLine` (file, 1-based line number, reason); every trace file that yields no LLM
call for a known reason (a tool-call sidecar without its transcript, a duplicate session) is
a :class:`SkippedFile`; lines that are valid but carry no LLM call (Claude Code ``summary``
lines, API-error placeholders) are counted in :attr:`IngestReport.ignored` by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SkippedLine:
    """One input line (or document part) that could not be used."""

    file: str
    line: int | None  # 1-based; None where the format has no lines (a part of a .traj document)
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class SkippedFile:
    """A file or folder that was found but yields no LLM calls."""

    path: str
    reason: str
    kind: str = ""  # the reason's category, counted in the summary (default: the reason up to ':' or '(')

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    @property
    def category(self) -> str:
        return self.kind or self.reason.split(":", 1)[0].split("(", 1)[0].strip()


@dataclass(frozen=True)
class FileResult:
    """What one trace file contributed."""

    path: str
    source: str  # the events ``source`` value of its rows
    sessions: int  # sessions first seen in this file (a session may span files)
    calls: int
    bytes_read: int  # on-disk (possibly compressed) size


@dataclass
class IngestReport:
    """Accumulates per-file results and every skip while the loaders run."""

    files: list[FileResult] = field(default_factory=list)
    skipped_lines: list[SkippedLine] = field(default_factory=list)
    skipped_files: list[SkippedFile] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip_line(self, file: str, line: int | None, reason: str) -> None:
        """Record one unusable line."""
        self.skipped_lines.append(SkippedLine(file, line, reason))

    def skip_file(self, path: str, reason: str, kind: str = "") -> None:
        """Record one file (or folder) that yields no calls; ``kind`` groups it in the summary."""
        self.skipped_files.append(SkippedFile(path, reason, kind))

    def ignore(self, reason: str, count: int = 1) -> None:
        """Count valid input that carries no LLM call."""
        self.ignored[reason] += count

    def add_file(self, result: FileResult) -> None:
        """Record what one trace file contributed."""
        self.files.append(result)

    @property
    def sessions(self) -> int:
        return sum(f.sessions for f in self.files)

    @property
    def calls(self) -> int:
        return sum(f.calls for f in self.files)

    def by_source(self) -> dict[str, tuple[int, int, int]]:
        """``source -> (files, sessions, calls)``."""
        out: dict[str, list[int]] = {}
        for f in self.files:
            row = out.setdefault(f.source, [0, 0, 0])
            row[0] += 1
            row[1] += f.sessions
            row[2] += f.calls
        return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}

    def summary(self, max_listed: int = 20) -> str:
        """Human-readable summary; lists the first ``max_listed`` skipped lines and files."""
        lines = [
            f"ingest: {len(self.files)} trace files, {self.sessions} sessions, {self.calls} LLM calls,"
            f" {len(self.skipped_lines)} skipped lines, {len(self.skipped_files)} skipped files"
        ]
        for source, (files, sessions, calls) in self.by_source().items():
            tag = "  (SYNTHETIC corpus, not real traces)" if source == "synthetic" else ""
            lines.append(f"  {source:<12} files={files:<6} sessions={sessions:<6} calls={calls}{tag}")
        if self.skipped_files:
            kinds = Counter(f.category for f in self.skipped_files)
            lines.append("  skipped files by reason: " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.ignored:
            parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.ignored.items()))
            lines.append(f"  ignored (valid, no LLM call): {parts}")
        for title, items in (("skipped lines", self.skipped_lines), ("skipped files", self.skipped_files)):
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {item}" for item in items[:max_listed])
                if len(items) > max_listed:
                    lines.append(f"    ... and {len(items) - max_listed} more")
        return "\n".join(lines)
