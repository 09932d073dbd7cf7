"""Score the model and the baselines on one set of featurized rows, on the same pairs.

Used for the held-out tasks by ``cachewise train`` and for new traces by ``cachewise score``.
With the ``source`` column present, ``by_family`` repeats the scoring per trace family
(``claude_code``, ``blockhash``, ``swe_agent``, ``synthetic``: each on its own rows and
its own pairs), so a model trained on mixed traffic shows where it is good and where not.
Every gap predictor (model, ``per_tool_mean``, ``constant``) comes with its own
:class:`~cachewise.scoring.idle.IdleConditioner` (fitted on validation residuals at training
time and stored in the spec), so all are judged the same way (:mod:`cachewise.train.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cachewise.train.baselines import BaselineStats, predict_constant, predict_per_tool_mean
from cachewise.scoring.idle import IdleConditioner
from cachewise.train.metrics import gap_predictor_metrics, lru_metrics, reference_times, sample_idle_pairs

GAP_PREDICTORS = ("model", "per_tool_mean", "constant")


@dataclass(frozen=True)
class PairSettings:
    """How pairs are drawn (params ``train.pairwise``)."""

    max_pairs: int
    seed: int
    time_base: str

    @classmethod
    def from_params(cls, section: dict, seed: int) -> PairSettings:
        """From the ``train.pairwise`` mapping; ``seed`` is ``train.seed``."""
        return cls(int(section.get("max_pairs", 200000)), seed, str(section.get("time_base", "session")))


def baseline_predictions(frame: pd.DataFrame, stats: BaselineStats) -> dict[str, np.ndarray]:
    """Predicted labels of the fitted baselines for ``frame``'s rows."""
    return {
        "per_tool_mean": predict_per_tool_mean(stats, frame["primary_class"]),
        "constant": predict_constant(stats, len(frame)),
    }


def evaluate(
    frame: pd.DataFrame,
    model_pred: np.ndarray,
    stats: BaselineStats,
    conditioners: dict[str, IdleConditioner],
    horizon_s: float,
    pairs_cfg: PairSettings,
    by_family: bool = True,
) -> dict:
    """Metrics of the model and of every baseline on ``frame`` (a featurized table); with
    ``by_family`` and a ``source`` column, also per family (``by_family``)."""
    if by_family and "source" in frame.columns:
        metrics = evaluate(frame, model_pred, stats, conditioners, horizon_s, pairs_cfg, by_family=False)
        pred = np.asarray(model_pred, dtype="float64")
        source = frame["source"].to_numpy()
        metrics["by_family"] = {}
        for family in sorted(set(source)):
            rows = source == family
            part = frame[rows].reset_index(drop=True)
            metrics["by_family"][str(family)] = evaluate(
                part, pred[rows], stats, conditioners, horizon_s, pairs_cfg, by_family=False
            )
        return metrics
    t = reference_times(frame, pairs_cfg.time_base)
    pairs = sample_idle_pairs(
        t, frame["idle_s"].to_numpy(), frame["censored"].to_numpy(), horizon_s, pairs_cfg.max_pairs, pairs_cfg.seed
    )
    true = frame["label"].to_numpy(dtype="float64")
    preds = {"model": np.asarray(model_pred, dtype="float64"), **baseline_predictions(frame, stats)}
    scored = {name: gap_predictor_metrics(pairs, t, preds[name], true, conditioners[name]) for name in GAP_PREDICTORS}
    return {
        "model": scored["model"],
        "baselines": {
            "lru": lru_metrics(pairs, t),
            "per_tool_mean": scored["per_tool_mean"],
            "constant": scored["constant"],
        },
        "n_events": int(len(frame)),
        "pairs": {
            "time_base": pairs_cfg.time_base,
            "candidates": pairs.n_candidates,
            "drawn": pairs.n_drawn,
            "compared": len(pairs),
        },
    }
