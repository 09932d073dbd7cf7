"""Cross-family replay: the held-out split it replays is the training split; the table; a clean skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import pytest

from cachewise.replay.cross_family import Settings, held_out, merged, report, run_cross_family
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
    assert "| 1.010 | -0.20 | – | 1.0 | yes |" in line  # one seed: no interval; unguarded had no gain
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


def test_stage_sizing_overrides_the_wide_one_and_merges_training_params() -> None:
    doc = {"cross_family": {"families": {"a": ["x"]}, "max_sessions": 12, "policies": ["lru", "learned"],
                            "stage": {"max_sessions": 4, "seeds": 1, "capacity_fracs": [0.5],
                                      "train": {"lightgbm": {"num_boost_round": 60}}, "out": "s"}}}
    wide, stage = Settings.from_params(doc), Settings.from_params(doc, stage=True)
    assert (wide.max_sessions, wide.seeds, wide.capacity_fracs, wide.train) == (12, None, None, {})
    assert (stage.max_sessions, stage.seeds, stage.capacity_fracs, stage.out) == (4, 1, (0.5,), "s")
    assert stage.policies == ("lru", "learned")
    train = {"seed": 42, "lightgbm": {"num_boost_round": 400, "learning_rate": 0.05}}
    assert merged(train, stage.train) == {"seed": 42, "lightgbm": {"num_boost_round": 60, "learning_rate": 0.05}}
    assert train["lightgbm"]["num_boost_round"] == 400  # not changed in place
    bad = {"cross_family": {"families": {"a": ["x"]}, "stage": {"max_sesions": 4}}}
    with pytest.raises(ValueError, match="stage: unknown keys"):
        Settings.from_params(bad)


def test_report_names_families_found_and_skipped_and_averages_seeds() -> None:
    rows = [_row("lru", 1000, 0.20), {**_row("lru", 1200, 0.20), "seed": 1}, _row("learned", 1100, 0.20)]
    text = report(pd.DataFrame(rows), ["mooncake"], ["claude_code"], None)
    assert "Families with traces: mooncake." in text and "Skipped (no traces here): claude_code." in text
    assert "only `all` cells" in text
    line = next(row for row in text.splitlines() if row.startswith("| mooncake"))
    assert "1,100 / 20.0%" in line  # LRU: mean of 1,000 and 1,200
    assert "| 1.100 |" in line  # the ratio is paired by seed: learned ran on seed 0 only


def test_report_gives_seed_intervals_and_the_residency_column() -> None:
    rows = []
    for seed, (lru, guarded, jct_lru, jct_cw) in enumerate([(1000, 1000, 300.0, 290.0), (800, 840, 310.0, 300.0),
                                                            (900, 918, 320.0, 316.0)]):
        for policy, harmful, jct in (("lru", lru, jct_lru), ("learned", guarded, jct_lru), ("cachewise", guarded, jct_cw),
                                     ("learned_unguarded", lru - 100, jct_lru)):
            rows.append({**_row(policy, harmful, 0.5), "seed": seed, "jct_s_mean": jct, "certified": False})
    line = next(row for row in report(pd.DataFrame(rows)).splitlines() if row.startswith("| mooncake"))
    cells = [c.strip() for c in line.split("|")]
    ratios = [1.0, 1.05, 1.02]
    half = 4.303 * np.std(ratios, ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert cells[3] == "no" and cells[5] == "3" and cells[10] == f"{np.mean(ratios):.3f} ± {half:.3f}"
    assert cells[12].startswith("-19 ± ")  # gain kept: 0, -40, -18% of the unguarded order's 100 fewer
    assert cells[14] == "**no**"  # mean ratio 1.023 > 1.02
    assert cells[16].startswith("-8.0 ± ")  # cachewise - LRU JCT: -10, -10, -4
