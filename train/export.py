"""``cachewise export``: register the trained model and export the champion to ``models/``.

1. Register the model logged by the last ``cachewise train`` (``<train out>/run.json``) as a
   version of ``registry.model_name`` (once per run: an already registered run is reused).
   The version is tagged with its held-out ``pairwise_accuracy`` and feature-set version.
2. Move the alias ``registry.alias`` to it only when it beats the current alias holder's
   held-out pairwise accuracy (strictly), or when there is no holder, or the holder was
   trained for another feature-set version (this code could not serve it). The decision
   and its reason are printed.
3. Export the alias holder to ``registry.export_dir``: ``model.txt`` + ``spec.json``
   (:mod:`cachewise.train.exported` loads it without MLflow). The folder is checked by
   loading it before it replaces the previous export.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cachewise.features.params import load_section, param_path, require
from cachewise.features.spec import FEATURE_SET_VERSION
from cachewise.train.exported import MODEL_FILE, SPEC_FILE, ModelLoadError, load_folder

ACCURACY_TAG = "pairwise_accuracy"
VERSION_TAG = "feature_set_version"


@dataclass(frozen=True)
class Decision:
    """Outcome of the champion comparison."""

    version: str  # the newly registered (or reused) version
    champion: str  # the alias holder after the decision
    moved: bool
    reason: str


def register_run(client, name: str, record: dict) -> str:
    """Model version of ``record``'s run under ``name``: the existing one, else a new one."""
    import mlflow  # noqa: PLC0415

    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.run_id == record["run_id"]:
            return str(mv.version)
    mv = mlflow.register_model(record["model_uri"], name)
    client.set_model_version_tag(name, mv.version, ACCURACY_TAG, str(record["pairwise_accuracy"]))
    client.set_model_version_tag(name, mv.version, VERSION_TAG, FEATURE_SET_VERSION)
    return str(mv.version)


def decide_champion(client, name: str, alias: str, version: str) -> Decision:
    """Move ``alias`` to ``version`` only if it beats the holder (module doc, step 2)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    new = client.get_model_version(name, version)
    new_acc = float(new.tags.get(ACCURACY_TAG, "nan"))
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    if holder is None:
        reason = f"no version held @{alias}"
    elif str(holder.version) == version:
        return Decision(version, version, False, f"version {version} already holds @{alias}")
    elif holder.tags.get(VERSION_TAG) != FEATURE_SET_VERSION:
        reason = f"@{alias} version {holder.version} was trained for feature set {holder.tags.get(VERSION_TAG)!r}, this code serves {FEATURE_SET_VERSION!r}"
    else:
        old_acc = float(holder.tags.get(ACCURACY_TAG, "nan"))
        if not new_acc > old_acc:
            return Decision(
                version,
                str(holder.version),
                False,
                f"version {version} held-out pairwise accuracy {new_acc:.4f} does not beat"
                f" @{alias} version {holder.version}'s {old_acc:.4f}",
            )
        reason = f"held-out pairwise accuracy {new_acc:.4f} beats version {holder.version}'s {old_acc:.4f}"
    client.set_registered_model_alias(name, alias, version)
    return Decision(version, version, True, reason)


def export_alias(name: str, alias: str, export_dir: Path) -> Path:
    """Download ``models:/name@alias`` and write it as ``model.txt`` + ``spec.json`` into ``export_dir``."""
    import mlflow  # noqa: PLC0415

    uri = f"models:/{name}@{alias}"
    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cachewise-export-", dir=export_dir.parent) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(Path(tmp) / "download")))
        staged = Path(tmp) / "staged"
        staged.mkdir()
        shutil.copyfile(local / "model.lgb", staged / MODEL_FILE)
        shutil.copyfile(local / "extra_files" / SPEC_FILE, staged / SPEC_FILE)
        load_folder(staged / MODEL_FILE, staged / SPEC_FILE, uri)  # refuse to export what cannot load
        if export_dir.exists():
            shutil.rmtree(export_dir)
        staged.rename(export_dir)
    return export_dir


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise export``."""
    parser.add_argument("--run", default="train/out/run.json", help="run record of `cachewise train` (default: train/out/run.json)")
    parser.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")


def run(args: argparse.Namespace) -> int:
    """Register, decide the champion, export it; 2 when the run record or the export is unusable."""
    from mlflow import MlflowClient  # noqa: PLC0415

    from cachewise.train.tracking import use_tracking  # noqa: PLC0415

    where = f"{args.params}:registry"
    reg = load_section(args.params, "registry")
    name, alias = require(reg, "model_name", where), require(reg, "alias", where)
    export_dir = param_path(args.params, require(reg, "export_dir", where))
    try:
        record = json.loads(Path(args.run).read_text())
    except (OSError, ValueError) as exc:
        print(f"export: error: cannot read the run record {args.run}: {exc}; run `cachewise train` first")
        return 2
    use_tracking()
    client = MlflowClient()
    version = register_run(client, name, record)
    decision = decide_champion(client, name, alias, version)
    verb = "moved to" if decision.moved else "stays on"
    print(f"export: registered {name} version {version}; @{alias} {verb} version {decision.champion}: {decision.reason}")
    try:
        folder = export_alias(name, alias, export_dir)
    except ModelLoadError as exc:
        print(f"export: error: @{alias} cannot be exported: {exc}")
        return 2
    print(f"export: {name}@{alias} (version {decision.champion}) -> {folder}")
    return 0
