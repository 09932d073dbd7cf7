"""Cross-family evaluation: the learned order, with and without the guard, on traffic it was not trained on.

For each trace family ``F`` of the ``cross_family.families`` params (name -> trace sources;
``synthetic`` = the embedded synthetic corpus of ``ingest.synthetic``; a family whose
sources are all missing is skipped with a message):

* ``others``: a model trained on every other family, replayed on ``F``'s sessions (all of
  them, at most ``max_sessions``, seeded);
* ``all``: a model trained on every family, replayed on ``F``'s held-out tasks: the tasks
  the training split (``train.seed``/``test_fraction``, by task, order-independent) held
  out of the union, restricted to ``F``.

Models are trained as ``cachewise train`` trains (:func:`cachewise.train.train.train_model`
on :func:`cachewise.features.featurize.featurize` of the events; the model never sees its
own held-out tasks) and written as export folders. Each replay is the replay's top-level
:func:`cachewise.replay.cli.replay` with the ``replay`` params, overridden with the
family's events, the cell's model, ``policies`` and ``max_sessions`` (sweep on: the
``replay.sweep`` capacities). Output under ``out``: one folder per cell (the replay's own
report), ``results.csv`` (every row with ``family`` and ``trained_on``) and ``report.md``
(the table: per cell and capacity, harmful evictions and hit rate of vLLM's LRU, the
unguarded and the guarded learned order, and the guarded/LRU ratios the issue targets).

Cost: one training per family plus one, and one replay sweep per cell; ``max_sessions``
bounds each replay.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from cachewise.data.ingest import load_sources
from cachewise.data.schema import write_events
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.replay.cli import replay
from cachewise.replay.config import load_config
from cachewise.train.split import split_by_task
from cachewise.train.train import train_model, write_outputs

SECTION = "cross_family"
SYNTHETIC = "synthetic"
POLICIES = ("lru", "lru_arrival", "learned_unguarded", "learned")
HARMFUL_RATIO_TARGET = 1.02
HIT_RATE_SLACK = 0.005


@dataclass(frozen=True)
class Settings:
    """The ``cross_family`` params section."""

    families: dict[str, list[str]]
    out: str = "data/cross_family"
    max_sessions: int = 48
    policies: tuple[str, ...] = POLICIES

    @classmethod
    def from_params(cls, doc: dict) -> Settings:
        raw = dict(doc.get(SECTION) or {})
        families = raw.pop("families", None)
        if not isinstance(families, dict) or not families:
            raise ValueError(f"params {SECTION}.families: expected a mapping family -> list of sources")
        unknown = set(raw) - {"out", "max_sessions", "policies"}
        if unknown:
            raise ValueError(f"params {SECTION}: unknown keys {sorted(unknown)}")
        return cls(
            families={str(k): [str(s) for s in (v if isinstance(v, list) else [v])] for k, v in families.items()},
            out=str(raw.get("out", cls.out)),
            max_sessions=int(raw.get("max_sessions", cls.max_sessions)),
            policies=tuple(raw.get("policies", POLICIES)),
        )


def load_families(settings: Settings, doc: dict, base: Path, work: Path) -> dict[str, pd.DataFrame]:
    """Events of every family whose sources exist (relative paths from ``base``)."""
    families: dict[str, pd.DataFrame] = {}
    for name, sources in settings.families.items():
        if sources == [SYNTHETIC]:
            synthetic = (doc.get("ingest") or {}).get("synthetic") or {}
            folder = work / "synthetic"
            generate_corpus(folder, int(synthetic.get("seed", 7)), int(synthetic.get("sessions", 120)))
            paths = [folder]
        else:
            paths = [p if p.is_absolute() else base / p for p in map(Path, sources)]
            paths = [p for p in paths if p.exists()]
        if not paths:
            print(f"cross-family: {name}: none of {sources} exists; skipped", file=sys.stderr)
            continue
        events, _ = load_sources(paths)
        if events.empty:
            print(f"cross-family: {name}: no LLM calls in {sources}; skipped", file=sys.stderr)
            continue
        families[name] = events
    return families


def _train(events: pd.DataFrame, doc: dict, folder: Path) -> Path:
    """Train as ``cachewise train`` does on ``events``; an export folder at ``folder``."""
    horizon = float(doc["features"]["horizon_s"])
    result = train_model(featurize(events, horizon).frame, {}, doc["train"], horizon, f"{SECTION} model")
    write_outputs(result, folder)
    return folder


def held_out(events: pd.DataFrame, train: dict) -> pd.Series:
    """Rows of ``events`` whose task the training split holds out (as train_model and the replay split)."""
    parts = split_by_task(
        events["task_id"].reset_index(drop=True),
        float(train.get("test_fraction", 0.25)),
        float(train.get("valid_fraction", 0.2)),
        int(train.get("seed", 42)),
    )
    mask = pd.Series(False, index=events.index)
    mask.iloc[parts.test] = True
    return mask


def _replay_cell(
    name: str, trained_on: str, events: pd.DataFrame, model: Path, params: str, settings: Settings, work: Path
) -> pd.DataFrame:
    """The replay sweep of ``events`` with ``model``; its results rows tagged with the cell."""
    cell = f"{name}__{trained_on}"
    events_path = work / f"{cell}.parquet"
    write_events(events.reset_index(drop=True), events_path)
    out = Path(settings.out) / cell
    config = load_config(
        params,
        {
            "events": str(events_path),
            "out": str(out),
            "model": str(model),
            "split": "all",
            "max_sessions": settings.max_sessions,
            "policies": settings.policies,
            # A model trained on the *other* families has never seen this family's tasks (they
            # were not in its events table), which the spec's held-out list cannot show.
            "allow_train_tasks": trained_on == "others",
        },
    )
    replay(config, params, sweep=True, progress=False)
    rows = pd.read_csv(out / "results.csv")
    rows.insert(0, "trained_on", trained_on)
    rows.insert(0, "family", name)
    return rows


def run_cross_family(params: str) -> Path:
    """Every cell of the module doc; returns the report's path."""
    doc = yaml.safe_load(Path(params).read_text()) or {}
    settings = Settings.from_params(doc)
    base = Path(params).resolve().parent
    results: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="cachewise-cross-family-") as tmp:
        work = Path(tmp)
        families = load_families(settings, doc, base, work)
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        if len(families) < 2:  # a fresh clone without ../shared/traces: nothing to cross
            pd.DataFrame(columns=["family", "trained_on", "policy"]).to_csv(out / "results.csv", index=False)
            (out / "report.md").write_text(
                f"# Cross-family replay\n\nSkipped: it needs two trace families with traces; found {sorted(families)}.\n"
            )
            return out / "report.md"
        union = pd.concat(families.values(), ignore_index=True)
        all_model = _train(union, doc, work / "model-all")
        test = held_out(union, doc["train"])
        offset = 0
        for name, events in families.items():
            others = pd.concat([e for n, e in families.items() if n != name], ignore_index=True)
            model = _train(others, doc, work / f"model-without-{name}")
            results.append(_replay_cell(name, "others", events, model, params, settings, work))
            mine = test.iloc[offset : offset + len(events)].to_numpy()
            offset += len(events)
            if mine.any():
                results.append(_replay_cell(name, "all", events[mine], all_model, params, settings, work))
            else:
                print(f"cross-family: {name}: no held-out task in the union's split; 'all' skipped", file=sys.stderr)
    table = pd.concat(results, ignore_index=True)
    table.to_csv(out / "results.csv", index=False)
    path = out / "report.md"
    path.write_text(report(table))
    return path


