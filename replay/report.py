"""Write a replay's results: CSV tables, plots for ``dvc plots``, and a markdown report.

Files under the output folder:

* ``results.csv``: every run (one row per seed, concurrency, capacity fraction, policy);
* ``plots/<metric>_c<concurrency>.csv``: wide tables (``capacity_frac`` then one column per
  policy, means over seeds) for ``dvc plots`` of :data:`PLOT_METRICS`, one per concurrency;
* ``plots/capacity_c<concurrency>.png``: those metrics against capacity with 95% intervals
  (matplotlib), only when more than one capacity fraction was run;
* ``metrics.json``: the headline point (per policy: mean and interval half-width of the
  table's figures) and the targets (measured value, met), for ``dvc metrics``;
* ``plots/residency_jct_c<concurrency>.png`` and the report's residency section, when a
  residency policy ran (:mod:`cachewise.replay.residency_report`, whose columns
  ``results.csv`` always has);
* ``sessions.csv``: every session of every run beside the infinite cache's run of its seed
  (:mod:`cachewise.replay.session_gap`), whose split of the excess JCT closes the report;
* ``report.md``: setup; at the headline point the table with intervals, the paired
  differences against ``lru_arrival`` ("no measurable difference" where the interval covers
  zero), the ratios against vLLM LRU / ``lru_arrival`` / the best hand-written policy, the
  targets; then the summary across capacities and per-concurrency sweep tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cachewise.atomic_write import atomic_path
from cachewise.replay.residency_report import INTRO, has_residency, plot_jct, residency_table, with_residency_columns
from cachewise.replay.session_gap import gap_table, sessions_table
from cachewise.replay.stats import fmt_interval, interval, paired, per_policy, verdict
from cachewise.replay.targets import (
    BASELINE,
    Target,
    at_point,
    best_hand_written,
    check_targets,
    diagnose,
    headline,
    ratios,
)

PLOT_METRICS = {
    "harmful_evictions": "harmful evictions",
    "min_harmful_evictions": "MIN of the run's own sequence (harmful)",
    "recomputed_tokens": "recomputed prefill tokens",
    "jct_s_mean": "mean JCT from submission (s)",
}
TABLE_COLUMNS = {
    "evictions": "evictions",
    "harmful_evictions": "harmful",
    "min_harmful_evictions": "MIN of own sequence",
    "recomputed_tokens": "recomputed prefill tok",
    "min_recomputed_tokens": "MIN recomputed tok",
    "hit_rate": "hit rate",
    "jct_s_mean": "JCT mean s",
    "jct_s_p50": "JCT p50 s",
    "jct_s_p90": "JCT p90 s",
    "jct_s_p99": "JCT p99 s",
    "makespan_s": "makespan s",
    "service_s_mean": "service mean s",
    "preemptions": "preempt",
    "policy_overhead_pct": "overhead %",
}
PAIRED_METRICS = {"harmful_evictions": "harmful evictions", "recomputed_tokens": "recomputed tokens", "jct_s_mean": "mean JCT (s)"}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` (index included) as a GitHub markdown table."""
    header = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([_fmt(idx)] + [_fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def _plot_tables(results: pd.DataFrame, policies: Sequence[str], out: Path) -> list[Path]:
    """Write the ``dvc plots`` CSVs (means) and, with several capacities, the PNG of each concurrency."""
    written = []
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for conc, part in results.groupby("concurrency"):
        stats = {m: per_policy(part, m) for m in PLOT_METRICS}
        for metric, frame in stats.items():
            table = frame.pivot_table(index="capacity_frac", columns="policy", values="mean")
            table = table[[p for p in policies if p in table.columns]]
            path = plots / f"{metric}_c{conc}.csv"
            table.reset_index().to_csv(path, index=False)
            written.append(path)
        if part["capacity_frac"].nunique() < 2:
            continue
        fig = Figure(figsize=(11, 8))
        axes = fig.subplots(2, 2, sharex=True)
        for ax, (metric, label) in zip(axes.flat, PLOT_METRICS.items()):
            frame = stats[metric]
            for policy in policies:
                line = frame[frame["policy"] == policy].sort_values("capacity_frac")
                if len(line):
                    style = "--" if policy == "infinite" else "-"
                    ax.errorbar(line["capacity_frac"], line["mean"], yerr=line["half"].fillna(0), fmt=style,
                                marker="o", capsize=3, label=policy)
            if metric != "jct_s_mean":
                ax.set_yscale("symlog", linthresh=1)  # counts span orders of magnitude; 0 for the infinite cache
            ax.set_title(label)
            ax.set_xlabel("KV capacity (fraction of peak live working set)")
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"Closed-loop replay through vLLM's scheduler, {conc} concurrent sessions (mean, 95% interval)")
        fig.tight_layout()
        path = plots / f"capacity_c{conc}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def _targets_table(targets: list[Target]) -> str:
    rows = []
    for t in targets:
        status = "not evaluated" if t.met is None else ("met" if t.met else "MISSED")
        rows.append(
            {"target": t.name, "goal": t.goal, "measured": t.measured, "status": status, "shortfall": t.shortfall}
        )
    return markdown_table(pd.DataFrame(rows).set_index("target"))


def _interval_table(rows: pd.DataFrame, policies: Sequence[str], columns: dict[str, str]) -> pd.DataFrame:
    """``mean ± half`` per policy (rows) and metric (columns) over the seeds in ``rows``."""
    table = {}
    for policy in policies:
        mine = rows[rows["policy"] == policy]
        if len(mine):
            table[policy] = {label: _cell(mine[col]) for col, label in columns.items() if col in mine.columns}
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("policy")


def _cell(values: pd.Series) -> str:
    return fmt_interval(*interval(values))


def _paired_table(rows: pd.DataFrame, policies: Sequence[str]) -> pd.DataFrame:
    """Paired difference ``policy - lru_arrival`` per metric, with its interval and verdict."""
    table: dict[str, dict[str, str]] = {p: {} for p in policies if p != BASELINE}
    for metric, label in PAIRED_METRICS.items():
        diffs = paired(rows, metric, BASELINE).set_index("policy")
        for policy in table:
            if policy in diffs.index:
                mean, half = float(diffs.at[policy, "mean"]), float(diffs.at[policy, "half"])
                table[policy][label] = f"{fmt_interval(mean, half)} ({verdict(mean, half)})"
    return pd.DataFrame.from_dict({p: r for p, r in table.items() if r}, orient="index").rename_axis("policy")


def summary_table(results: pd.DataFrame, concurrency: int) -> pd.DataFrame:
    """At every capacity of ``concurrency``: harmful evictions and mean JCT (mean ± 95% interval)
    of vLLM LRU, lru_arrival, the best hand-written policy, the learned policies, the MIN of each
    run's own sequence, and the infinite cache."""
    out = {}
    part = results[results["concurrency"] == concurrency]
    for frac, rows in part.groupby("capacity_frac"):
        point = headline(results, concurrency, frac)
        best = best_hand_written(point)
        row: dict[str, str] = {}
        for label, policy in (("lru", "lru"), ("lru_arrival", "lru_arrival"), ("best hand-written", best),
                              ("learned", "learned"), ("learned_nohints", "learned_nohints")):
            mine = rows[rows["policy"] == policy] if policy else rows.iloc[:0]
            if len(mine):
                which = f" ({policy})" if label == "best hand-written" else ""
                row[f"{label}: harmful"] = _cell(mine["harmful_evictions"]) + which
                row[f"{label}: JCT s"] = _cell(mine["jct_s_mean"]) + which
                row[f"{label}: MIN of its sequence"] = _cell(mine["min_harmful_evictions"]) + which
        inf = rows[rows["policy"] == "infinite"]
        if len(inf):
            row["infinite: JCT s"] = _cell(inf["jct_s_mean"])
        out[f"{frac:.0%}"] = row
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("capacity").T


def _json_number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_metrics(rows: pd.DataFrame, policies: Sequence[str], targets: list[Target], path: Path) -> None:
    headline_doc = {}
    for policy in policies:
        mine = rows[rows["policy"] == policy]
        if len(mine):
            headline_doc[policy] = {
                k: {"mean": _json_number(m), "ci95": _json_number(h)}
                for k in TABLE_COLUMNS
                for m, h in [interval(mine[k])]
            }
    doc = {
        "headline": headline_doc,
        "seeds": int(rows["seed"].nunique()),
        "targets": {t.name: {"measured": _json_number(t.measured), "met": t.met} for t in targets},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def _residency_lines(results: pd.DataFrame, out: Path) -> list[str]:
    """The report's residency section and its plots (nothing when no residency policy ran)."""
    if not has_residency(results):
        return []
    lines = ["## Session residency: mean JCT from submission (s), every capacity", "", INTRO, ""]
    for conc in sorted(int(c) for c in results["concurrency"].unique()):
        lines += [f"### {conc} concurrent sessions", "", markdown_table(residency_table(results, conc).T), ""]
        picture = plot_jct(results, conc, out / "plots" / f"residency_jct_c{conc}.png")
        if picture is not None:
            lines += [f"![JCT against capacity, {conc} sessions](plots/{picture.name})", ""]
    return lines


def write_report(
    results: pd.DataFrame,
    out: str | Path,
    policies: Sequence[str],
    concurrency: int,
    capacity_frac: float,
    setup: list[str],
) -> Path:
    """Write every file of the module doc under ``out``; returns the report's path.

    ``concurrency`` / ``capacity_frac`` select the headline point (it must be in
    ``results``); ``setup`` lines describe the run (workload, engine, cost model).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sessions = sessions_table(results)
    results = results.drop(columns=["session_jct_s"], errors="ignore")
    with atomic_path(out / "sessions.csv") as tmp:
        sessions.to_csv(tmp, index=False)
    with_residency_columns(results).to_csv(out / "results.csv", index=False)
    pictures = [p for p in _plot_tables(results, policies, out) if p.suffix == ".png"]
    rows = at_point(results, concurrency, capacity_frac)
    if rows.empty:
        raise ValueError(f"no results at concurrency {concurrency}, capacity {capacity_frac}")
    point = headline(results, concurrency, capacity_frac)
    targets = check_targets(rows)
    _write_metrics(rows, policies, targets, out / "metrics.json")
    seeds = sorted(int(s) for s in results["seed"].unique())
    blocks = int(point["num_blocks"].iloc[0])
    lines = [
        "# CacheWise replay: eviction policies through vLLM's real scheduler",
        "",
        *[f"- {s}" for s in setup],
        (
            f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)} independent samples of sessions, orders and token"
            " ids); every figure is the mean over seeds ± the half-width of its 95% t interval."
        ),
        "",
        f"## Headline: {concurrency} concurrent sessions, KV capacity {capacity_frac:.0%} of the peak live working set",
        "",
        (
            f"About {blocks - 1:,} KV blocks of {int(point['block_tokens'].iloc[0])} trace tokens (peak live working set"
            f" {point['peak_live_blocks_infinite'].iloc[0]:,.0f} blocks, measured with an infinite cache; mean over"
            " seeds). JCT: from the moment the agent submitted the session (all at t=0) to its last response;"
            " service: from its admission to a slot. \"MIN of own sequence\": Belady's MIN over the block accesses"
            " that run produced, at the same capacity: a lower bound on harmful evictions for that sequence, not"
            " across policies."
        ),
        "",
        markdown_table(_interval_table(rows, policies, TABLE_COLUMNS)),
        "",
        f"### Paired difference against {BASELINE} (policy - {BASELINE}, same seeds)",
        "",
        markdown_table(_paired_table(rows, policies)),
        "",
        "### Ratios (reference / policy: > 1 means the policy is better) and gap closed",
        "",
        (
            f"Gap closed is measured from {BASELINE} (the arrival rule without predictions): for harmful evictions"
            f" toward the MIN of {BASELINE}'s own sequence, for JCT toward the infinite cache."
        ),
        "",
        markdown_table(ratios(point)),
        "",
        "## Targets (measured at the headline point)",
        "",
        _targets_table(targets),
        "",
        *[f"- {n}" for n in diagnose(point)],
        "",
    ]
    for conc, part in results.groupby("concurrency"):
        if part["capacity_frac"].nunique() < 2:
            continue
        lines += [
            f"## Summary: {conc} concurrent sessions, every capacity",
            "",
            markdown_table(summary_table(results, conc)),
            "",
            f"## Sweep: {conc} concurrent sessions",
            "",
        ]
        for frac, rows_at in part.groupby("capacity_frac"):
            lines += [
                f"### Capacity {frac:.0%}",
                "",
                markdown_table(_interval_table(rows_at, policies, TABLE_COLUMNS)),
                "",
                markdown_table(_paired_table(rows_at, policies)),
                "",
            ]
        lines += [f"![{conc} sessions](plots/{p.name})" for p in pictures if p.name == f"capacity_c{conc}.png"] + [""]
    lines += _residency_lines(results, out)
    gaps = gap_table(sessions)
    if not gaps.empty:
        lines += [
            "## Where the time above the infinite cache goes: per session",
            "",
            (
                "Each session's JCT minus its JCT under the infinite cache (same seed and concurrency), mean per"
                " session of the shorter and the longer half of the sessions (split at the median infinite-cache"
                " JCT), ± 95% over seeds; every session's figures are in `sessions.csv`."
            ),
            "",
            markdown_table(gaps.set_index("policy")),
            "",
        ]
    path = out / "report.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
