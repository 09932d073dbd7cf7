"""Training on mixed traffic: held-out quality is reported per trace family in metrics.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.train.train import train_model

REPO = Path(__file__).resolve().parents[1]


def _chat_trace(path: Path, conversations: int, seed: int) -> Path:
    """A Mooncake-style block-hash trace: multi-turn chats growing a prefix, minutes apart."""
    rng = random.Random(seed)
    lines, next_id = [], 1000
    for c in range(conversations):
        blocks, t = [0, next_id], rng.uniform(0, 3600)
        next_id += 1
        for _ in range(rng.randint(2, 6)):
            blocks = blocks + list(range(next_id, next_id + rng.randint(1, 3)))
            next_id += 4
            lines.append({"timestamp": int(t * 1000), "input_length": 512 * len(blocks), "output_length": 200,
                          "hash_ids": list(blocks)})
            t += rng.expovariate(1 / 120)
    lines.sort(key=lambda x: x["timestamp"])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_metrics_break_held_out_quality_down_by_family(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    horizon = float(params["features"]["horizon_s"])
    generate_corpus(tmp_path / "synthetic", seed=3, sessions=20)
    trace = _chat_trace(tmp_path / "conversation_trace.jsonl", 80, seed=4)
    events, _ = load_sources([tmp_path / "synthetic", trace])
    assert set(events["source"]) == {"synthetic", "blockhash"}
    frame = featurize(events, horizon).frame
    metrics = train_model(frame, {}, params["train"], horizon, "params.yaml:train").metrics
    families = metrics["by_family"]
    assert set(families) == set(events["source"])
    assert sum(f["n_events"] for f in families.values()) == metrics["n_events"]
    for name, family in families.items():
        assert {"model", "baselines", "pairs"} <= set(family), name
        assert family["pairs"]["compared"] > 0, name
