"""Write a replay's results: CSV tables, plots for ``dvc plots``, and a markdown report.

Files under the output folder:

* ``results.csv``: every run (one row per concurrency, capacity fraction, policy);
* ``plots/<metric>_c<concurrency>.csv``: wide tables (``capacity_frac`` then one column per
  policy) for ``dvc plots`` of :data:`PLOT_METRICS`, one per concurrency;
* ``plots/capacity_c<concurrency>.png``: those metrics against capacity (matplotlib), only
  when more than one capacity fraction was run;
* ``metrics.json``: the headline point (per policy: the table's figures) and the targets
  (measured value, met), for ``dvc metrics``;
* ``report.md``: setup, the headline table, the targets with measured values and
  shortfalls, diagnostics, and per-concurrency sweep tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cachewise.runtime.replay.targets import Target, check_targets, diagnose, headline

PLOT_METRICS = {
    "evictions": "block evictions",
    "harmful_evictions": "harmful evictions",
    "recomputed_tokens": "recomputed prefill tokens",
    "session_s_mean": "mean session completion (s)",
}
TABLE_COLUMNS = {
    "evictions": "evictions",
    "harmful_evictions": "harmful",
    "hit_rate": "hit rate",
    "recomputed_tokens": "recomputed prefill tok",
    "preemptions": "preempt",
    "session_s_mean": "session mean s",
    "session_s_p50": "p50 s",
    "session_s_p90": "p90 s",
    "makespan_s": "makespan s",
    "policy_cpu_s": "policy CPU s",
    "policy_overhead_pct": "overhead %",
}


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
    """Write the ``dvc plots`` CSVs and, with several capacities, the PNG of each concurrency."""
    written = []
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for conc, part in results.groupby("concurrency"):
        wide = {m: part.pivot_table(index="capacity_frac", columns="policy", values=m) for m in PLOT_METRICS}
        for metric, table in wide.items():
            table = table[[p for p in policies if p in table.columns]]
            path = plots / f"{metric}_c{conc}.csv"
            table.reset_index().to_csv(path, index=False)
            written.append(path)
        if part["capacity_frac"].nunique() < 2:
            continue
        fig = Figure(figsize=(11, 8))
        axes = fig.subplots(2, 2, sharex=True)
        for ax, (metric, label) in zip(axes.flat, PLOT_METRICS.items()):
            table = wide[metric]
            for policy in policies:
                if policy in table.columns:
                    style = "--" if policy in ("infinite", "belady") else "-"
                    ax.plot(table.index, table[policy], style, marker="o", label=policy)
            if metric != "session_s_mean":
                ax.set_yscale("symlog", linthresh=1)  # counts span orders of magnitude; 0 for the infinite cache
            ax.set_title(label)
            ax.set_xlabel("KV capacity (fraction of peak live working set)")
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"Closed-loop replay through vLLM's scheduler, {conc} concurrent sessions")
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


def _targets_by_point(results: pd.DataFrame) -> pd.DataFrame:
    """The targets' measured values at every (concurrency, capacity fraction) of ``results``."""
    rows = []
    for (conc, frac), _ in results.groupby(["concurrency", "capacity_frac"]):
        measured = {t.name: t.measured for t in check_targets(headline(results, conc, frac))}
        rows.append({"concurrency / capacity": f"{conc} / {frac:g}", **measured})
    return pd.DataFrame(rows).set_index("concurrency / capacity")


def _json_number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_metrics(figures: pd.DataFrame, targets: list[Target], path: Path) -> None:
    doc = {
        "headline": {p: {k: _json_number(float(v)) for k, v in row.items()} for p, row in figures.iterrows()},
        "targets": {t.name: {"measured": _json_number(t.measured), "met": t.met} for t in targets},
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


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
    results.to_csv(out / "results.csv", index=False)
    pictures = [p for p in _plot_tables(results, policies, out) if p.suffix == ".png"]
    point = headline(results, concurrency, capacity_frac)
    if point.empty:
        raise ValueError(f"no results at concurrency {concurrency}, capacity {capacity_frac}")
    figures = point.loc[[p for p in policies if p in point.index], list(TABLE_COLUMNS)]
    targets = check_targets(point)
    _write_metrics(figures, targets, out / "metrics.json")
    table = figures.rename(columns=TABLE_COLUMNS)
    blocks = int(point["num_blocks"].iloc[0])
    lines = [
        "# CacheWise replay: eviction policies through vLLM's real scheduler",
        "",
        *[f"- {s}" for s in setup],
        "",
        f"## Headline: {concurrency} concurrent sessions, KV capacity {capacity_frac:.0%} of the peak live working set",
        "",
        (
            f"{blocks - 1:,} KV blocks of {int(point['block_tokens'].iloc[0])} trace tokens (peak live working set"
            f" {int(point['peak_live_blocks_infinite'].iloc[0]):,} blocks, measured with an infinite cache)."
        ),
        "",
        markdown_table(table),
        "",
        "## Targets (measured at the headline point)",
        "",
        _targets_table(targets),
        "",
        *[f"- {n}" for n in diagnose(point)],
        "",
    ]
    if len(results.groupby(["concurrency", "capacity_frac"])) > 1:
        lines += [
            "## Target quantities at every point run",
            "",
            (
                "Measured values as in the targets table (gap closed: fraction of the LRU->Belady gap; vs_lru: LRU's"
                " harmful evictions / learned's; session_time: learned / Belady; beats_heuristics: learned minus the"
                " best hand-written policy, negative = fewer). Where LRU and Belady are within a few percent of each"
                " other the gap is tiny and 'gap closed' swings wildly; read it with the harmful-eviction tables."
            ),
            "",
            markdown_table(_targets_by_point(results)),
            "",
        ]
    for conc, part in results.groupby("concurrency"):
        if part["capacity_frac"].nunique() < 2:
            continue
        lines += [f"## Sweep: {conc} concurrent sessions", ""]
        for metric, label in PLOT_METRICS.items():
            wide = part.pivot_table(index="capacity_frac", columns="policy", values=metric)
            lines += [f"### {label}", "", markdown_table(wide[[p for p in policies if p in wide.columns]]), ""]
        lines += [f"![{conc} sessions](plots/{p.name})" for p in pictures if p.name == f"capacity_c{conc}.png"] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
