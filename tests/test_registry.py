"""MLflow round trip: featurize -> train -> register -> champion alias -> export, in a temp store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from cachewise.cli import main
from cachewise.data.ingest import load_sources
from cachewise.data.schema import write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import read_features
from cachewise.features.spec import FEATURE_NAMES
from cachewise.scoring.exported import load_exported

REPO = Path(__file__).resolve().parents[1]
URI = "models:/cachewise-reuse@champion"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A pipeline folder with its own params.yaml, events table and SQLite MLflow store."""
    root = tmp_path_factory.mktemp("registry")
    generate_corpus(root / "corpus", seed=11, sessions=30)
    events, _ = load_sources([root / "corpus"])
    write_events(events, root / "data" / "events.parquet")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["out"] = "data/events.parquet"
    params["certify"].update(capacity_fracs=[0.5], max_sessions=4, seeds=2)  # the export's certificate, small
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    worse = json.loads(json.dumps(params))
    worse["train"]["lightgbm"].update(num_boost_round=1, early_stopping_rounds=1, learning_rate=0.01)
    (root / "worse.yaml").write_text(yaml.safe_dump(worse))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    yield root
    mp.undo()


def _cli(*argv: str) -> None:
    assert main(list(argv)) == 0


def test_train_register_champion_export_round_trip(workspace, capsys):
    root = workspace
    p = str(root / "params.yaml")
    _cli("featurize", "--params", p)
    _cli("train", "--params", p, "--out", str(root / "out1"))
    _cli("export", "--params", p, "--run", str(root / "out1" / "run.json"))
    out = capsys.readouterr().out
    assert "@champion moved to version 1" in out

    export_dir = root / "models" / "cachewise-reuse"
    assert sorted(p.name for p in export_dir.iterdir()) == ["certificate.json", "model.txt", "remaining.txt", "spec.json"]
    spec = json.loads((export_dir / "spec.json").read_text())
    certificate = json.loads((export_dir / "certificate.json").read_text())
    assert certificate["model_sha256"] == spec["model_sha256"] and set(certificate["families"]) == {"synthetic"}
    certified = {f for f, entry in certificate["families"].items() if entry["certified"]}
    assert load_exported(export_dir).certified_families == certified
    assert not load_exported(URI).certified_families  # the registry's copy carries no certificate
    assert spec["training_data"]["events_sha256"]  # fingerprint of the events file
    frame, _ = read_features(root / "data" / "features.parquet")
    matrix = frame[list(FEATURE_NAMES)].to_numpy()[:100]
    from_folder = load_exported(export_dir)
    from_registry = load_exported(URI)
    np.testing.assert_array_equal(from_folder.predict(matrix), from_registry.predict(matrix))
    np.testing.assert_allclose([from_registry.predict_one(r) for r in matrix], from_folder.predict(matrix), rtol=1e-9)
    # the train folder is itself the same model
    np.testing.assert_array_equal(load_exported(root / "out1").predict(matrix), from_folder.predict(matrix))

    # A worse model is registered as version 2, but the alias and the export stay on version 1.
    _cli("train", "--params", str(root / "worse.yaml"), "--out", str(root / "out2"))
    worse_acc = json.loads((root / "out2" / "run.json").read_text())["pairwise_accuracy"]
    assert worse_acc < spec["metrics"]["model"]["pairwise_accuracy"]
    _cli("export", "--params", p, "--run", str(root / "out2" / "run.json"))
    out = capsys.readouterr().out
    assert "registered cachewise-reuse version 2; @champion stays on version 1" in out
    assert "does not beat" in out
    np.testing.assert_array_equal(load_exported(export_dir).predict(matrix), from_folder.predict(matrix))
    np.testing.assert_array_equal(load_exported(URI).predict(matrix), from_folder.predict(matrix))

    # Exporting the same run again registers nothing new.
    _cli("export", "--params", p, "--run", str(root / "out2" / "run.json"))
    assert "registered cachewise-reuse version 2;" in capsys.readouterr().out


