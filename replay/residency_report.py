"""The residency comparison of a replay: issue-8 columns, the headline table and the JCT plot.

Input: the replay's results table (one row per seed, concurrency, capacity fraction and
policy; :mod:`cachewise.replay.sweep`). Nothing here runs a replay.

* :func:`with_residency_columns` adds, per row, the columns the residency comparison is read
  in: ``jct_mean_s``, ``jct_p50_s``, ``jct_p90_s``, ``jct_p99_s`` (the replay's ``jct_s_*``
  under these names), ``output_tokens_per_s`` (output tokens / makespan),
  ``controller_us_per_step`` and ``controller_overhead_pct`` (the residency controller's CPU
  time per plan -- a scheduler call that planned, ``residency_steps``; the calls that held the
  last plan's sessions, ``residency_reused``, add their small CPU to it -- and as a share of the
  replayed GPU time *at real scale*: a replay step stands for ``token_scale`` engine steps, each
  of which calls the scheduler, so the controller's time counts ``token_scale`` times. That
  assumes each of them plans; with ``residency.replan_s`` a served engine plans only on steps
  where the requests changed and every ``replan_s``, and its plans look up prefixes of 16x the
  blocks, so at ``token_scale`` > 1 the share is an estimate (more plans, each cheaper; in session
  25's runs 2-3x the real-scale share), at 1 a measurement. Before session 24 it counted once and the share was
  understated ``token_scale``-fold, 16x at the default);
* :func:`residency_table`: per capacity, mean JCT ± 95% interval over seeds of vLLM LRU,
  ``lru_arrival``, ``learned``, the best fixed cap *in hindsight* (lowest mean JCT among
  the ``capN`` run at that capacity: a hand-tuned constant, not a policy), ``continuum``,
  ``cachewise_nomodel``, ``cachewise``, the infinite cache; then ``cachewise``'s ratios
  (reference / cachewise, > 1: cachewise better), its paired difference against
  ``cachewise_nomodel`` (what the model adds; "no measurable difference" when the
  interval covers zero), p99 JCT against LRU's, and the longest admission wait;
* :func:`plot_jct`: mean and p99 JCT against capacity for those policies, 95% intervals.

Complexity: O(rows) per call (pandas group-bys).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cachewise.replay.residency_policies import cap_of
from cachewise.replay.stats import fmt_interval, interval, paired, verdict

INTRO = (
    "Best cap: the fixed admission cap with the lowest mean JCT at that capacity, chosen in hindsight"
    " (a hand-tuned constant, not a policy). Ratios are reference / cachewise (> 1: cachewise better);"
    " `cachewise - nomodel` is the paired difference over seeds (negative: the model helps)."
)
RESIDENCY = ("cachewise", "cachewise_nomodel", "continuum")
COMPARED = ("lru", "lru_arrival", "learned", "best cap", "continuum", "cachewise_nomodel", "cachewise", "infinite")
_RENAMED = {"jct_s_mean": "jct_mean_s", "jct_s_p50": "jct_p50_s", "jct_s_p90": "jct_p90_s", "jct_s_p99": "jct_p99_s"}


def has_residency(results: pd.DataFrame) -> bool:
    """Whether any residency policy (``capN`` included) was run."""
    return any(p in RESIDENCY or cap_of(p) is not None for p in results["policy"].unique())


def with_residency_columns(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` plus the columns of the module doc (a copy; rows and order unchanged)."""
    out = results.copy()
    for old, new in _RENAMED.items():
        if old in out.columns:
            out[new] = out[old]
    if {"output_tokens", "makespan_s"} <= set(out.columns):
        out["output_tokens_per_s"] = out["output_tokens"] / out["makespan_s"].where(out["makespan_s"] > 0)
    if {"residency_cpu_s", "residency_steps"} <= set(out.columns):
        steps = out["residency_steps"].where(out["residency_steps"] > 0)
        out["controller_us_per_step"] = (1e6 * out["residency_cpu_s"] / steps).fillna(0.0)
        busy = out["busy_s"].where(out["busy_s"] > 0)
        scale = out["token_scale"] if "token_scale" in out.columns else 1
        out["controller_overhead_pct"] = (100.0 * out["residency_cpu_s"] * scale / busy).fillna(0.0)
    return out


