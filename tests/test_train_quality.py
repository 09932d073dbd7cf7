"""Quality goal on the real Claude Code traces: on held-out tasks the model beats every baseline."""

from __future__ import annotations

from pathlib import Path

import yaml

from cachewise.data.ingest import load_sources
from cachewise.features.featurize import featurize
from cachewise.train.train import train_model

REPO = Path(__file__).resolve().parents[1]


def test_model_beats_every_baseline_on_held_out_real_tasks(shared_traces):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    horizon = float(params["features"]["horizon_s"])
    events, _ = load_sources([shared_traces / "claude-code"])
    frame = featurize(events, horizon).frame
    result = train_model(frame, {}, params["train"], horizon, "params.yaml:train")
    metrics = result.metrics
    model = metrics["model"]["pairwise_accuracy"]
    assert metrics["split"]["test_tasks"] >= 20 and metrics["pairs"]["compared"] > 10_000
    for name, scores in metrics["baselines"].items():
        assert model > scores["pairwise_accuracy"], f"model {model:.4f} <= {name} {scores['pairwise_accuracy']:.4f}"
    assert model >= 0.85
    assert metrics["model"]["mae_log"] < metrics["baselines"]["per_tool_mean"]["mae_log"]