def test_registry_download_touches_no_mlflow_global(workspace, monkeypatch):
    """A download resolves ``models:/`` in the configured store with MLflow's global URIs left as
    they are, during the download too: a download abandoned after its budget must not restore
    them over a change made meanwhile (it used to set and restore them)."""
    export_dir = workspace / "models" / "cachewise-reuse"
    if not export_dir.is_dir():
        pytest.skip("needs the export of test_train_register_champion_export_round_trip")
    import mlflow

    other = f"sqlite:///{workspace / 'elsewhere.db'}"  # MLflow's global registry points elsewhere
    previous_registry = mlflow.get_registry_uri()
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    mlflow.set_registry_uri(other)
    seen: list[tuple[str, str]] = []
    real = mlflow.artifacts.download_artifacts

    def spy(*args, **kwargs):
        seen.append((mlflow.get_tracking_uri(), mlflow.get_registry_uri()))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", spy)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        model = load_exported(URI)
        after = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    finally:
        mlflow.set_registry_uri(previous_registry)
    assert model.source == URI
    assert before[1] == other
    assert seen == [before]  # unchanged while downloading
    assert after == before
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == retries  # the retry budget is put back


def test_score_cli_on_exported_and_registered_model(workspace, capsys):
    root = workspace
    export_dir = root / "models" / "cachewise-reuse"
    if not export_dir.is_dir():
        pytest.skip("needs the export of test_train_register_champion_export_round_trip")
    results = []
    for model in (str(export_dir), URI):
        _cli("score", "--traces", str(root / "corpus"), "--model", model, "--json", "--params", str(root / "params.yaml"))
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    result = results[0]
    assert set(result) == {"model", "baselines", "n_events"}
    assert set(result["baselines"]) == {"lru", "per_tool_mean", "constant"}
    assert result["n_events"] == len(read_features(root / "data" / "features.parquet")[0])
    for scores in [result["model"], *result["baselines"].values()]:
        assert 0.0 <= scores["pairwise_accuracy"] <= 1.0
    assert result["baselines"]["lru"]["mae_log"] is None


def test_score_held_out_keeps_only_the_tasks_training_held_out(workspace, capsys):
    root = workspace
    export_dir = root / "models" / "cachewise-reuse"
    if not export_dir.is_dir():
        pytest.skip("needs the export of test_train_register_champion_export_round_trip")
    spec = json.loads((export_dir / "spec.json").read_text())
    held_out = set(spec["training_data"]["test_tasks"])
    events = read_features(root / "data" / "features.parquet")[0]
    expected = int(events["task_id"].isin(held_out).sum())
    _cli("score", "--traces", str(root / "corpus"), "--model", str(export_dir), "--json", "--held-out")
    result = json.loads(capsys.readouterr().out)
    assert 0 < expected < len(events)
    assert result["n_events"] == expected


def test_a_holder_without_the_remaining_work_model_gives_way_to_one_with_it(workspace, capsys):
    """A champion registered before train fitted the remaining-work model (tag ``remaining_model``
    absent) gives way to a version that carries it even at equal held-out accuracy, and the model
    served by URI then has it (read from the registered extra files)."""
    from mlflow import MlflowClient

    from cachewise.train.export import REMAINING_TAG

    root = workspace
    p = str(root / "params.yaml")
    if not (root / "data" / "features.parquet").is_file():
        _cli("featurize", "--params", p)
    _cli("train", "--params", p, "--out", str(root / "out3"))
    _cli("export", "--params", p, "--run", str(root / "out3" / "run.json"))
    client = MlflowClient()
    holder = client.get_model_version_by_alias("cachewise-reuse", "champion")
    client.delete_model_version_tag("cachewise-reuse", holder.version, REMAINING_TAG)  # as an older export left it
    _cli("train", "--params", p, "--out", str(root / "out4"))  # the same data and settings: the same accuracy
    capsys.readouterr()
    _cli("export", "--params", p, "--run", str(root / "out4" / "run.json"))
    out = capsys.readouterr().out
    assert "@champion moved to version" in out and "has no remaining-work model" in out, out
    assert load_exported(URI).remaining is not None
