"""``cachewise score``: how well an exported model orders idle prefixes of some traces.

Ingests ``--traces`` (any format :func:`cachewise.data.ingest.load_sources` reads),
featurizes the calls with the model's horizon, and scores the model next to the baselines
with the training-time statistics stored in its spec (``per_tool_mean`` class means,
``constant``, every predictor's idle conditioner). All rows are scored: pass traces the
model was not trained on for a held-out figure.

With ``--json`` it prints exactly one JSON object on stdout::

    {"model": {"pairwise_accuracy": .., "pairwise_accuracy_static": .., "spearman": .., "mae_log": ..},
     "baselines": {"lru": {..}, "per_tool_mean": {..}, "constant": {..}}, "n_events": N}

(``null`` where a metric is undefined, see :mod:`cachewise.train.metrics`: never a bare
``NaN``, which is not JSON); otherwise a table. A ``models:/`` model is fetched within
``--registry-timeout`` seconds. Errors exit 2 with one line (:mod:`cachewise.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from cachewise.data.ingest import IngestError, load_sources
from cachewise.data.schema import SchemaError, validate
from cachewise.features.featurize import featurize
from cachewise.features.params import ParamsError, load_section
from cachewise.features.spec import FEATURE_NAMES
from cachewise.train.baselines import BaselineStats
from cachewise.train.evaluate import GAP_PREDICTORS, PairSettings, evaluate
from cachewise.scoring.exported import REGISTRY_TIMEOUT_S, ExportedModel, ModelLoadError, load_exported
from cachewise.scoring.idle import IdleConditioner
from cachewise.train.model_spec import finite_json


def score_events(model: ExportedModel, events, pairs_cfg: PairSettings) -> dict:
    """Metrics of ``model`` and the baselines on an events frame."""
    spec = model.spec
    horizon = float(spec["horizon_s"])
    frame = featurize(events, horizon).frame
    pred = model.predict(frame[list(FEATURE_NAMES)].to_numpy())
    stats = BaselineStats.from_dict(spec["baselines"])
    conditioners = {name: IdleConditioner(tuple(spec["residual_quantiles"][name])) for name in GAP_PREDICTORS}
    return evaluate(frame, pred, stats, conditioners, horizon, pairs_cfg)


def held_out_events(model: ExportedModel, events: pd.DataFrame) -> pd.DataFrame:
    """The rows of the tasks ``model``'s training held out (``training_data.test_tasks``)."""
    tasks = model.spec.get("training_data", {}).get("test_tasks")
    if not tasks:
        raise ModelLoadError(f"{model.source}: spec lists no held-out tasks (exported before they were recorded)")
    return events[events["task_id"].isin(set(tasks))].reset_index(drop=True)


def _pair_settings(params: str) -> PairSettings:
    """``train.pairwise`` and ``train.seed`` from the params file, defaults when it is absent."""
    try:
        section = load_section(params, "train")
    except ParamsError:
        section = {}
    return PairSettings.from_params(section.get("pairwise", {}), int(section.get("seed", 42)))


def _table(result: dict) -> str:
    keys = ["pairwise_accuracy", "pairwise_accuracy_static", "spearman", "mae_log"]
    rows = [("model", result["model"]), *result["baselines"].items()]
    lines = [f"{'predictor':14s}" + "".join(f"{k:>26s}" for k in keys)]
    for name, scores in rows:
        lines.append(f"{name:14s}" + "".join(f"{'n/a' if scores.get(k) is None else format(scores[k], '.4f'):>26s}" for k in keys))
    lines.append(f"{result['n_events']} events")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cachewise score``."""
    parser.add_argument("--traces", required=True, help="trace file or folder to score on")
    parser.add_argument("--model", default="models/cachewise-reuse", help="export folder or models:/NAME@ALIAS URI")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--params", default="params.yaml", help="pairwise settings (train.pairwise); defaults if absent")
    parser.add_argument(
        "--registry-timeout",
        type=float,
        default=REGISTRY_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the MLflow registry, retries included (default {REGISTRY_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--held-out", action="store_true", help="score only the tasks the model's training held out (its spec lists them)"
    )


def run(args: argparse.Namespace) -> int:
    """Score and print; 2 on a model, ingest or events error (message on stderr)."""
    try:
        model = load_exported(args.model, registry_timeout_s=args.registry_timeout)
        events, _ = load_sources([Path(args.traces)])
        if args.held_out:
            events = held_out_events(model, events)
        validate(events)
    except (ModelLoadError, IngestError, SchemaError, FileNotFoundError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    result = score_events(model, events, _pair_settings(args.params))
    if args.json:
        print(json.dumps(finite_json({k: result[k] for k in ("model", "baselines", "n_events")}), allow_nan=False))
    else:
        print(_table(result))
        print(f"pairs compared: {result['pairs']['compared']} ({result['pairs']['time_base']} time base)")
    return 0
