"""``cachewise train``: fit the LightGBM next-reuse model and log it to MLflow.

Steps, each reproducible from ``params.yaml`` (``train`` and ``features`` sections):

1. split the feature table by task (:mod:`cachewise.train.split`): train / valid / test;
2. fit LightGBM regression on the log label (``train.lightgbm``), early stopping on valid;
   the kept booster is cut at the best iteration;
3. fit the baselines on train, and every predictor's idle conditioner on valid residuals;
4. score model and baselines on the held-out test tasks (:mod:`cachewise.train.evaluate`);
5. write ``model.txt``, ``spec.json`` (:mod:`cachewise.train.model_spec`; with the model's
   sha256 and a probe row, see :mod:`cachewise.scoring.exported`), ``remaining.txt`` (the
   remaining-work model fitted as in step 2 on the same split, :mod:`cachewise.train.remaining`;
   its spec section ``remaining``), ``metrics.json`` (the DVC
   metrics file) and ``plots/*.csv|png`` (DVC plots) into a staging folder beside ``<out>``;
6. log params, metrics, plots, spec and the model (``mlflow.lightgbm`` flavor, spec as an
   and ``remaining.txt`` as extra files) to the MLflow experiment ``cachewise`` (:mod:`cachewise.train.tracking`),
   then write ``run.json`` (the MLflow run and model URI, read by ``cachewise export``);
7. swap the staging folder into ``<out>`` (:func:`cachewise.atomic_write.replace_folder`) and
   end the run ``FINISHED``, as one step that SIGTERM does not interrupt (:mod:`cachewise.cli`).

So ``<out>`` only ever holds the complete outputs of one run: a failure or a kill before
step 7 leaves the previous outputs as they were (and the MLflow run, if started, ends
``FAILED`` or ``KILLED``, never ``RUNNING``); a kill during step 7 lets it complete and exits 143. A model whose predictions are not finite is
refused before anything is written.

With ``train.backend: dask`` steps 1-2 run on a Dask cluster (:mod:`cachewise.train.dask_backend`);
steps 3-7 are this module's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from cachewise.atomic_write import replace_folder, staging_folder, write_text
from cachewise.cli import sigterm_deferred, stop_if_terminated, terminated
from cachewise.features.dask_cluster import backend_of
from cachewise.features.featurize import read_features
from cachewise.features.params import ParamsError, load_section, param_path, require
from cachewise.features.spec import CATEGORICAL, FEATURE_NAMES, FEATURE_SET_VERSION
from cachewise.train.baselines import fit_baselines
from cachewise.train.evaluate import PairSettings, baseline_predictions, evaluate
from cachewise.scoring.exported import MODEL_FILE, PROBE_KEY, REMAINING_FILE, SHA_KEY, SPEC_FILE, model_sha256, probe_of
from cachewise.scoring.idle import IdleConditioner
from cachewise.train.model_spec import build_spec, idle_quantiles, write_json
from cachewise.train.plots import plot_tables, write_plots
from cachewise.train.remaining import TARGET as REMAINING_TARGET
from cachewise.train.remaining import remaining_section, with_target
from cachewise.train.split import split_by_task

LOOP_KEYS = ("num_boost_round", "early_stopping_rounds")
RUN_FILE = "run.json"
#: What ``cachewise train`` writes into ``--out``; a folder holding anything else is not replaced.
OUTPUT_NAMES = frozenset({MODEL_FILE, SPEC_FILE, REMAINING_FILE, "metrics.json", RUN_FILE, "plots"})


class TrainError(ValueError):
    """Training produced an unusable model, or cannot write where it was told to."""


@dataclass(frozen=True)
class TrainResult:
    """Everything ``cachewise train`` produces before writing and logging it."""

    booster: lgb.Booster
    model_text: str  # exactly the bytes of model.txt (their sha256 is in the spec)
    spec: dict
    metrics: dict
    plots: dict[str, pd.DataFrame]
    lightgbm_params: dict
    remaining_text: str  # exactly the bytes of remaining.txt (sha256 in the spec's ``remaining``)


def fit_lightgbm(train: pd.DataFrame, valid: pd.DataFrame, lgb_section: dict, seed: int, target: str = "label") -> lgb.Booster:
    """LightGBM on ``target`` with early stopping on ``valid``; the booster cut at its best iteration."""
    params = {k: v for k, v in lgb_section.items() if k not in LOOP_KEYS}
    params.setdefault("seed", seed)
    cols = list(FEATURE_NAMES)
    dtrain = lgb.Dataset(train[cols], train[target], categorical_feature=list(CATEGORICAL), free_raw_data=False)
    dvalid = lgb.Dataset(valid[cols], valid[target], reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=int(lgb_section.get("num_boost_round", 400)),
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(int(lgb_section.get("early_stopping_rounds", 40)), verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def split_summary(parts: dict[str, pd.DataFrame]) -> dict:
    """Rows and tasks of each part (``train_rows``, ``train_tasks``, ...)."""
    return {
        f"{name}_{what}": int(n)
        for name, part in parts.items()
        for what, n in (("rows", len(part)), ("tasks", part["task_id"].nunique()))
    }


def train_model(frame: pd.DataFrame, meta: dict, tparams: dict, horizon_s: float, where: str) -> TrainResult:
    """Steps 1-4 of the module doc on a feature table ``frame`` with provenance ``meta``."""
    seed = int(require(tparams, "seed", where))
    split = split_by_task(
        frame["task_id"],
        float(require(tparams, "test_fraction", where)),
        float(tparams.get("valid_fraction", 0.2)),
        seed,
    )
    train, valid, test = (frame.iloc[rows].reset_index(drop=True) for rows in (split.train, split.valid, split.test))
    lgb_section = dict(require(tparams, "lightgbm", where))
    booster = fit_lightgbm(train, valid, lgb_section, seed)
    remaining = fit_lightgbm(with_target(train), with_target(valid), lgb_section, seed, REMAINING_TARGET)
    data = {
        "rows": int(len(frame)),
        "tasks": int(frame["task_id"].nunique()),
        "sessions": int(frame[["source", "session_id"]].drop_duplicates().shape[0]),
    }
    counts = split_summary({"train": train, "valid": valid, "test": test})
    return assemble_result(booster, remaining, train, valid, test, counts, data, meta, lgb_section, seed, tparams, horizon_s, where)


def assemble_result(
    booster: lgb.Booster,
    remaining: lgb.Booster,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    split_counts: dict,
    data: dict,
    meta: dict,
    lgb_section: dict,
    seed: int,
    tparams: dict,
    horizon_s: float,
    where: str,
) -> TrainResult:
    """Steps 3-4 of the module doc for a fitted ``booster`` and ``remaining`` model (any backend).

    ``train`` needs only ``primary_class``, ``label``, ``idle_s``, ``censored``, ``source``,
    ``session_id``, ``response_time`` and ``remaining_s``; ``data``
    holds the whole table's ``rows``, ``tasks`` and ``sessions``.
    """
    cols = list(FEATURE_NAMES)
    stats = fit_baselines(train["primary_class"], train["label"])
    valid_preds = {"model": booster.predict(valid[cols]), **baseline_predictions(valid, stats)}
    conditioners = {
        name: IdleConditioner.from_residuals(valid["label"].to_numpy() - pred) for name, pred in valid_preds.items()
    }
    test_pred = booster.predict(test[cols])
    if not np.isfinite(test_pred).all():
        raise TrainError(f"{where}: the trained model predicts non-finite values (check the labels and `lightgbm` settings)")
    pairs_cfg = PairSettings.from_params(tparams.get("pairwise", {}), seed)
    metrics = evaluate(test, test_pred, stats, conditioners, horizon_s, pairs_cfg)
    metrics["split"] = split_counts
    metrics["best_iteration"] = booster.current_iteration()

    lgb_params = {**lgb_section, "seed": lgb_section.get("seed", seed)}
    spec = build_spec(
        horizon_s=horizon_s,
        training_data={
            "events_sha256": meta.get("events_sha256", ""),
            **data,
            "test_tasks": sorted(test["task_id"].unique().tolist()),
        },
        idle_table=idle_quantiles(train["primary_class"], train["idle_s"], train["censored"], horizon_s),
        conditioners=conditioners,
        baselines=stats,
        metrics=metrics,
        lightgbm={**lgb_params, "best_iteration": booster.current_iteration()},
    )
    text = booster.model_to_string()
    spec[SHA_KEY] = model_sha256(text)
    spec[PROBE_KEY] = probe_of(booster, (test if len(test) else train)[cols].to_numpy()[0])
    try:
        spec["remaining"], remaining_text = remaining_section(remaining, train, test)
    except ValueError as exc:
        raise TrainError(f"{where}: {exc} (check the labels and `lightgbm` settings)") from exc
    metrics["remaining"] = spec["remaining"]["metrics"]
    return TrainResult(booster, text, spec, metrics, plot_tables(booster, test, test_pred), lgb_params, remaining_text)


def write_outputs(result: TrainResult, out: Path) -> list[Path]:
    """Step 5 of the module doc (all but ``run.json``); ``out`` is then also a loadable export
    folder (``model.txt`` + ``spec.json``). Returns the plot files."""
    write_text(out / MODEL_FILE, result.model_text)
    write_text(out / REMAINING_FILE, result.remaining_text)
    write_json(result.spec, out / SPEC_FILE)
    write_json(result.metrics, out / "metrics.json")
    return write_plots(result.plots, out / "plots")


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """Numeric leaves of the metrics as ``a.b.c`` names (MLflow metrics)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            flat[prefix] = float(value)

    walk("", metrics)
    return flat