def report(table: pd.DataFrame) -> str:
    """The cross-family table (markdown): guarded vs LRU per cell and capacity."""
    lines = [
        "# Cross-family replay: learned order with and without the guard vs vLLM's LRU",
        "",
        "Harmful evictions / hit rate per policy; `guard/LRU` = guarded harmful evictions over LRU's "
        f"(target <= {HARMFUL_RATIO_TARGET}), `hit diff` = guarded minus LRU hit rate in points "
        f"(target >= {-100 * HIT_RATE_SLACK:.1f}). `others`: model trained on the other families, all sessions "
        "of the family replayed; `all`: model trained on every family, the family's held-out tasks replayed.",
        "",
        "| family | trained on | capacity | LRU | LRU + arrival | learned (no guard) | learned + guard | guard/LRU | hit diff | switches | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ["family", "trained_on", "capacity_frac", "concurrency"]
    for (family, trained_on, frac, _), cell in table.groupby(keys, sort=False):
        by = cell.set_index("policy")

        def fmt(policy: str) -> str:
            if policy not in by.index:
                return "n/a"
            return f"{int(by.at[policy, 'harmful_evictions']):,} / {100 * by.at[policy, 'hit_rate']:.1f}%"

        if "lru" in by.index and "learned" in by.index:
            lru_h, g_h = by.at["lru", "harmful_evictions"], by.at["learned", "harmful_evictions"]
            ratio = g_h / lru_h if lru_h else float("inf") if g_h else 1.0
            diff = 100 * (by.at["learned", "hit_rate"] - by.at["lru", "hit_rate"])
            met = "yes" if ratio <= HARMFUL_RATIO_TARGET and diff >= -100 * HIT_RATE_SLACK else "**no**"
            switches = int(by.at["learned", "guard_switches"]) if "guard_switches" in by.columns else "n/a"
            tail = f"{ratio:.3f} | {diff:+.2f} | {switches} | {met}"
        else:
            tail = "n/a | n/a | n/a | n/a"
        lines.append(
            f"| {family} | {trained_on} | {frac:.0%} | {fmt('lru')} | {fmt('lru_arrival')} | "
            f"{fmt('learned_unguarded')} | {fmt('learned')} | {tail} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cachewise.replay.cross_family --params params.yaml``."""
    prog = "python -m cachewise.replay.cross_family"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        path = run_cross_family(args.params)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cross-family: error: {exc}", file=sys.stderr)
        return 2
    print(f"cross-family report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
