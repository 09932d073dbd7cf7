"""Serving logs: written by vLLM's real scheduler with ``log_dir`` set, read back by ingest.

The engine is built as ``EngineCore`` builds its scheduler (``cachewise.runtime.cpu_engine``)
with ``--additional-config '{"cachewise": {"model": ..., "log_dir": ...}}'``, the model
trained by the real pipeline on a small synthetic corpus. Agent sessions are served
closed-loop (call k+1 extends call k's prompt and output), with tool calls stated as
client hints; the written logs are ingested into the events schema and featurized, and the
features must equal those the engine computed when each request finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cachewise.cli import main
from cachewise.data.ingest import load_sources
from cachewise.data.schema import read_events, validate
from cachewise.data.serving_logs import SOURCE, load_dir, log_files
from cachewise.data.report import IngestReport
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.features.online import FeatureState
from cachewise.features.record import FinishedCall, ToolCallInfo
from cachewise.features.spec import FEATURE_NAMES
from cachewise.runtime import serving_log
from cachewise.runtime.config import CacheWiseSettings, ConfigError
from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion
from cachewise.runtime.plugin import register
from cachewise.runtime.serving_log import ServingLog, log_schema
from cachewise.train.train import train_model, write_outputs

BLOCK = 16
PARAMS = {
    "seed": 1, "test_fraction": 0.25, "valid_fraction": 0.25,
    "lightgbm": {"objective": "regression", "num_leaves": 7, "min_data_in_leaf": 5, "num_boost_round": 20,
                 "early_stopping_rounds": 5, "verbose": -1},
}
TOOLS = [
    ("Bash", {"command": "python -m pytest -x tests/test_a.py"}),
    ("Read", {"file_path": "/repo/src/a.py"}),
    ("Bash", {"command": "git diff | head -50"}),
    ("Edit", {"file_path": "/repo/src/a.py", "old_string": "x", "new_string": "y"}),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model exported by the real pipeline (ingest -> featurize -> train) on 12 synthetic sessions."""
    root = tmp_path_factory.mktemp("model")
    generate_corpus(root / "corpus", seed=3, sessions=12)
    events, _ = load_sources([root / "corpus"])
    table = featurize(events, horizon_s=600)
    result = train_model(table.frame, {}, PARAMS, 600, "test")
    write_outputs(result, root / "export")
    return root / "export"


def _serve_sessions(scheduler, n_sessions: int, calls: int) -> int:
    """Closed-loop agent sessions, interleaved; call k+1's prompt extends call k's prompt and output."""
    prompts = {s: list(range(10_000 * (s + 1), 10_000 * (s + 1) + 3 * BLOCK)) for s in range(n_sessions)}
    served = 0
    for k in range(calls):
        for s in range(n_sessions):
            name, args = TOOLS[(s + k) % len(TOOLS)]
            hint = {"tool": name, "arguments": args} if k < calls - 1 else {"tool_calls": []}
            req = make_request(f"s{s}-c{k}", prompts[s], BLOCK, 4, hint=hint, session_id=f"agent-{s}")
            scheduler.add_request(req)
            run_to_completion(scheduler)
            prompts[s] = prompts[s] + [7] * 4 + list(range(500 * k + 50 * s, 500 * k + 50 * s + BLOCK + 5))
            served += 1
    return served


def test_log_dir_setting_is_parsed_and_checked() -> None:
    assert CacheWiseSettings.from_mapping({"model": "m", "log_dir": "/tmp/x"}).log_dir == "/tmp/x"
    assert CacheWiseSettings.from_mapping({"model": "m"}).log_dir is None
    with pytest.raises(ConfigError, match="log_dir"):
        CacheWiseSettings.from_mapping({"model": "m", "log_dir": 3})


@pytest.mark.vllm
def test_real_scheduler_logs_are_ingested_with_the_engines_features(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register()
    seen: list[FinishedCall] = []
    record = ServingLog.record
    monkeypatch.setattr(ServingLog, "record", lambda self, call: (seen.append(call), record(self, call))[1])
    settings = {"cachewise": {"model": str(model_dir), "log_dir": str(tmp_path / "logs")}}
    scheduler = make_scheduler(make_vllm_config(64, BLOCK, additional_config=settings))
    pool = scheduler.kv_cache_manager.block_pool
    assert pool.active
    served = _serve_sessions(scheduler, n_sessions=3, calls=5)
    log = pool.predictor._on_call.__self__
    log.close()
    assert log.dropped == 0 and log.write_errors == 0 and log.rows_written == served == len(seen)

    files = log_files(tmp_path / "logs")
    assert files and all(f.parent.name.startswith("hour=") and f.parent.parent.name.startswith("date=") for f in files)
    assert all(f.name.startswith(log.engine_id) for f in files)
    text = repr([pq.read_table(f).to_pylist() for f in files])
    assert "pytest" not in text and "/repo/src" not in text and "agent-" not in text  # no argument text, hashed ids

    events, report = load_sources([tmp_path / "logs"])
    validate(events)
    assert len(events) == served and set(events["source"]) == {SOURCE}
    assert events["session_id"].nunique() == 3 and events["thread_id"].nunique() == 3
    assert sorted(events.groupby("thread_id")["call_index"].max()) == [4, 4, 4]
    assert report.sessions == 3 and report.calls == served
    classes = events.explode("tool_calls")["tool_calls"].dropna().map(lambda t: t["command_class"])
    assert set(classes) == {"test", "read", "git", "edit"}

    offline = featurize(events, horizon_s=600).frame
    online = FeatureState()
    expected = np.array([online.observe(c) for c in seen])
    got = offline[list(FEATURE_NAMES)].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-5)  # times shifted to epoch: float64 rounding
    assert (offline["censored"].sum(), (~offline["censored"]).sum()) == (3, served - 3)  # last call of each thread


