"""Train on a Dask cluster (``train.backend: dask``): ``lightgbm.dask.DaskLGBMRegressor``.

Same steps as :func:`cachewise.train.train.train_model`, with the feature table left on the
workers (``dd.read_parquet`` of ``features.out``, a file or the folder the Dask featurize
writes):

1. the split by task is the local one: :func:`~cachewise.train.split.split_by_task` depends
   only on the set of task ids (scikit-learn's ``GroupShuffleSplit`` draws over the sorted
   unique groups), so it is computed on the unique ``task_id`` values, then applied by
   ``isin`` on the workers;
2. LightGBM's own distributed training (data-parallel, one LightGBM worker per Dask worker)
   with the ``train.lightgbm`` parameters and the valid part as ``eval_set``;
   ``lightgbm.dask`` has no early stopping, so all ``num_boost_round`` rounds are grown and
   the booster is cut where early stopping would have stopped (:func:`early_stop_iteration`,
   the same rule and patience); the remaining-work model (:mod:`cachewise.train.remaining`)
   the same way on its target;
3. the baselines, conditioners, held-out metrics, spec and plots are the local code
   (:func:`~cachewise.train.train.assemble_result`) on what is gathered to the client: the
   train part's label/class/session columns, and the valid and test parts (the evaluation
   needs rows of the held-out tasks in one place).

MLflow logging, ``run.json`` and the registry are unchanged (the caller writes them). Prints
one line ``train: backend=dask workers=N scheduler=ADDRESS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cachewise.features.featurize import META_KEY
from cachewise.features.params import require
from cachewise.features.spec import CATEGORICAL, FEATURE_NAMES, FEATURE_SET_VERSION
from cachewise.features.dask_cluster import DaskSettings, dask_client, describe
from cachewise.train.split import split_by_task
from cachewise.train.remaining import TARGET as REMAINING_TARGET
from cachewise.train.train import LOOP_KEYS, TrainResult, assemble_result, split_summary

BASELINE_COLUMNS = ["primary_class", "label", "idle_s", "censored", "task_id", "source", "session_id", "response_time", "remaining_s"]


def features_meta(path: str | Path) -> dict:
    """Provenance metadata of a feature table (file or folder of parts), without reading rows."""
    path = Path(path)
    first = path if path.is_file() else min(path.glob("part-*.parquet"), default=None)
    if first is None:
        raise FileNotFoundError(f"{path}: no feature table (a Parquet file or a folder of part-*.parquet)")
    raw = (pq.read_schema(first).metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("feature_set_version") != FEATURE_SET_VERSION:
        raise ValueError(
            f"{first}: feature set version {meta.get('feature_set_version')!r}, this code makes"
            f" {FEATURE_SET_VERSION!r}; re-run `cachewise featurize`"
        )
    return meta


def early_stop_iteration(curve: list[float], patience: int) -> int:
    """1-based iteration LightGBM's ``early_stopping(patience)`` keeps on the validation ``curve``
    (lower is better): the best so far, once ``patience`` rounds brought no improvement."""
    best, best_at = np.inf, 0
    for i, value in enumerate(curve):
        if value < best:
            best, best_at = value, i
        elif i - best_at >= patience:
            break
    return best_at + 1


def train_on_dask(features_path: str | Path, meta: dict, tparams: dict, horizon_s: float, where: str) -> TrainResult:
    """:func:`~cachewise.train.train.train_model` on the cluster of ``train.dask`` (module doc)."""
    import dask.dataframe as dd

    settings = DaskSettings.from_params(tparams.get("dask"), where)
    seed = int(require(tparams, "seed", where))
    lgb_section = dict(require(tparams, "lightgbm", where))
    with dask_client(settings) as client:
        print(f"train: backend=dask {describe(client)}", flush=True)
        frame = dd.read_parquet(str(features_path))
        tasks = pd.Series(np.sort(frame["task_id"].unique().compute().to_numpy(dtype=object)))
        split = split_by_task(
            tasks, float(require(tparams, "test_fraction", where)), float(tparams.get("valid_fraction", 0.2)), seed
        )
        # Materialised once (fixed partitions, as lightgbm.dask needs; reused by the gathers below).
        frame = frame.assign(**{REMAINING_TARGET: np.log1p(frame["remaining_s"])})
        parts = dict(zip(("train", "valid", "test"), client.persist(
            [frame[frame["task_id"].isin(tasks.iloc[rows].tolist())] for rows in (split.train, split.valid, split.test)]
        )))
        booster, remaining = (_fit(client, parts, lgb_section, seed, target) for target in ("label", REMAINING_TARGET))
        train = parts["train"][BASELINE_COLUMNS].compute().reset_index(drop=True)
        valid, test = (parts[n].compute().reset_index(drop=True) for n in ("valid", "test"))
        sessions = int(frame[["source", "session_id"]].drop_duplicates().shape[0].compute())
    summary = split_summary({"train": train, "valid": valid, "test": test})
    data = {"rows": len(train) + len(valid) + len(test), "tasks": len(tasks), "sessions": sessions}
    return assemble_result(booster, remaining, train, valid, test, summary, data, meta, lgb_section, seed, tparams, horizon_s, where)


def _fit(client: Any, parts: dict, lgb_section: dict, seed: int, target: str) -> lgb.Booster:
    """``DaskLGBMRegressor`` on ``target`` of the persisted parts, cut at its early-stopping iteration."""
    from lightgbm.dask import DaskLGBMRegressor

    cols = list(FEATURE_NAMES)
    params = {k: v for k, v in lgb_section.items() if k not in LOOP_KEYS}
    params.setdefault("seed", seed)
    model = DaskLGBMRegressor(client=client, n_estimators=int(lgb_section.get("num_boost_round", 400)), **params)
    model.fit(
        parts["train"][cols],
        parts["train"][target],
        eval_X=(parts["valid"][cols],),
        eval_y=(parts["valid"][target],),
        categorical_feature=list(CATEGORICAL),
    )
    curve = next(iter(model.evals_result_["valid_0"].values()))
    best = early_stop_iteration(list(curve), int(lgb_section.get("early_stopping_rounds", 40)))
    return lgb.Booster(model_str=model.booster_.model_to_string(num_iteration=best))