def _end_started_run(experiment_id: str, attempt: dict[str, str], status: str) -> None:
    """End with ``status`` the run of this ``attempt`` tag that an interrupted ``start_run`` left RUNNING."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    ((key, value),) = attempt.items()
    client = MlflowClient()
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{key}` = '{value}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status)


def log_to_mlflow(result: TrainResult, out: Path, plot_files: list[Path], extra_params: dict, commit: Callable[[dict], None]) -> dict:
    """Step 6 of the module doc: log a run, then ``commit(record)`` (step 7) and end the run FINISHED.

    SIGTERM never interrupts an MLflow call half-way (an interrupted SQLAlchemy transaction
    can leave the run RUNNING and the store unusable for ending it): the whole logging is
    :func:`~cachewise.cli.sigterm_deferred` and a SIGTERM is acted on between calls. So it
    leaves either a KILLED run and no outputs, or -- when it lands in the last step -- a
    FINISHED run and its outputs; never a RUNNING run. Returns the run record written to ``run.json``.
    """
    import mlflow  # noqa: PLC0415 - keep `cachewise featurize` & co. free of MLflow

    from cachewise.train.tracking import tracking_uri, use_tracking  # noqa: PLC0415

    experiment_id = use_tracking()
    attempt = {"cachewise.attempt": uuid.uuid4().hex}  # finds the run if start_run itself fails
    with sigterm_deferred():
        try:
            run = mlflow.start_run(experiment_id=experiment_id, tags=attempt)
        except BaseException:  # start_run failed half-way: its row may exist, RUNNING
            _end_started_run(experiment_id, attempt, "FAILED")
            raise
        steps: list[Callable[[], object]] = [
            lambda: mlflow.log_params({**{f"lightgbm.{k}": v for k, v in result.lightgbm_params.items()}, **extra_params}),
            lambda: mlflow.log_metrics(_flat_metrics(result.metrics)),
            lambda: mlflow.set_tags({"feature_set_version": FEATURE_SET_VERSION, "events_sha256": result.spec["training_data"]["events_sha256"]}),
            *(partial(mlflow.log_artifact, str(path), artifact_path="plots") for path in plot_files),
            lambda: mlflow.log_artifact(str(out / "metrics.json")),
        ]
        try:
            for step in steps:
                stop_if_terminated()
                step()
            stop_if_terminated()
            info = mlflow.lightgbm.log_model(
                result.booster,
                name="model",
                extra_files=[str(out / SPEC_FILE), str(out / REMAINING_FILE)],
                pip_requirements=[f"lightgbm=={lgb.__version__}"],
            )
            record = {
                "tracking_uri": tracking_uri(),
                "experiment_id": experiment_id,
                "run_id": run.info.run_id,
                "model_uri": info.model_uri,
                "pairwise_accuracy": result.metrics["model"]["pairwise_accuracy"],
            }
            stop_if_terminated()
            commit(record)
            mlflow.end_run()
        except BaseException as exc:
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit)) or terminated()  # SIGTERM wrapped by a library: still a kill
            _end_failed_run(run.info.run_id, "KILLED" if killed else "FAILED")
            raise
    return record


def _end_failed_run(run_id: str, status: str, attempts: int = 3) -> None:
    """End run ``run_id`` with ``status``, retrying: a database error in the SQLite store does not
    outlive its session, and each MLflow call opens a new one. ``mlflow.end_run`` drops the run
    from this process's active runs *before* it writes the status, so a retry writes the status by
    id. Never raises: the caller re-raises what made the run fail."""
    import mlflow  # noqa: PLC0415
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    for attempt in range(attempts):
        try:
            if mlflow.active_run() is not None:
                mlflow.end_run(status)
            else:
                MlflowClient().set_terminated(run_id, status)
            return
        except Exception as exc:  # noqa: BLE001 - retried, then reported
            print(f"cachewise train: ending the MLflow run {status} failed ({type(exc).__name__}); attempt {attempt + 1} of {attempts}", file=sys.stderr)
            time.sleep(0.2 * (attempt + 1))


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise train``."""
    parser.add_argument("--features", default=None, help="feature table (default: params features.out)")
    parser.add_argument("--out", default="train/out", help="output folder (default: train/out)")
    parser.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")