def _call(i: int) -> FinishedCall:
    return FinishedCall(f"t{i % 3}", f"t{i % 3}", float(i), i + 0.5, 100 + i, 5, (ToolCallInfo("Bash", "ls"),), False, "m")


def test_full_buffer_drops_and_counts_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = ServingLog(tmp_path, max_buffer=5, flush_rows=1000, flush_interval_s=3600)
    with caplog.at_level("WARNING", logger="vllm.cachewise"):
        for i in range(12):
            log.record(_call(i))
    assert log.dropped == 7
    assert len([r for r in caplog.records if "buffer full" in r.getMessage()]) == 1
    log.close()
    written = pq.read_table(log_files(tmp_path)[0]).schema
    assert log.rows_written == 5 and written.names == log_schema().names and written.metadata == log_schema().metadata


def test_fault_between_write_and_rename_leaves_no_readable_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = ServingLog(tmp_path, flush_rows=1000, flush_interval_s=3600)
    for i in range(4):
        log.record(_call(i))
    log.flush()

    def crash(tmp: Path, final: Path) -> None:
        raise OSError("injected crash before rename")

    monkeypatch.setattr(serving_log, "publish", crash)
    for i in range(4, 9):
        log.record(_call(i))
    assert log.flush() == 0 and log.write_errors == 1
    assert list(tmp_path.rglob(".*.tmp")), "the temp file of the failed batch is left behind"
    report = IngestReport()
    rows = load_dir(tmp_path, report)
    assert len(rows) == 4 and not report.skipped_files  # the first batch only; the temp file is never read
    log.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from cachewise.features.record import FinishedCall, ToolCallInfo
    from cachewise.runtime.serving_log import ServingLog
    log = ServingLog(sys.argv[1], engine_id="victim", flush_rows=2000, flush_interval_s=0.01)
    i = 0
    while True:
        log.record(FinishedCall(f"t{i % 50}", "s", float(i), i + 0.5, i, 3, (ToolCallInfo("Bash", "pytest"),), False, "m"))
        i += 1
        if i % 2000 == 0:
            print(log.files_written, flush=True)
            time.sleep(0.001)
    """
)


def test_writer_killed_mid_flush_leaves_only_whole_files(tmp_path: Path) -> None:
    """SIGKILL a writer process while it flushes; every published file is whole, no temp file is read."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 5:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    files = log_files(tmp_path)
    assert len(files) >= 5
    report = IngestReport()
    rows = load_dir(tmp_path, report)
    assert not report.skipped_files, report.skipped_files
    assert len(rows) == sum(pq.read_metadata(f).num_rows for f in files) > 0
    assert all(not Path(r["src_file"]).name.startswith(".") for r in rows)


def test_record_never_waits_for_a_stuck_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flush thread is held inside a write; recording (the engine's step) goes on regardless."""
    import threading

    entered, release = threading.Event(), threading.Event()

    def stuck(tmp: Path, final: Path) -> None:
        entered.set()
        release.wait(30)
        os.replace(tmp, final)

    monkeypatch.setattr(serving_log, "publish", stuck)
    log = ServingLog(tmp_path, max_buffer=50, flush_rows=1, flush_interval_s=3600)
    log.record(_call(0))
    assert entered.wait(30), "the flush thread never started writing"
    for i in range(1, 80):
        log.record(_call(i))  # would hang here if recording waited for the writer
    assert log.dropped == 29 and len(log_files(tmp_path)) == 0
    release.set()
    log.close()
    assert log.rows_written == 51 and log.dropped == 29


def test_params_ingest_mixes_serving_logs_with_transcripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ingest.sources`` listing a log folder and a transcript folder: the ingest stage ``dvc repro`` runs."""
    log = ServingLog(tmp_path / "logs", flush_rows=1000, flush_interval_s=3600)
    for i in range(9):
        log.record(_call(i))
    log.close()
    corpus = generate_corpus(tmp_path / "corpus", seed=3, sessions=4)
    params = tmp_path / "params.yaml"
    params.write_text(f"ingest:\n  sources: [{tmp_path / 'logs'}, {corpus.path}]\n  out: events.parquet\n")
    assert main(["ingest", "--params", str(params), "--no-progress"]) == 0
    assert "serving_log" in capsys.readouterr().out
    events = read_events(tmp_path / "events.parquet")
    assert events.groupby("source").size().to_dict() == {SOURCE: 9, "synthetic": corpus.calls}
    assert len(featurize(events, horizon_s=600).frame) == len(events)
