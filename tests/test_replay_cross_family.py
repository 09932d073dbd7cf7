"""Cross-family replay: the held-out split it replays is the training split; the table; a clean skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cachewise.replay.cross_family import held_out, report, run_cross_family
from cachewise.train.split import split_by_task


def test_held_out_rows_are_the_training_splits_test_tasks_in_any_row_order() -> None:
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"task_id": [f"t{i}" for i in rng.integers(0, 40, 400)]})
    train = {"seed": 42, "test_fraction": 0.25, "valid_fraction": 0.2}
    mask = held_out(events, train)
    shuffled = events.sample(frac=1, random_state=1).reset_index(drop=True)
    parts = split_by_task(shuffled["task_id"], 0.25, 0.2, 42)  # as train_model splits its (reordered) frame
    assert set(events["task_id"][mask]) == set(shuffled["task_id"].iloc[parts.test])
    assert 0 < mask.mean() < 0.5


def _row(policy: str, harmful: int, hit: float, switches: int = 0) -> dict:
    return {"family": "mooncake", "trained_on": "others", "capacity_frac": 0.5, "concurrency": 32, "policy": policy,
            "harmful_evictions": harmful, "hit_rate": hit, "guard_switches": switches}


def test_report_states_the_targets_per_cell() -> None:
    table = pd.DataFrame([_row("lru", 1000, 0.20), _row("learned_unguarded", 1400, 0.12), _row("learned", 1010, 0.198, 1)])
    text = report(table)
    line = next(row for row in text.splitlines() if row.startswith("| mooncake"))
    assert "1.010" in line and "-0.20" in line and "| 1 | yes |" in line
    worse = pd.DataFrame([_row("lru", 1000, 0.20), _row("learned", 1100, 0.19, 1)])
    assert "**no**" in report(worse)


def test_fewer_than_two_families_writes_a_skip_report(tmp_path: Path) -> None:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["cross_family"] = {"families": {"a": [str(tmp_path / "missing")], "b": [str(tmp_path / "absent")]},
                              "out": str(tmp_path / "out")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    report_path = run_cross_family(str(path))
    assert "Skipped" in report_path.read_text()
    assert (tmp_path / "out" / "results.csv").exists()