def run(args: argparse.Namespace) -> int:
    """Train (``train.backend``: here, or on Dask), write the outputs, log to MLflow, print the headline metrics."""
    from cachewise.train.dask_backend import features_meta, train_on_dask  # noqa: PLC0415 - imports train_model

    tparams = load_section(args.params, "train")
    fparams = load_section(args.params, "features")
    features_path = args.features or param_path(args.params, require(fparams, "out", f"{args.params}:features"))
    where = f"{args.params}:train"
    on_dask = backend_of(tparams, where) == "dask"  # then the table stays on the workers
    frame, meta = (None, features_meta(features_path)) if on_dask else read_features(features_path)
    horizon = float(meta.get("horizon_s") or require(fparams, "horizon_s", f"{args.params}:features"))
    if frame is None:
        result = train_on_dask(features_path, meta, tparams, horizon, where)
    else:
        result = train_model(frame, meta, tparams, horizon, where)

    out = Path(args.out)
    kept = [p for p in out.iterdir() if p.name.startswith(".") and p.is_file()] if out.is_dir() else []  # .gitignore
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES and p not in kept) if out.is_dir() else []
    if foreign:
        raise ParamsError(f"--out {out}: holds {foreign[:5]}, which train did not write; give a train output folder")
    extra = {
        "seed": tparams["seed"],
        "test_fraction": tparams["test_fraction"],
        "valid_fraction": tparams.get("valid_fraction", 0.2),
        "horizon_s": horizon,
        "feature_set_version": FEATURE_SET_VERSION,
        "n_features": len(FEATURE_NAMES),
        "pairwise.time_base": result.metrics["pairs"]["time_base"],
    }
    staged = staging_folder(out)
    try:
        plot_files = write_outputs(result, staged)

        def commit(record: dict) -> None:
            write_json(record, staged / RUN_FILE)
            for path in kept:
                shutil.copy2(path, staged / path.name)
            replace_folder(staged, out)

        record = log_to_mlflow(result, staged, plot_files, extra, commit)
    finally:
        shutil.rmtree(staged, ignore_errors=True)

    m, b = result.metrics["model"], result.metrics["baselines"]
    print(f"train: {result.metrics['split']}; best iteration {result.metrics['best_iteration']}")
    print(f"train: pairs compared {result.metrics['pairs']['compared']} ({result.metrics['pairs']['time_base']} time base)")
    for name, scores in [("model", m), *b.items()]:
        print(f"  {name:14s} " + "  ".join(f"{k}={_fmt(v)}" for k, v in scores.items()))
    r = result.metrics["remaining"]
    print(f"  remaining work: spearman={_fmt(r['spearman'])}  fewest calls first: spearman={_fmt(r['spearman_fewest_calls_first'])}")
    print(f"train: MLflow run {record['run_id']} ({record['tracking_uri']}); model {record['model_uri']}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
