"""``cachewise replay`` end to end: synthetic corpus -> events -> trained model -> replay report.

Uses the embedded SYNTHETIC corpus (no real traces needed), the real feature and training
code, and vLLM's real scheduler for every policy, the learned one included.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cachewise.cli import main
from cachewise.data.ingest import load_sources
from cachewise.data.schema import write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.features.params import load_section
from cachewise.runtime.replay.policies import POLICIES
from cachewise.train.train import train_model, write_outputs

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """Events, an exported model trained on them, and a params file with a small replay section."""
    tmp = tmp_path_factory.mktemp("replay_cli")
    generate_corpus(tmp / "corpus", seed=3, sessions=16)
    events, _ = load_sources([tmp / "corpus"])
    write_events(events, tmp / "events.parquet")
    train = load_section(REPO / "params.yaml", "train")
    horizon = float(load_section(REPO / "params.yaml", "features")["horizon_s"])
    table = featurize(events, horizon)
    result = train_model(
        table.frame, {}, {**train, "lightgbm": {**train["lightgbm"], "num_boost_round": 30}}, horizon, "test"
    )
    write_outputs(result, tmp / "model")
    params = tmp / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "train": train,
                "replay": {
                    "max_sessions": 4,
                    "workload": {"token_scale": 32},
                    "sweep": {"capacity_fracs": [0.3], "concurrency": [2]},
                },
            }
        )
    )
    return {"events": tmp / "events.parquet", "model": tmp / "model", "params": params, "out": tmp / "out"}


def test_replay_writes_results_plots_and_report(pipeline: dict[str, Path], capsys) -> None:
    argv = [
        "replay",
        "--params", str(pipeline["params"]),
        "--events", str(pipeline["events"]),
        "--model", str(pipeline["model"]),
        "--policies", ",".join(POLICIES),
        "--capacity-frac", "0.5",
        "--concurrency", "4",
        "--out", str(pipeline["out"]),
        "--sweep",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = pipeline["out"]
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["capacity_frac"].unique()) == [0.3, 0.5]
    assert sorted(results["concurrency"].unique()) == [2, 4]  # the sweep's grid plus the headline point
    assert len(results) == 2 * 2 * len(POLICIES)
    by = results[(results["capacity_frac"] == 0.5) & (results["concurrency"] == 4)].set_index("policy")
    assert (results["harmful_evictions"] <= results["evictions"]).all()
    assert (results["recomputed_tokens"] <= results["prefill_tokens"]).all()
    assert by.at["infinite", "evictions"] == 0
    assert by.at["lru", "evictions"] > 0, "0.5 of the peak working set must force evictions"
    assert by.at["learned", "predictor_fallbacks"] == 0 and by.at["learned", "predictor_cpu_s"] > 0
    assert (results["sessions"] == results["sessions"].iloc[0]).all()
    assert (out / "plots" / "capacity_c4.png").stat().st_size > 0
    assert list(pd.read_csv(out / "plots" / "harmful_evictions_c4.csv").columns) == ["capacity_frac", *POLICIES]
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "gap_harmful" in report and "## Sweep: 4 concurrent sessions" in report
    assert "| lru |" in capsys.readouterr().out


def test_learned_without_a_model_is_a_clear_error(pipeline: dict[str, Path], capsys) -> None:
    argv = ["replay", "--params", str(pipeline["params"]), "--events", str(pipeline["events"]),
            "--model", str(pipeline["out"] / "no-such-model"), "--policies", "lru,learned", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_bad_events_path_is_a_clear_error(pipeline: dict[str, Path], capsys) -> None:
    argv = ["replay", "--params", str(pipeline["params"]), "--events", "/nonexistent/events.parquet",
            "--policies", "lru", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "/nonexistent/events.parquet" in capsys.readouterr().err
