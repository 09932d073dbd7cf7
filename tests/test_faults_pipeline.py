"""Fault injection on train and export: MLflow failures, SIGTERM part-way, undefined accuracy.

Invariants: ``train/out`` and the export folder only ever hold the complete outputs of one
run; no MLflow run is left ``RUNNING``; a re-run after a kill succeeds; ``export`` checks
everything it can before it writes to the registry.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cachewise.cli import main
from cachewise.data.ingest import load_sources
from cachewise.data.schema import write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.scoring.exported import load_exported

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A pipeline folder with events, features, its own SQLite MLflow store; yields a params writer."""
    root = tmp_path_factory.mktemp("pipeline")
    generate_corpus(root / "corpus", seed=13, sessions=30)
    events, _ = load_sources([root / "corpus"])
    write_events(events, root / "data" / "events.parquet")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["ingest"]["out"] = "data/events.parquet"
    del base["certify"]  # no traffic certificate: these tests are about the registry and the swap
    base["train"]["lightgbm"].update(num_boost_round=30)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")

    def params(name: str, **train: object) -> Path:
        p = json.loads(json.dumps(base))
        p["registry"].update(model_name=f"m-{name}", export_dir=f"models/{name}")
        p["train"].update(train)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(p))
        return path

    assert main(["featurize", "--params", str(params("base"))]) == 0
    yield root, params
    mp.undo()


def _db(root: Path, sql: str, *args: object) -> list[tuple]:
    try:
        with sqlite3.connect(root / "mlflow.db", timeout=30) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # table not created yet
        return []


