"""The console command pins Python's hash seed (cachewise.cli, "Repeatable runs").

The replay's host tier iterates sets of block keys inside vLLM's CPU offloading manager, so a run
by hand repeats only under one hash seed. These run the real entry in a fresh interpreter and read
the seed the command's work ran under, through a ``sitecustomize`` that reports it at exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_REPORT = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: print('hash-seed', os.environ.get('PYTHONHASHSEED'),"
    " sys.flags.hash_randomization, flush=True))\n"
)


def _run(tmp_path: Path, seed: str | None, *argv: str) -> list[str]:
    (tmp_path / "sitecustomize.py").write_text(_REPORT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("hash-seed")]


@pytest.mark.parametrize("how", ["python -m", "console script", "cross-family table"])
def test_a_command_without_a_seed_runs_once_under_seed_0(tmp_path: Path, how: str) -> None:
    if how == "console script":
        script = Path(sys.executable).with_name("cachewise")
        if not script.exists():
            pytest.skip(f"no console script at {script} (the package is not installed in this interpreter's env)")
        argv: tuple[str, ...] = (str(script), "ingest", "--help")
    elif how == "cross-family table":  # the wide table's command (README), not a `cachewise` subcommand
        argv = (sys.executable, "-m", "cachewise.replay.cross_family", "--help")
    else:
        argv = (sys.executable, "-m", "cachewise.cli", "ingest", "--help")
    # One report: the first interpreter was replaced (exec runs no atexit), the second ran the command.
    assert _run(tmp_path, None, *argv) == ["hash-seed 0 0"]


def test_a_seed_the_user_sets_is_kept(tmp_path: Path) -> None:
    argv = (sys.executable, "-m", "cachewise.cli", "ingest", "--help")
    assert _run(tmp_path, "7", *argv) == ["hash-seed 7 1"]
    assert _run(tmp_path, "random", *argv) == ["hash-seed random 1"]