def best_cap(rows: pd.DataFrame) -> str | None:
    """The ``capN`` with the lowest mean JCT in ``rows`` (one point, every seed); None if none ran."""
    caps = rows[rows["policy"].map(lambda p: cap_of(p) is not None)]
    if caps.empty:
        return None
    return str(caps.groupby("policy")["jct_s_mean"].mean().idxmin())


def _mean(rows: pd.DataFrame, policy: str | None, column: str = "jct_s_mean") -> float:
    mine = rows[rows["policy"] == policy] if policy else rows.iloc[:0]
    return float(mine[column].mean()) if len(mine) else math.nan


def _ratio(reference: float, mine: float) -> str:
    return "n/a" if math.isnan(reference) or math.isnan(mine) or mine <= 0 else f"{reference / mine:.2f}x"


def residency_table(results: pd.DataFrame, concurrency: int) -> pd.DataFrame:
    """One row per capacity fraction at ``concurrency`` (module doc)."""
    table = {}
    part = results[results["concurrency"] == concurrency]
    for frac, rows in part.groupby("capacity_frac"):
        cap = best_cap(rows)
        row: dict[str, str] = {}
        for label in COMPARED:
            policy = cap if label == "best cap" else label
            mine = rows[rows["policy"] == policy] if policy else rows.iloc[:0]
            if len(mine):
                row[f"{label} JCT s"] = fmt_interval(*interval(mine["jct_s_mean"])) + (f" ({cap})" if label == "best cap" else "")
        me = _mean(rows, "cachewise")
        if not math.isnan(me):
            for label, policy in (("lru", "lru"), ("best cap", cap), ("continuum", "continuum")):
                row[f"cachewise vs {label}"] = _ratio(_mean(rows, policy), me)
            diff = paired(rows, "jct_s_mean", "cachewise_nomodel")
            diff = diff[diff["policy"] == "cachewise"]
            if len(diff):
                mean, half = float(diff["mean"].iloc[0]), float(diff["half"].iloc[0])
                row["cachewise - nomodel s"] = f"{fmt_interval(mean, half)} ({verdict(mean, half)})"
            row["p99 JCT s: cachewise / lru"] = (
                f"{_mean(rows, 'cachewise', 'jct_s_p99'):,.0f} / {_mean(rows, 'lru', 'jct_s_p99'):,.0f}"
            )
            mine = rows[rows["policy"] == "cachewise"]
            row["longest admission wait s"] = f"{mine['longest_admission_wait_s'].max():,.0f}"
        table[f"{frac:.0%}"] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("capacity")


def plot_jct(results: pd.DataFrame, concurrency: int, path: Path) -> Path | None:
    """Mean and p99 JCT against capacity at ``concurrency`` (module doc); None with < 2 capacities."""
    part = results[results["concurrency"] == concurrency]
    if part["capacity_frac"].nunique() < 2:
        return None
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, column, title in zip(axes, ("jct_s_mean", "jct_s_p99"), ("mean JCT (s)", "p99 JCT (s)")):
        for label in COMPARED:
            xs, ys, hs = [], [], []
            for frac, rows in part.groupby("capacity_frac"):
                policy = best_cap(rows) if label == "best cap" else label
                mine = rows[rows["policy"] == policy] if policy else rows.iloc[:0]
                if len(mine):
                    mean, half = interval(mine[column])
                    xs.append(frac)
                    ys.append(mean)
                    hs.append(0.0 if math.isnan(half) else half)
            if xs:
                style = "--" if label in ("infinite", "best cap") else "-"
                ax.errorbar(xs, ys, yerr=hs, fmt=style, marker="o", capsize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("KV capacity (fraction of peak live working set)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Session residency, {concurrency} concurrent sessions (mean over seeds, 95% interval; best cap in hindsight)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