def _spawn(root: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cachewise.cli", *argv], cwd=root, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _term_when(proc: subprocess.Popen, ready, limit_s: float = 300.0) -> tuple[int, str]:
    """SIGTERM ``proc`` as soon as ``ready()`` holds; its exit status and stderr."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _staged_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".staged-" in p.name or ".old-" in p.name]


def test_train_keeps_previous_outputs_when_mlflow_logging_fails(pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    root, params = pipeline
    p, out = str(params("fail")), root / "out-fail"
    assert main(["train", "--params", p, "--out", str(out)]) == 0
    before = {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()}
    import mlflow
    from mlflow.exceptions import MlflowException

    def refuse(*args, **kwargs):
        raise MlflowException("the tracking store is read-only")

    monkeypatch.setattr(mlflow, "log_params", refuse)
    assert main(["train", "--params", p, "--out", str(out)]) == 2
    assert {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()} == before
    assert not _staged_leftovers(root)
    assert not _db(root, "select run_uuid from runs where status = 'RUNNING'")


def test_a_run_whose_ending_fails_once_is_still_ended(pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging fails with a database error and so does the first attempt to end the run (seen in
    CI after a SIGTERM: the run was left RUNNING); the run still ends FAILED, nothing is written."""
    root, params = pipeline
    p, out = str(params("endfail")), root / "out-endfail"
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    real_end, calls = MlflowClient.set_terminated, []

    def end_once_locked(self, run_id, status=None, *args, **kwargs):  # mlflow.end_run pops the run, then fails here
        calls.append(status)
        if len(calls) == 1:
            locked()
        return real_end(self, run_id, status, *args, **kwargs)

    monkeypatch.setattr(mlflow, "log_metrics", locked)
    monkeypatch.setattr(MlflowClient, "set_terminated", end_once_locked)
    assert main(["train", "--params", p, "--out", str(out)]) == 2
    assert calls == ["FAILED", "FAILED"]
    assert not _db(root, "select run_uuid from runs where status = 'RUNNING'")
    assert mlflow.active_run() is None  # ended for this process too: the next run can start
    assert not out.exists() and not _staged_leftovers(root)


def test_sigterm_during_train_leaves_no_running_run_and_a_clean_rerun(pipeline) -> None:
    root, params = pipeline
    p, out = str(params("term")), root / "out-term"
    known = {r[0] for r in _db(root, "select run_uuid from runs")}
    proc = _spawn(root, "train", "--params", p, "--out", str(out))
    started = lambda: any(r[0] not in known for r in _db(root, "select run_uuid from runs where status = 'RUNNING'"))  # noqa: E731
    rc, err = _term_when(proc, started)
    new = {r[0]: r[1] for r in _db(root, "select run_uuid, status from runs") if r[0] not in known}
    assert rc == 128 + signal.SIGTERM, err
    assert len(new) == 1, (new, err)
    (status,) = new.values()
    if status == "FINISHED":  # the kill landed in the last step (swap outputs, end run): it completed
        assert load_exported(out).spec["model_sha256"]
    else:  # the usual case: killed while logging
        assert status == "KILLED" and not out.exists(), (status, err)
    assert not _staged_leftovers(root)  # nothing half-written
    assert main(["train", "--params", p, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert _db(root, "select status from runs where run_uuid = ?", record["run_id"]) == [("FINISHED",)]
    assert load_exported(out).spec["model_sha256"]


def test_sigterm_during_export_then_a_clean_rerun(pipeline) -> None:
    root, params = pipeline
    p, out = params("exp"), root / "out-exp"
    assert main(["train", "--params", str(p), "--out", str(out)]) == 0
    proc = _spawn(root, "export", "--params", str(p), "--run", str(out / "run.json"))
    registered = lambda: bool(_db(root, "select version from model_versions where name = 'm-exp'"))  # noqa: E731
    rc, err = _term_when(proc, registered)
    assert rc in (0, 128 + signal.SIGTERM), err  # stopped, or done before the signal could land (never -15: cli.entry)
    export_dir = root / "models" / "exp"
    if rc == 0 or export_dir.exists():  # finished, or killed after the swap: it must be complete
        load_exported(export_dir)
    assert not _staged_leftovers(export_dir.parent)
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 0
    assert load_exported(export_dir).spec["model_sha256"]
    versions = _db(root, "select version from model_versions where name = 'm-exp'")
    assert versions == [(1,)]
    tags = dict(_db(root, "select key, value from model_version_tags where name = 'm-exp'"))
    assert float(tags["pairwise_accuracy"]) > 0 and tags["feature_set_version"]


def test_export_with_undefined_accuracy_registers_once_and_exports(pipeline, capsys) -> None:
    root, params = pipeline
    p, out = params("null"), root / "out-null"
    assert main(["train", "--params", str(p), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "pairwise_accuracy": None}))  # too few held-out tasks
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 0
    assert "@champion moved to version 1" in capsys.readouterr().out
    assert dict(_db(root, "select key, value from model_version_tags where name = 'm-null'"))["pairwise_accuracy"] == "nan"
    assert load_exported(root / "models" / "null").spec["model_sha256"]
    # a later version with a defined accuracy beats the undefined holder
    assert main(["train", "--params", str(p), "--out", str(out)]) == 0
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 0
    assert "@champion moved to version 2" in capsys.readouterr().out


def test_export_of_an_unusable_model_registers_nothing(pipeline, capsys) -> None:
    root, params = pipeline
    p, out = params("bad"), root / "out-bad"
    assert main(["train", "--params", str(p), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "model_uri": "models:/m-base/999"}))
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("cachewise export: error:")
    assert not _db(root, "select version from model_versions where name = 'm-bad'")
    assert not (root / "models" / "bad").exists()


def test_a_champion_without_checksum_is_replaced(pipeline, capsys) -> None:
    """A version registered before specs carried ``model_sha256`` cannot be served by URI: any checked one replaces it."""
    from mlflow import MlflowClient

    root, params = pipeline
    p, out = params("legacy"), root / "out-legacy"
    assert main(["train", "--params", str(p), "--out", str(out)]) == 0
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 0
    MlflowClient().delete_model_version_tag("m-legacy", "1", "model_sha256")  # as an older export left it
    worse = params("legacy", lightgbm={"num_boost_round": 1, "early_stopping_rounds": 1, "learning_rate": 0.01})
    assert main(["train", "--params", str(worse), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", "--params", str(p), "--run", str(out / "run.json")]) == 0
    assert "@champion moved to version 2: @champion version 1 has no model checksum" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigterm_swallowed_in_a_weakref_callback_or_deferred_still_exits_143(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python drops the handler's SystemExit when SIGTERM lands in a weakref callback (seen in CI,
    inside SQLAlchemy's cleanup); the command must still stop before committing and exit 143."""
    import types
    import weakref

    from cachewise import cli

    committed: list[bool] = []

    class Thing:
        pass

    def run(args) -> int:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))  # noqa: F841
        del thing  # the callback runs, the handler raises inside it, Python ignores that
        cli.stop_if_terminated()
        committed.append(True)
        return 0

    def run_deferred(args) -> int:  # a SIGTERM inside a state change lets it complete, then stops
        with cli.sigterm_deferred():
            signal.raise_signal(signal.SIGTERM)
            committed.append(True)
        committed.append(False)  # never reached
        return 0

    def run_twice(args) -> int:  # a second SIGTERM stops a deferred step at once
        with cli.sigterm_deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            committed.append(False)  # never reached
        return 0

    fake = types.SimpleNamespace(configure=lambda parser: None, run=run)
    monkeypatch.setitem(sys.modules, "cachewise_fake_command", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("cachewise_fake_command", "a command that gets SIGTERM"))
    with pytest.raises(SystemExit) as stop:  # as in the real command: it leaves main, exit status 143
        cli.main(["fake"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert not committed
    monkeypatch.setattr(fake, "run", run_deferred)
    with pytest.raises(SystemExit) as stop:
        cli.main(["fake"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert committed == [True]
    monkeypatch.setattr(fake, "run", run_twice)
    with pytest.raises(SystemExit) as stop:
        cli.main(["fake"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert committed == [True]


def test_python_m_runs_the_one_cli_module_the_subcommands_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m cachewise.cli`` (the form these tests spawn) runs the file as ``__main__``, a
    second copy of the module: its SIGTERM handler set the copy's flags while train deferred and
    checked ``cachewise.cli``'s, so a SIGTERM was raised inside SQLite and left the run RUNNING
    (seen in CI). The ``__main__`` block must call ``cachewise.cli.main``."""
    import runpy

    from cachewise import cli

    calls: list[object] = []
    at_exit: list[tuple] = []
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # unset, the entry would re-execute (tests/test_cli_hash_seed.py)
    monkeypatch.setattr(cli, "main", lambda argv=None, **kw: calls.append((argv, kw)) or 0)
    monkeypatch.setattr(cli.atexit, "register", lambda *args: at_exit.append(args))  # not into pytest's own exit
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("cachewise.cli", run_name="__main__")
    # The console entry keeps main's SIGTERM handler to the exit and ignores SIGTERM from its last atexit
    # callback on: a SIGTERM after the command finished must not kill the process with -15 (the export
    # case above did; the shutdown window is tested in a fresh interpreter below).
    assert stop.value.code == 0 and calls == [(None, {"keep_sigterm_handler": True})]
    assert at_exit == [(signal.signal, signal.SIGTERM, signal.SIG_IGN)]


_LATE_SIGTERM = """
import gc, os, signal, sys, time
from cachewise import cli

class Late:  # collected by shutdown's garbage collection, after Python disabled its signal handlers
    def __del__(self, kill=os.kill, pid=os.getpid(), sig=signal.SIGTERM, sleep=time.sleep, err=sys.stderr):
        kill(pid, sig)
        sleep(0.2)
        err.write("survived the late SIGTERM\\n")
        err.flush()

gc.disable()  # no collection before shutdown's own
late = Late()
late.cycle = late
del late
cli.main = lambda argv=None, keep_sigterm_handler=False: 0  # a command that finished
cli.entry()
"""


def test_a_sigterm_during_interpreter_shutdown_does_not_kill_the_command(tmp_path: Path) -> None:
    """The console entry's exit is not killed by a SIGTERM landing late in shutdown (module teardown,
    where Python has put back the default action): the export case above got -15 that way in CI.
    Reproduced deterministically: an object collected by shutdown's garbage collection signals its
    own process. Without the entry's last ``atexit`` callback the process dies with -15."""
    script = tmp_path / "late_sigterm.py"
    script.write_text(_LATE_SIGTERM)
    done = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "survived the late SIGTERM" in done.stderr


def test_main_restores_the_sigterm_handler_unless_asked_to_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process callers (tests, library code) get their handler back; the console entry keeps main's."""
    import types

    from cachewise import cli

    fake = types.SimpleNamespace(configure=lambda parser: None, run=lambda args: 0)
    monkeypatch.setitem(sys.modules, "cachewise_fake_command", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("cachewise_fake_command", "a command that does nothing"))
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["fake"]) == 0
        assert signal.getsignal(signal.SIGTERM) is before
        assert cli.main(["fake"], keep_sigterm_handler=True) == 0
        assert signal.getsignal(signal.SIGTERM) is cli._terminate
    finally:
        signal.signal(signal.SIGTERM, before)
