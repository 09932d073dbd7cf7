"""``cachewise export``: register the trained model and export the champion to ``models/``.

0. Read and check the run record of the last ``cachewise train`` (``<train out>/run.json``),
   download that run's model and check it (:func:`fetch_checked`) — all before anything is
   written to the registry, so a bad record or model registers nothing.
1. Register it as a version of ``registry.model_name`` (once per run: an already registered
   run is reused, and its tags are set again, so a killed export re-runs clean). The version
   is tagged with its held-out ``pairwise_accuracy`` (``nan`` when undefined, e.g. too few
   held-out tasks) and feature-set version.
2. Move the alias ``registry.alias`` to it only when it beats the current alias holder's
   held-out pairwise accuracy (strictly; a holder whose accuracy is undefined is beaten by
   any defined one), or when there is no holder, or the holder was trained for another
   feature-set version, or its registered spec has no ``model_sha256`` while the new one has
   (this code could not serve it by URI), or it has no remaining-work model while the new one
   has (:mod:`cachewise.train.remaining`; the residency controller's admission order reads it).
   The decision and its reason are printed.
3. Export the alias holder to ``registry.export_dir``: ``model.txt`` + ``spec.json`` (+ ``remaining.txt``)
   (:mod:`cachewise.scoring.exported` loads it without MLflow), staged beside the target,
   checked by loading it, certified (4.), then swapped in (:func:`cachewise.atomic_write.replace_folder`):
   the export folder is always the previous complete export or the new one.
4. Certify the staged folder: ``certificate.json``, the trace families on whose validation
   sessions its learned order beat vLLM's LRU in the replay (:mod:`cachewise.replay.certify`,
   ``certify`` params; the events are ``ingest.out``), read by the runtime guard's certified
   start. The registry's copy carries no certificate: a server loading ``models:/`` starts in
   vLLM's order.

:func:`fetch_checked` never runs LightGBM's parser on unchecked bytes in this process: the
spec's ``model_sha256`` is verified, or — for a model logged before it was recorded — the
text is checked structurally and trial-loaded in a child process before its hash is written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from cachewise.atomic_write import replace_folder, staging_folder
from cachewise.features.params import load_section, param_path, require
from cachewise.features.spec import FEATURE_SET_VERSION
from cachewise.scoring.exported import (
    MODEL_FILE,
    REGISTRY_TIMEOUT_S,
    REMAINING_FILE,
    SHA_KEY,
    SPEC_FILE,
    download_model,
    load_folder,
    model_sha256,
    read_model_text,
    read_spec,
    trial_load,
)
from cachewise.train.model_spec import write_json

ACCURACY_TAG = "pairwise_accuracy"
VERSION_TAG = "feature_set_version"
CHECKSUM_TAG = "model_sha256"  # set when the registered spec carries the model's checksum
REMAINING_TAG = "remaining_model"  # "1" when the version carries the remaining-work model


@dataclass(frozen=True)
class Decision:
    """Outcome of the champion comparison."""

    version: str  # the newly registered (or reused) version
    champion: str  # the alias holder after the decision
    moved: bool
    reason: str


class ExportError(ValueError):
    """The run record is unusable (a user error: exit status 2)."""


def read_record(path: str | Path) -> dict:
    """The run record written by ``cachewise train``, its fields checked."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the run record {path}: {exc}; run `cachewise train` first") from exc
    if not isinstance(record, dict):
        raise ExportError(f"{path}: the run record is not a JSON object")
    for key in ("run_id", "model_uri"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ExportError(f"{path}: no `{key}` in the run record; run `cachewise train` again")
    acc = record.get("pairwise_accuracy")
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float))):
        raise ExportError(f"{path}: pairwise_accuracy {acc!r} is not a number or null")
    return record


def accuracy_of(tags: dict) -> float:
    """The held-out accuracy tag of a version; nan when absent or undefined."""
    try:
        return float(tags.get(ACCURACY_TAG, "nan"))
    except ValueError:  # e.g. 'None', written by an older export
        return math.nan


def register_run(client, name: str, record: dict, checksum: str | None, remaining: bool = False) -> str:
    """Model version of ``record``'s run under ``name``: the existing one, else a new one; tags (re)set.

    ``checksum``: the ``model_sha256`` of the registered spec, None when it has none (logged
    by an older ``cachewise train``; such a version is exported, but never served by URI).
    ``remaining``: the version carries the remaining-work model (``remaining.txt``).
    """
    import mlflow  # noqa: PLC0415

    existing = [mv for mv in client.search_model_versions(f"name='{name}'") if mv.run_id == record["run_id"]]
    version = str(existing[0].version) if existing else str(mlflow.register_model(record["model_uri"], name).version)
    acc = record.get("pairwise_accuracy")
    client.set_model_version_tag(name, version, ACCURACY_TAG, "nan" if acc is None else repr(float(acc)))
    client.set_model_version_tag(name, version, VERSION_TAG, FEATURE_SET_VERSION)
    if checksum is not None:
        client.set_model_version_tag(name, version, CHECKSUM_TAG, checksum)
    client.set_model_version_tag(name, version, REMAINING_TAG, "1" if remaining else "0")
    return version


