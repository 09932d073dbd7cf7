"""`cachewise ingest`: format detection, errors naming files, reports, params/synthetic mode."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from cachewise.cli import main
from cachewise.data.ingest import IngestError, load_sources
from cachewise.data.schema import read_events
from cachewise.data.synthetic import generate_corpus


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("cli") / "synthetic", seed=3, sessions=4).path


def test_unknown_format_is_skipped_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "events.jsonl"
    bad.write_text(json.dumps({"foo": 1, "bar": 2}) + "\n")
    with pytest.raises(IngestError, match="no LLM calls") as error:
        load_sources([tmp_path])
    assert "events.jsonl: unknown trace format" in str(error.value)


def test_a_file_without_json_lines_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_text("hello\nworld\n")
    with pytest.raises(IngestError, match="no LLM calls") as error:
        load_sources([tmp_path])
    assert "log.jsonl: not JSON lines (invalid JSON" in str(error.value)
    (tmp_path / "log.jsonl").write_text("")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"type": "user"}\n' * 50)[:12])
    with pytest.raises(IngestError, match="no LLM calls") as error:
        load_sources([tmp_path])
    assert "log.jsonl: no complete line" in str(error.value) and "cut.jsonl.gz: no complete line" in str(error.value)


def test_nothing_loaded_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(IngestError, match="no LLM calls"):
        load_sources([tmp_path])
    with pytest.raises(IngestError, match="no such file"):
        load_sources([tmp_path / "missing"])
    with pytest.raises(IngestError, match="no LLM calls") as error:
        load_sources([tmp_path / "notes.txt"])
    assert "notes.txt: not a trace file" in str(error.value)


def test_malformed_and_truncated_files_are_reported_with_line_numbers(small_corpus: Path, tmp_path: Path) -> None:
    transcripts = sorted(small_corpus.rglob("trace.jsonl"))
    lines = transcripts[0].read_bytes().splitlines(keepends=True)
    folder = tmp_path / "t" / "attempt_1"
    folder.mkdir(parents=True)
    (folder / "trace.jsonl").write_bytes(lines[0] + b"{oops\n" + b"".join(lines[1:]))
    cut = tmp_path / "u" / "attempt_1"
    cut.mkdir(parents=True)
    packed = gzip.compress(transcripts[1].read_bytes())
    (cut / "trace.jsonl.gz").write_bytes(packed[: len(packed) * 2 // 3])
    df, report = load_sources([tmp_path])
    where = [str(s) for s in report.skipped_lines]
    assert any(w.startswith(f"{tmp_path.name}/t/attempt_1/trace.jsonl:2: invalid JSON") for w in where)
    assert any("trace.jsonl.gz" in w and "compressed stream truncated" in w for w in where)
    assert df.session_id.nunique() == 2  # both files still load
    assert "skipped lines:" in report.summary()


def test_duplicate_sessions_and_paths(small_corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(small_corpus, copy)
    df, report = load_sources([small_corpus, small_corpus, copy])
    assert df.session_id.nunique() == 4 and len(report.files) == 4
    assert len(report.skipped_files) == 4 and all("already loaded from" in s.reason for s in report.skipped_files)


def test_cli_explicit_sources(small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "events.parquet"
    assert main(["ingest", str(small_corpus), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 sessions" in printed and "synthetic" in printed and "SYNTHETIC" in printed
    df = read_events(out)
    assert df.session_id.nunique() == 4 and set(df.source) == {"synthetic"}
    assert main(["ingest", str(tmp_path / "nope"), "--out", str(out), "--no-progress"]) == 2
    assert "nope: no such file" in capsys.readouterr().err


def test_params_mode_falls_back_to_the_synthetic_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "ingest:\n  sources: [missing/traces]\n  out: data/events.parquet\n"
        "  synthetic: {seed: 5, sessions: 3, dir: data/synthetic}\n"
    )
    assert main(["ingest", "--params", str(params), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "not found, skipped" in captured.err and "generating the SYNTHETIC corpus" in captured.err
    assert "SYNTHETIC corpus, not real traces" in captured.out
    df = read_events(tmp_path / "data" / "events.parquet")
    assert df.session_id.nunique() == 3 and set(df.source) == {"synthetic"}
    assert (tmp_path / "data" / "synthetic" / "SYNTHETIC_README.md").is_file()


def test_params_mode_reads_real_sources(
    shared_traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"ingest:\n  sources: [{shared_traces / 'swe-agent'}]\n  out: events.parquet\n")
    assert main(["ingest", "--params", str(params), "--no-progress"]) == 0
    assert "swe_agent" in capsys.readouterr().out
    assert read_events(tmp_path / "events.parquet").session_id.nunique() == 22
