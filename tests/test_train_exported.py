"""Training on a small synthetic corpus, and loading the exported model (and its failures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.features.spec import FEATURE_NAMES
from cachewise.scoring.exported import ModelLoadError, load_exported
from cachewise.train.train import train_model, write_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, np.ndarray]:
    """(export folder, train result, feature matrix) of a model trained on 30 synthetic sessions."""
    root = tmp_path_factory.mktemp("exported")
    generate_corpus(root / "corpus", seed=5, sessions=30)
    events, _ = load_sources([root / "corpus"])
    frame = featurize(events, horizon_s=600.0).frame
    tparams = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    result = train_model(frame, {"events_sha256": "test"}, tparams, 600.0, "params.yaml:train")
    write_outputs(result, root / "model")
    return root / "model", result, frame[list(FEATURE_NAMES)].to_numpy()


def test_training_writes_a_loadable_export_with_metrics(trained):
    folder, result, matrix = trained
    assert {p.name for p in folder.iterdir()} >= {"model.txt", "spec.json", "metrics.json", "plots"}
    assert {p.name for p in (folder / "plots").iterdir()} >= {
        "feature_importance.csv", "feature_importance.png", "pred_vs_true.csv", "calibration.csv",
    }
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"lru", "per_tool_mean", "constant"}
    assert 0.0 <= metrics["model"]["pairwise_accuracy"] <= 1.0 and metrics["pairs"]["compared"] > 0
    split = metrics["split"]
    assert split["train_tasks"] + split["valid_tasks"] + split["test_tasks"] == 23  # tasks of the corpus

    model = load_exported(folder)
    spec = model.spec
    assert spec["feature_names"] == list(FEATURE_NAMES)
    assert spec["idle_quantiles"]["__all__"]["p99"] > 0
    assert set(spec["residual_quantiles"]) == {"model", "per_tool_mean", "constant"}
    batch = model.predict(matrix[:50])
    np.testing.assert_allclose(batch, result.booster.predict(matrix[:50]), rtol=1e-12)
    single = np.array([model.predict_one(row) for row in matrix[:50]])
    np.testing.assert_allclose(single, batch, rtol=1e-9, atol=1e-12)
    assert model.expected_gap_one(float(batch[0]), 1e6) == 2e6  # far past every residual


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_missing_files(trained, tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_exported(tmp_path / "nowhere")
    for name in ("model.txt", "spec.json"):
        target = _copy(trained[0], tmp_path / name)
        (target / name).unlink()
        with pytest.raises(ModelLoadError, match=f"missing .*{name}"):
            load_exported(target)


def test_corrupt_files(trained, tmp_path):
    target = _copy(trained[0], tmp_path / "model")
    (target / "model.txt").write_text("tree\nthis is not a model\n")
    with pytest.raises(ModelLoadError, match="model.txt"):
        load_exported(target)
    target = _copy(trained[0], tmp_path / "spec")
    (target / "spec.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="spec.json"):
        load_exported(target)


@pytest.mark.parametrize(
    "key, value",
    [
        ("feature_set_version", "0-old"),
        ("feature_names", list(reversed(FEATURE_NAMES))),
        ("label_transform", "seconds"),
    ],
)
def test_feature_set_mismatch(trained, tmp_path, key, value):
    target = _copy(trained[0], tmp_path)
    spec = json.loads((target / "spec.json").read_text())
    spec[key] = value
    (target / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match=key):
        load_exported(target)


def test_the_export_carries_the_remaining_work_model(trained):
    """train fits the remaining-work model beside the reuse model; the export loads it, its single-row
    predictions are the booster's, and new sessions get the training mean at sessions' first calls."""
    folder, result, matrix = trained
    assert (folder / "remaining.txt").is_file()
    section = result.spec["remaining"]
    assert section["file"] == "remaining.txt" and section["label_transform"] == "log1p_seconds"
    assert set(result.metrics["remaining"]) == {"spearman", "spearman_fewest_calls_first", "test_rows"}
    model = load_exported(folder)
    assert model.remaining is not None
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(folder / "remaining.txt"))
    np.testing.assert_allclose([model.remaining.predict_one(r) for r in matrix[:20]], booster.predict(matrix[:20]), rtol=1e-9)
    assert model.remaining.new_session_label == pytest.approx(section["new_session_label"]) and section["new_session_label"] > 0


@pytest.mark.parametrize("damage", ["missing", "corrupt", "replaced", "no_section"])
def test_a_broken_remaining_work_model_leaves_the_reuse_model_serving(trained, tmp_path, damage, caplog):
    """A missing, damaged or unverifiable remaining.txt never stops the load: the reuse model loads,
    ``remaining`` is None and one warning names the file (a spec without the section: no warning)."""
    target = _copy(trained[0], tmp_path)
    path = target / "remaining.txt"
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif damage == "replaced":
        shutil.copyfile(target / "model.txt", path)  # a valid LightGBM model, not the one the spec names
    else:
        spec = json.loads((target / "spec.json").read_text())
        del spec["remaining"]
        (target / "spec.json").write_text(json.dumps(spec))
    with caplog.at_level("WARNING"):
        model = load_exported(target)
    assert model.remaining is None and np.isfinite(model.predict_one(np.zeros(len(FEATURE_NAMES))))
    warned = [r.getMessage() for r in caplog.records if "remaining-work" in r.getMessage()]
    assert (warned == []) if damage == "no_section" else (len(warned) == 1 and "remaining.txt" in warned[0])

