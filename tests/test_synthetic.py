"""The embedded SYNTHETIC corpus: marked as synthetic, deterministic, calibrated to the README facts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from cachewise.data.claude_code import SYNTHETIC_MARK
from cachewise.data.ingest import load_sources
from cachewise.data.schema import METADATA_KEY, SCHEMA_VERSION, to_table, validate
from cachewise.data.synthetic import CALIBRATION, MANIFEST, README, generate_corpus, generate_events

SEED, SESSIONS = 7, 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "corpus"
    generate_corpus(out, SEED, SESSIONS)
    return out


@pytest.fixture(scope="module")
def events(corpus: Path) -> pd.DataFrame:
    df, report = load_sources([corpus])
    assert not report.skipped_lines and not report.skipped_files
    return df


@pytest.fixture(scope="module")
def tools(events: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        [{**tc, "sidechain": side} for calls, side in zip(events.tool_calls, events.is_sidechain) for tc in calls]
    )
    out["duration"] = out.end_time - out.start_time
    return out


def _within(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * target


def test_everything_says_synthetic(corpus: Path, events: pd.DataFrame) -> None:
    assert set(events.source) == {"synthetic"}
    assert json.loads((corpus / MANIFEST).read_text())["synthetic"] is True
    assert "SYNTHETIC" in (corpus / README).read_text()
    for path in corpus.rglob("trace.jsonl"):
        assert all(json.loads(line)[SYNTHETIC_MARK] is True for line in path.read_text().splitlines())
    for path in corpus.rglob("tool_calls.json"):
        assert all(entry[SYNTHETIC_MARK] is True for entry in json.loads(path.read_text()))
    assert events.model.str.startswith("cachewise-synthetic").all()


def test_structure(events: pd.DataFrame) -> None:
    validate(events)
    assert events.session_id.nunique() == SESSIONS
    attempts = events.groupby("task_id").session_id.nunique()
    assert set(attempts) == {1, 2}
    assert events.is_sidechain.any()
    last = events[~events.is_sidechain].sort_values("call_index").groupby("session_id").tail(1)
    cut = (~last.ended_turn).sum()
    assert 0 < cut < SESSIONS * 0.3  # some sessions end right after a tool call
    assert (events.ended_turn == events.tool_calls.map(len).eq(0)).all()


def test_calibration(events: pd.DataFrame, tools: pd.DataFrame) -> None:
    calls = events.groupby("session_id").size()
    assert _within(calls.median(), CALIBRATION["calls_per_session_median"], 0.25)
    assert calls.max() <= CALIBRATION["calls_per_session_max"] + 30
    main = events[~events.is_sidechain].sort_values(["thread_id", "call_index"])
    growth = main.groupby("thread_id").prompt_tokens.diff().dropna()
    assert _within(growth.median(), CALIBRATION["prompt_growth_median"], 0.15)
    latency = main.response_time - main.request_time
    assert _within(latency.median(), CALIBRATION["llm_latency_median_s"], 0.15)
    assert _within(latency.quantile(0.9), CALIBRATION["llm_latency_p90_s"], 0.2)
    by_tool = tools[~tools.sidechain].groupby("name").duration
    med, p90 = by_tool.median(), by_tool.quantile(0.9)
    assert _within(med["Bash"], CALIBRATION["bash_median_s"], 0.4)
    assert _within(p90["Bash"], CALIBRATION["bash_p90_s"], 0.4)
    assert tools.duration.max() <= 300
    for tool in ("read", "edit", "grep"):
        assert _within(med[tool.capitalize()], CALIBRATION[f"{tool}_median_s"], 0.3)
        assert _within(p90[tool.capitalize()], CALIBRATION[f"{tool}_p90_s"], 0.4)
    assert _within(med["Task"], CALIBRATION["task_median_s"], 0.5)


def test_durations_depend_on_the_command_class(tools: pd.DataFrame) -> None:
    bash = tools[tools.name == "Bash"]
    by_class = bash.groupby("command_class").duration.median()
    assert {"test", "build", "python", "search", "read", "git", "edit", "shell"} <= set(by_class.index)
    assert by_class["test"] > 20 * by_class["read"] and by_class["build"] > 20 * by_class["git"]
    tests = bash[bash.command_class == "test"]
    targeted = tests.input_json.str.contains("::|-k ")
    assert tests[targeted].duration.median() < tests[~targeted].duration.median()


def test_deterministic_in_the_seed(corpus: Path, tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
        return h.hexdigest()

    again = generate_corpus(tmp_path / "again", SEED, SESSIONS)
    assert digest(again.path) == digest(corpus)
    other = generate_corpus(tmp_path / "again", SEED + 1, 5)  # replaces the previous corpus
    assert digest(other.path) != digest(corpus)
    assert len(list(other.path.rglob("trace.jsonl"))) == 5


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "real.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError):
        generate_corpus(tmp_path, SEED, 3)
    assert (tmp_path / "real.jsonl").exists()


def test_streamed_events_equal_the_ingested_corpus(corpus: Path, events: pd.DataFrame) -> None:
    """``generate_events`` (no transcripts) yields exactly the rows ingest loads from ``generate_corpus``."""
    chunks = list(generate_events(SEED, SESSIONS, chunk_sessions=50, folder=corpus.name))
    assert [c.num_rows > 0 for c in chunks] == [True] * 3  # 50 + 50 + 20 sessions
    assert all(c.schema.metadata[METADATA_KEY] == SCHEMA_VERSION.encode() for c in chunks)
    key = ["session_id", "thread_id", "call_index"]
    streamed = pa.concat_tables(chunks).to_pandas().sort_values(key, ignore_index=True)
    loaded = events.sort_values(key, ignore_index=True)
    assert len(streamed) == len(loaded) > 3000
    assert to_table(streamed).to_pylist() == to_table(loaded).to_pylist()
