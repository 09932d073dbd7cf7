"""The replay's settings: params.yaml section, CLI overrides, and errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from cachewise.replay.config import ReplayConfigError, load_config


def write(tmp_path, section: dict) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"replay": section}))
    return str(path)


def test_defaults_without_a_file(tmp_path) -> None:
    config = load_config(tmp_path / "absent.yaml", {})
    assert config.capacity_frac == 0.5 and config.concurrency == 32 and config.workload.token_scale == 16


def test_section_then_flags(tmp_path) -> None:
    path = write(tmp_path, {"concurrency": 8, "workload": {"max_gap_s": 30}, "sweep": {"capacity_fracs": [0.2, 0.4]}})
    config = load_config(path, {"concurrency": 4, "token_scale": 2, "policies": ("lru", "recorded_gap"), "model": None})
    assert config.concurrency == 4
    assert (config.workload.token_scale, config.workload.max_gap_s) == (2, 30)
    assert config.sweep.capacity_fracs == (0.2, 0.4)
    assert config.policies == ("lru", "recorded_gap") and config.model == "models/cachewise-reuse"
    assert config.engine.for_scale(2).max_num_batched_tokens == 8192  # replay tokens per step of 2 real ones


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"capacity_fraction": 0.5}, r"replay: unknown keys \['capacity_fraction'\]"),
        ({"concurrency": "many"}, r"replay\.concurrency: 'many' is not of type"),
        ({"workload": {"token_scale": 0}}, r"token_scale must be >= 1"),
        ({"engine": {"blocks": 3}}, r"replay\.engine: unknown keys"),
        ({"policies": ["lru", "fifo"]}, r"unknown policies \['fifo'\]"),
        ({"policies": ["lru", "belady"]}, r"unknown policies \['belady'\] \(Belady's MIN is computed for every run"),
        ({"seeds": 0}, r"seeds must be >= 1"),
        ({"split": "train"}, r"split must be 'test' or 'all'"),
        ({"guard_start": "on"}, r"guard_start must be one of \('certified', 'lru', 'learned'\)"),
    ],
)
def test_errors_name_the_key(tmp_path, section: dict, message: str) -> None:
    with pytest.raises(ReplayConfigError, match=message):
        load_config(write(tmp_path, section), {})


def test_dvc_plot_lines_are_the_evaluate_stage_policies() -> None:
    """dvc.yaml's replay plots draw one line per policy the evaluate stage runs, at its concurrency.

    The CSVs have one column per ``replay.policies`` entry (replay/report.py), so a y-list that
    drifts from params.yaml names columns that do not exist or leaves policies out of the plot.
    """
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    replay = yaml.safe_load((repo / "params.yaml").read_text())["replay"]
    plots = [p for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"] if isinstance(p, dict)]
    csvs = {path: spec for plot in plots for path, spec in plot.items() if path.startswith("data/replay/plots/")}
    assert csvs, "dvc.yaml has no replay CSV plots"
    concurrency = replay["sweep"]["concurrency"]
    for path, spec in csvs.items():
        assert spec["y"] == replay["policies"], path
        assert any(path.endswith(f"_c{c}.csv") for c in concurrency), path
