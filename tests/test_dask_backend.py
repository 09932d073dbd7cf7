"""``train.backend: dask`` against the local path on the embedded synthetic corpus (default size).

Featurize: the Dask path (session-partitioned, the same ``featurize``) must give exactly the
local feature rows and labels. Train: same task split; LightGBM data-parallel training on
2 workers bins and sums histograms per worker, so boosters differ slightly; the held-out
metrics must agree within TOLERANCE (absolute, on metrics in [0, 1] / log-seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cachewise.data.ingest import load_sources
from cachewise.data.schema import read_events, write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.features.dask_cluster import DaskSettings, backend_of, dask_client
from cachewise.features.dask_featurize import featurize_on_dask
from cachewise.features.featurize import featurize, read_features
from cachewise.features.params import ParamsError, load_section
from cachewise.features.spec import FEATURE_NAMES
from cachewise.train.dask_backend import early_stop_iteration, features_meta, train_on_dask
from cachewise.train.train import train_model

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
#: |local - dask| allowed on held-out pairwise accuracy / Spearman, and on MAE of the log label.
TOLERANCE = {"pairwise_accuracy": 0.01, "spearman": 0.02, "mae_log": 0.03}  # measured: 0.0004, 0.0005, 0.005
KEY = ["session_id", "thread_id", "call_index"]


@pytest.fixture(scope="module")
def events_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic corpus ``dvc repro`` falls back to (params ``ingest.synthetic``), as events."""
    synth = load_section(PARAMS, "ingest")["synthetic"]
    root = tmp_path_factory.mktemp("dask")
    generate_corpus(root / "corpus", int(synth["seed"]), int(synth["sessions"]))
    events, _ = load_sources([root / "corpus"])
    write_events(events, root / "events.parquet")
    return root / "events.parquet"


def test_dask_featurize_and_train_match_local(events_path: Path, tmp_path: Path) -> None:
    tparams = {**load_section(PARAMS, "train"), "backend": "dask"}
    horizon = float(load_section(PARAMS, "features")["horizon_s"])
    local = featurize(read_events(events_path), horizon)
    with dask_client(DaskSettings(n_workers=2)):
        summary = featurize_on_dask(events_path, tmp_path / "features", "sha", horizon, partitions=4)
    assert int(summary["rows"].sum()) == len(local.frame)
    dask_frame, meta = read_features(tmp_path / "features")
    assert meta == features_meta(tmp_path / "features") and meta["events_sha256"] == "sha"
    a = local.frame.sort_values(KEY).reset_index(drop=True)
    b = dask_frame.sort_values(KEY).reset_index(drop=True)
    np.testing.assert_array_equal(a[list(FEATURE_NAMES)].to_numpy(), b[list(FEATURE_NAMES)].to_numpy())
    np.testing.assert_array_equal(a["label"].to_numpy(), b["label"].to_numpy())

    local_result = train_model(local.frame, meta, tparams, horizon, "test")
    dask_result = train_on_dask(tmp_path / "features", meta, tparams, horizon, "test")
    assert dask_result.spec["training_data"]["test_tasks"] == local_result.spec["training_data"]["test_tasks"]
    assert dask_result.metrics["split"] == local_result.metrics["split"]
    for name, tol in TOLERANCE.items():
        lv, dv = local_result.metrics["model"][name], dask_result.metrics["model"][name]
        assert abs(lv - dv) <= tol, f"{name}: local {lv:.4f} vs dask {dv:.4f} (tolerance {tol})"
    assert dask_result.metrics["model"]["pairwise_accuracy"] > dask_result.metrics["baselines"]["lru"]["pairwise_accuracy"]


def test_early_stop_iteration_is_lightgbms_rule() -> None:
    assert early_stop_iteration([5, 4, 3, 3.5, 3.2, 3.1, 2.9, 3], patience=4) == 7
    assert early_stop_iteration([5, 4, 3, 3.5, 3.2, 3.1, 2.9, 3], patience=3) == 3  # stopped before 2.9
    assert early_stop_iteration([1.0], patience=5) == 1


def test_backend_setting_is_checked() -> None:
    assert backend_of({}, "p") == "local"
    with pytest.raises(ParamsError, match="backend"):
        backend_of({"backend": "spark"}, "p")
    with pytest.raises(ParamsError, match="unknown"):
        DaskSettings.from_params({"workers": 2}, "p")
