"""Shared test fixtures: where the real traces are (tests that need them skip, with a message, where
they are not), and a small model trained on the embedded synthetic corpus."""

from __future__ import annotations

import os
from pathlib import Path

# vLLM's core must run on this CPU-only machine; set before anything imports vLLM.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = (REPO_ROOT / ".." / "shared" / "traces").resolve()

@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """Path to ../shared/traces; tests using it are skipped where it is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"real traces not found at {SHARED_TRACES}")
    return SHARED_TRACES


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory) -> dict:
    """Events of a 16-session synthetic corpus and a model trained on them by the real pipeline
    code (30 rounds), exported to a folder: ``{"events": path, "model": path, "train": section}``."""
    from cachewise.data.ingest import load_sources
    from cachewise.data.schema import write_events
    from cachewise.data.synthetic import generate_corpus
    from cachewise.features.featurize import featurize
    from cachewise.features.params import load_section
    from cachewise.train.train import train_model, write_outputs

    tmp = tmp_path_factory.mktemp("synthetic_model")
    generate_corpus(tmp / "corpus", seed=3, sessions=16)
    events, _ = load_sources([tmp / "corpus"])
    write_events(events, tmp / "events.parquet")
    train = load_section(REPO_ROOT / "params.yaml", "train")
    horizon = float(load_section(REPO_ROOT / "params.yaml", "features")["horizon_s"])
    table = featurize(events, horizon)
    result = train_model(
        table.frame, {}, {**train, "lightgbm": {**train["lightgbm"], "num_boost_round": 30}}, horizon, "test"
    )
    write_outputs(result, tmp / "model")
    return {"events": tmp / "events.parquet", "model": tmp / "model", "train": train}
