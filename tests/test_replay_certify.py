"""The traffic certificate: its rule on replay rows, its settings, and how a model folder reads it.

The certificate's end-to-end path (``cachewise export`` replaying the validation sessions and
writing ``certificate.json``, read back by :func:`load_exported`) is in tests/test_registry.py;
the guard acting on it in tests/test_runtime_guard.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cachewise.replay.certify import CertifySettings, validation_events, verdict
from cachewise.scoring.exported import CERTIFICATE_FILE, load_exported, read_certificate
from cachewise.train.split import split_by_task


def _rows(harmful: dict[float, list[tuple[float, float]]], hit_gain: float = 0.01) -> pd.DataFrame:
    """Replay rows: per capacity, per seed (LRU, learned) harmful evictions; hit rates 0.5 and 0.5 + ``hit_gain``."""
    rows = []
    for capacity, seeds in harmful.items():
        for seed, (lru, learned) in enumerate(seeds):
            rows.append({"policy": "lru", "capacity_frac": capacity, "seed": seed, "harmful_evictions": lru, "hit_rate": 0.5})
            rows.append(
                {"policy": "learned_unguarded", "capacity_frac": capacity, "seed": seed, "harmful_evictions": learned, "hit_rate": 0.5 + hit_gain}
            )
    return pd.DataFrame(rows)


SETTINGS = CertifySettings(capacity_fracs=(0.25, 0.5), seeds=3, min_harmful=100.0)


def test_certified_only_with_a_measured_gain_and_no_capacity_lost() -> None:
    better = [(1000, 800), (1100, 900), (900, 750)]
    entry = verdict(_rows({0.25: better, 0.5: [(500, 420), (520, 430), (480, 400)]}), SETTINGS)
    assert entry["certified"], entry["reason"]
    assert [c["capacity_frac"] for c in entry["capacities"]] == [0.25, 0.5]
    assert entry["capacities"][0]["harmful_ratio"] == pytest.approx((0.8 + 900 / 1100 + 750 / 900) / 3)

    # a capacity whose seeds scatter (0.81, 0.94, 0.56: 0.77 +- 0.48 alone) counts with the others
    scattered = [(9897, 8017), (1846, 1728), (1537, 861)]
    assert verdict(_rows({0.25: better, 0.5: scattered}), SETTINGS)["certified"]
    # ... but the pooled interval must be wholly below 1
    assert not verdict(_rows({0.5: scattered}), SETTINGS)["certified"]
    # a capacity lost on the mean withholds it, whatever the others show
    mixed = verdict(_rows({0.25: better, 0.5: [(500, 520), (520, 560), (480, 470)]}), SETTINGS)
    assert not mixed["certified"] and "0.5:" in mixed["reason"]
    # fewer harmful evictions but a lower hit rate
    assert not verdict(_rows({0.25: better}, hit_gain=-0.01), SETTINGS)["certified"]
    # a capacity with too few of LRU's harmful evictions is no evidence either way ...
    quiet = verdict(_rows({0.25: better, 0.5: [(20, 40), (10, 30), (30, 50)]}), SETTINGS)
    assert quiet["certified"] and not quiet["capacities"][1]["evidence"]
    # ... and with no capacity of evidence nothing is certified
    none = verdict(_rows({0.5: [(20, 10), (10, 5), (30, 15)]}), SETTINGS)
    assert not none["certified"] and "no capacity" in none["reason"]
    # one seed gives no interval
    assert not verdict(_rows({0.25: better[:1]}), SETTINGS)["certified"]


def test_settings_are_checked() -> None:
    assert CertifySettings.from_section({"capacity_fracs": [0.5], "seeds": 2}).capacity_fracs == (0.5,)
    assert CertifySettings.from_section(None) == CertifySettings()
    for bad in ({"seeds": 1}, {"capacity_fracs": [0.0]}, {"capacity_fracs": []}, {"min_harmful": 0}, {"max_sesions": 4}):
        with pytest.raises(ValueError, match="certify"):
            CertifySettings.from_section(bad)


def test_validation_events_are_the_splits_validation_tasks() -> None:
    events = pd.DataFrame({"task_id": [f"t{i // 3}" for i in range(300)], "source": "synthetic", "session_id": "s"})
    train = {"test_fraction": 0.25, "valid_fraction": 0.2, "seed": 42}
    parts = split_by_task(events["task_id"], 0.25, 0.2, 42)
    valid = validation_events(events, train)
    assert sorted(valid.index) == sorted(parts.valid)
    assert not set(valid["task_id"]) & set(events["task_id"].iloc[parts.test])


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    from cachewise.runtime.cpu_engine import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("certified"))


def test_a_model_folder_reads_only_its_own_readable_certificate(model_folder: Path, tmp_path: Path, caplog) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    sha = json.loads((folder / "spec.json").read_text())["model_sha256"]
    assert load_exported(folder).certified_families == frozenset()  # none written
    families = {"claude_code": {"certified": True}, "blockhash": {"certified": False}, "odd": {"certified": "yes"}}
    (folder / CERTIFICATE_FILE).write_text(json.dumps({"model_sha256": sha, "families": families}))
    assert load_exported(folder).certified_families == frozenset({"claude_code"})
    caplog.set_level(logging.WARNING)
    for text, words in (
        (json.dumps({"model_sha256": "0" * 64, "families": families}), "another model"),
        ('{"model_sha256": "' + sha + '", "families": {"claude_code": {"certified": tr', "not a readable"),
        (json.dumps([1, 2]), "not a readable"),
        (json.dumps({"model_sha256": sha}), "not a readable"),
    ):
        caplog.clear()
        (folder / CERTIFICATE_FILE).write_text(text)
        assert load_exported(folder).certified_families == frozenset()  # the model still loads and serves
        assert words in caplog.text and CERTIFICATE_FILE in caplog.text
    assert read_certificate(folder / "absent.json", sha) == frozenset()
