"""Benchmark: wall time of the whole offline pipeline (`dvc repro`) from a fresh clone.

Clones the committed repository into a temporary folder (so the working tree, its DVC
cache and its MLflow database are untouched), points ``ingest.sources`` at the real traces
when they exist (else the run uses the embedded synthetic corpus and says so), and times
``dvc repro`` end to end, then a second, no-op ``dvc repro``. Prints the figures.

    python tests/benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TRACES = (REPO / ".." / "shared" / "traces" / "claude-code").resolve()


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Clone, configure, and time two ``dvc repro`` runs."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    with tempfile.TemporaryDirectory(prefix="cachewise-bench-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        params = yaml.safe_load((clone / "params.yaml").read_text())
        corpus = "synthetic (no real traces found)"
        if TRACES.is_dir():
            params["ingest"]["sources"] = [str(TRACES)]
            corpus = str(TRACES)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{clone}/mlflow.db")
        first = _timed([dvc, "repro"], clone, env)
        second = _timed([dvc, "repro"], clone, env)
    print(f"corpus: {corpus}")
    print(f"dvc repro, fresh clone:        {first:8.1f} s")
    print(f"dvc repro, nothing changed:    {second:8.1f} s")


if __name__ == "__main__":
    main()