def decide_champion(client, name: str, alias: str, version: str) -> Decision:
    """Move ``alias`` to ``version`` only if it beats the holder (module doc, step 2)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    new = client.get_model_version(name, version)
    new_acc = accuracy_of(new.tags)
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
    elif not holder.tags.get(CHECKSUM_TAG) and new.tags.get(CHECKSUM_TAG):
        reason = f"@{alias} version {holder.version} has no model checksum in its spec (the runtime refuses to load it by URI)"
    elif holder.tags.get(REMAINING_TAG) != "1" and new.tags.get(REMAINING_TAG) == "1":
        reason = f"@{alias} version {holder.version} has no remaining-work model (the residency controller's admission order reads it)"
    else:
        old_acc = accuracy_of(holder.tags)
        if math.isnan(old_acc) and not math.isnan(new_acc):
            client.set_registered_model_alias(name, alias, version)
            return Decision(version, version, True, f"held-out pairwise accuracy {new_acc:.4f}; version {holder.version}'s is undefined")
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


def fetch_checked(uri: str, folder: Path, timeout_s: float = REGISTRY_TIMEOUT_S * 6) -> str | None:
    """Download ``uri`` into ``folder`` as ``model.txt`` + ``spec.json`` that load (module doc).

    Returns the checksum the registered spec carries (None when this call had to compute it).
    """
    download = folder / "download"
    local = download_model(uri, download, timeout_s)
    spec = read_spec(local / "extra_files" / SPEC_FILE)
    shutil.copyfile(local / "model.lgb", folder / MODEL_FILE)
    if (local / "extra_files" / REMAINING_FILE).is_file():  # the remaining-work model (train since session 12)
        shutil.copyfile(local / "extra_files" / REMAINING_FILE, folder / REMAINING_FILE)
    shutil.rmtree(download)
    registered = spec.get(SHA_KEY) if isinstance(spec.get(SHA_KEY), str) else None
    if registered is None:  # logged before train recorded the hash
        text = read_model_text(folder / MODEL_FILE, None)
        trial_load(folder / MODEL_FILE)
        spec[SHA_KEY] = model_sha256(text)
    write_json(spec, folder / SPEC_FILE)
    load_folder(folder / MODEL_FILE, folder / SPEC_FILE, uri)  # refuse to export what cannot load
    return registered


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise export``."""
    parser.add_argument("--run", default="train/out/run.json", help="run record of `cachewise train` (default: train/out/run.json)")
    parser.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")


def certify_export(folder: Path, params: str) -> None:
    """Write the traffic certificate of the export ``folder`` (module doc, step 4); params without a
    ``certify`` section certify nothing (said once: the guard then starts in vLLM's order)."""
    from cachewise.data.schema import read_events  # noqa: PLC0415 - the replay's imports only here
    from cachewise.replay.certify import SECTION, CertifySettings, certify  # noqa: PLC0415

    doc = yaml.safe_load(Path(params).read_text()) or {}
    if doc.get(SECTION) is None:
        print(f"export: {params} has no `{SECTION}:` section: no traffic certificate")
        return
    events = read_events(param_path(params, require(load_section(params, "ingest"), "out", f"{params}:ingest")))
    certify(folder, events, params, load_section(params, "train"), CertifySettings.from_section(load_section(params, SECTION)))


def run(args: argparse.Namespace) -> int:
    """Check, register, decide the champion, export it; 2 when the run record or a model is unusable."""
    from mlflow import MlflowClient  # noqa: PLC0415

    from cachewise.train.tracking import use_tracking  # noqa: PLC0415

    where = f"{args.params}:registry"
    reg = load_section(args.params, "registry")
    name, alias = require(reg, "model_name", where), require(reg, "alias", where)
    export_dir = param_path(args.params, require(reg, "export_dir", where))
    record = read_record(args.run)
    use_tracking()
    client = MlflowClient()
    staged = staging_folder(export_dir)
    try:
        checksum = fetch_checked(record["model_uri"], staged)
        version = register_run(client, name, record, checksum, (staged / REMAINING_FILE).is_file())
        decision = decide_champion(client, name, alias, version)
        verb = "moved to" if decision.moved else "stays on"
        print(f"export: registered {name} version {version}; @{alias} {verb} version {decision.champion}: {decision.reason}")
        if decision.champion != version:
            shutil.rmtree(staged)
            staged.mkdir()
            fetch_checked(f"models:/{name}@{alias}", staged)
        certify_export(staged, args.params)
        replace_folder(staged, export_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(f"export: {name}@{alias} (version {decision.champion}) -> {export_dir}")
    return 0
