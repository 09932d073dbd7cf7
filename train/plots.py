"""Training plots, each as a CSV (for ``dvc plots``) and a PNG (for MLflow and humans).

* ``feature_importance``: total split gain and split count per feature, largest gain first;
* ``pred_vs_true``: predicted vs true label of every held-out row (with its class, censoring);
* ``calibration``: per primary command class, mean true vs mean predicted label on held-out rows.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_tables(booster: lgb.Booster, test: pd.DataFrame, pred: np.ndarray) -> dict[str, pd.DataFrame]:
    """The three plot tables (module doc)."""
    importance = pd.DataFrame(
        {
            "feature": booster.feature_name(),
            "gain": booster.feature_importance("gain"),
            "splits": booster.feature_importance("split"),
        }
    ).sort_values("gain", ascending=False, kind="stable")
    scatter = pd.DataFrame(
        {
            "true_label": test["label"].to_numpy(),
            "pred_label": pred,
            "primary_class": test["primary_class"].to_numpy(),
            "censored": test["censored"].to_numpy(),
        }
    )
    calibration = (
        scatter.groupby("primary_class")
        .agg(n=("true_label", "size"), mean_true=("true_label", "mean"), mean_pred=("pred_label", "mean"))
        .reset_index()
    )
    return {"feature_importance": importance, "pred_vs_true": scatter, "calibration": calibration}


def _draw(name: str, table: pd.DataFrame, ax: plt.Axes) -> None:
    if name == "feature_importance":
        top = table.head(25).iloc[::-1]
        ax.barh(top["feature"], top["gain"])
        ax.set_xlabel("total split gain")
    elif name == "pred_vs_true":
        for censored, part in table.groupby("censored"):
            ax.scatter(part["true_label"], part["pred_label"], s=4, alpha=0.4, label="censored" if censored else "reused")
        lim = [0, max(table["true_label"].max(), table["pred_label"].max()) * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("true log1p(idle s)")
        ax.set_ylabel("predicted log1p(idle s)")
        ax.legend()
    else:
        ax.scatter(table["mean_true"], table["mean_pred"], s=np.sqrt(table["n"]) * 4)
        for _, row in table.iterrows():
            ax.annotate(str(row["primary_class"]), (row["mean_true"], row["mean_pred"]), fontsize=7)
        lim = [0, max(table["mean_true"].max(), table["mean_pred"].max()) * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("mean true log1p(idle s)")
        ax.set_ylabel("mean predicted log1p(idle s)")
    ax.set_title(name.replace("_", " "))


def write_plots(tables: dict[str, pd.DataFrame], folder: str | Path) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.png`` per table into ``folder``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        csv = folder / f"{name}.csv"
        table.to_csv(csv, index=False)
        fig, ax = plt.subplots(figsize=(7, 6 if name != "feature_importance" else 8))
        _draw(name, table, ax)
        fig.tight_layout()
        png = folder / f"{name}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        written += [csv, png]
    return written
