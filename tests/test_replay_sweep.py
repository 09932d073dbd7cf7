"""``run_grid``: the rows do not depend on how many worker processes ran the parts, nor on
which process ran which part (real vLLM scheduler, synthetic sessions, policies without a model)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.replay.costmodel import load_cost_model
from cachewise.replay.driver import ArrivalParams
from cachewise.replay.config import EngineSettings
from cachewise.replay.policies import IdleStats, PolicyContext
from cachewise.replay.runner import Replayer
from cachewise.replay.selection import select_sessions
from cachewise.replay.sweep import run_grid
from cachewise.replay.workload import WorkloadParams, build_workload

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("lru", "lru_arrival", "heuristic", "continuum", "cachewise_nomodel", "infinite")


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("sweep")
    generate_corpus(root, seed=5, sessions=12)
    return load_sources([root])[0]


def test_rows_do_not_depend_on_workers(events: pd.DataFrame) -> None:
    cost = load_cost_model(REPO / "replay" / "cost_coefficients.json", "llama-3.1-8b-bf16")
    engine = EngineSettings().for_scale(32)

    def replayer_for(seed: int) -> Replayer:
        chosen = select_sessions(events, "all", 4, seed)
        workload = build_workload(events, WorkloadParams(token_scale=32), chosen.sessions)
        return Replayer(workload, cost, engine, PolicyContext(workload, IdleStats.fit(chosen.fit_events)), seed=seed)

    args = (replayer_for, (0, 1, 2), POLICIES, (0.3, 0.6), (2,), ArrivalParams(concurrency=2))
    serial = run_grid(*args, progress=False, workers=1)
    parallel = run_grid(*args, progress=False, workers=2)
    assert len(serial) == 3 * 2 * len(POLICIES)
    assert list(serial["seed"]) == sorted(serial["seed"])  # seed order, then grid order
    assert (serial["evictions"] > 0).any()  # the comparison is not between idle runs
    kept = [c for c in serial.columns if "cpu" not in c and "overhead" not in c]  # measured CPU time differs run to run
    pd.testing.assert_frame_equal(serial[kept], parallel[kept])
