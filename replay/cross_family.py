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
own held-out tasks), written as export folders and certified as ``cachewise export`` certifies
(:mod:`cachewise.replay.certify` on the model's own validation tasks, the ``certify`` params with
the section's ``certify`` overrides): a model trained without a family never certifies it, and
the guarded policies start in the learned order only on a family their model's certificate names
(the table's ``certified`` column). Each replay is the replay's top-level
:func:`cachewise.replay.cli.replay` with the ``replay`` params, overridden with the
family's events, the cell's model, ``policies`` and ``max_sessions`` (sweep on: the
``replay.sweep`` capacities). Output under ``out``: one folder per cell (the replay's own
report), ``results.csv`` (every row with ``family`` and ``trained_on``) and ``report.md``
(the table: per cell and capacity, harmful evictions and hit rate of vLLM's LRU, the
unguarded and the guarded learned order, the guarded/LRU ratio and hit-rate difference the
issue targets, each paired per seed with a 95% t interval over the seeds; with ``cachewise``
among the policies, the residency controller's mean JCT minus LRU's, paired the same way).

Cost: one training and one certification per family plus one, and one replay sweep per cell; ``max_sessions``
bounds each replay. Two sizings: the wide one (``python -m cachewise.replay.cross_family``,
the section's keys: 3 seeds, 25-100%, ``cachewise`` included; ~3 min on 2 cores, session 21)
and the ``dvc repro`` stage (``--stage``: ``cross_family.stage`` over them: fewer sessions,
three seeds, one capacity, cheaper training), which must stay within ~2.5 minutes on 2 cores
and is too small for the targets' verdicts. With one family (a fresh clone: the synthetic
corpus only) only its ``all`` cell runs; the report names the families found and those
skipped.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.features.featurize import featurize
from cachewise.replay.certify import SECTION as CERTIFY_SECTION
from cachewise.replay.certify import CertifySettings, certify, replay_events
from cachewise.replay.stats import harmful_ratio, interval
from cachewise.scoring.exported import CERTIFICATE_FILE, SHA_KEY, read_certificate
from cachewise.train.split import split_by_task
from cachewise.train.train import train_model, write_outputs

SECTION = "cross_family"
SYNTHETIC = "synthetic"
POLICIES = ("lru", "lru_arrival", "learned_unguarded", "learned")
HARMFUL_RATIO_TARGET = 1.02
HIT_RATE_SLACK = 0.005


@dataclass(frozen=True)
class Settings:
    """The ``cross_family`` params section (``stage``: its ``stage`` subsection over it).

    ``seeds``: replay seeds per cell (None: ``replay.seeds``); ``capacity_fracs``: the
    capacities replayed (None: ``replay.sweep.capacity_fracs``); ``train``: overrides merged
    into the ``train`` params for the cells' models (e.g. fewer boosting rounds).
    """

    families: dict[str, list[str]]
    out: str = "data/cross_family"
    max_sessions: int = 48
    policies: tuple[str, ...] = POLICIES
    seeds: int | None = None
    capacity_fracs: tuple[float, ...] | None = None
    train: dict = field(default_factory=dict)
    certify: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, doc: dict, stage: bool = False) -> Settings:
        raw = dict(doc.get(SECTION) or {})
        families = raw.pop("families", None)
        if not isinstance(families, dict) or not families:
            raise ValueError(f"params {SECTION}.families: expected a mapping family -> list of sources")
        sized = raw.pop("stage", None) or {}
        if not isinstance(sized, dict):
            raise ValueError(f"params {SECTION}.stage: expected a mapping")
        keys = {"out", "max_sessions", "policies", "seeds", "capacity_fracs", "train", "certify"}
        for where, part in ((SECTION, raw), (f"{SECTION}.stage", sized)):
            unknown = set(part) - keys
            if unknown:
                raise ValueError(f"params {where}: unknown keys {sorted(unknown)}")
        if stage:
            raw.update(sized)
        fracs = raw.get("capacity_fracs")
        return cls(
            families={str(k): [str(s) for s in (v if isinstance(v, list) else [v])] for k, v in families.items()},
            out=str(raw.get("out", cls.out)),
            max_sessions=int(raw.get("max_sessions", cls.max_sessions)),
            policies=tuple(raw.get("policies", POLICIES)),
            seeds=None if raw.get("seeds") is None else int(raw["seeds"]),
            capacity_fracs=None if fracs is None else tuple(float(f) for f in fracs),
            train=dict(raw.get("train") or {}),
            certify=dict(raw.get("certify") or {}),
        )


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, nested mappings key by key (neither is changed)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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


def _train(events: pd.DataFrame, doc: dict, folder: Path, settings: Settings, params_path: str) -> tuple[Path, frozenset[str]]:
    """Train as ``cachewise train`` does on ``events`` (``train`` params with the settings' overrides)
    and certify it as ``cachewise export`` does (``certify`` params with the settings' overrides):
    an export folder at ``folder`` and the families its certificate names."""
    horizon = float(doc["features"]["horizon_s"])
    params = merged(doc["train"], settings.train)
    result = train_model(featurize(events, horizon).frame, {}, params, horizon, f"{SECTION} model")
    write_outputs(result, folder)
    certify_settings = CertifySettings.from_section(merged(doc.get(CERTIFY_SECTION) or {}, settings.certify))
    certificate = certify(folder, events, params_path, params, certify_settings, progress=False)
    return folder, read_certificate(folder / CERTIFICATE_FILE, certificate[SHA_KEY])  # as the runtime reads it


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
    name: str, trained_on: str, events: pd.DataFrame, model: tuple[Path, frozenset[str]], params: str, settings: Settings, work: Path
) -> pd.DataFrame:
    """The replay sweep of ``events`` with ``model`` (its folder and certified families); its results
    rows tagged with the cell and whether the model's certificate names the family."""
    cell = f"{name}__{trained_on}"
    overrides = {
        "max_sessions": settings.max_sessions,
        "policies": settings.policies,
        # A model trained on the *other* families has never seen this family's tasks (they
        # were not in its events table), which the spec's held-out list cannot show.
        "allow_train_tasks": trained_on == "others",
        "seeds": settings.seeds,
    }
    folder, certified = model
    rows = replay_events(events, work / f"{cell}.parquet", folder, params, Path(settings.out) / cell, overrides, settings.capacity_fracs)
    rows.insert(0, "certified", name in certified)
    rows.insert(0, "trained_on", trained_on)
    rows.insert(0, "family", name)
    return rows


def run_cross_family(params: str, stage: bool = False) -> Path:
    """Every cell of the module doc (sized by ``cross_family.stage`` with ``stage``); the report's path."""
    doc = yaml.safe_load(Path(params).read_text()) or {}
    settings = Settings.from_params(doc, stage)
    base = Path(params).resolve().parent
    results: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="cachewise-cross-family-") as tmp:
        work = Path(tmp)
        families = load_families(settings, doc, base, work)
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        missing = sorted(set(settings.families) - set(families))
        if not families:
            pd.DataFrame(columns=["family", "trained_on", "policy"]).to_csv(out / "results.csv", index=False)
            (out / "report.md").write_text(f"# Cross-family replay\n\nSkipped: no family has traces ({missing}).\n")
            return out / "report.md"
        union = pd.concat(families.values(), ignore_index=True)
        all_model = _train(union, doc, work / "model-all", settings, params)
        test = held_out(union, doc["train"])
        offset = 0
        for name, events in families.items():
            if len(families) > 1:
                others = pd.concat([e for n, e in families.items() if n != name], ignore_index=True)
                model = _train(others, doc, work / f"model-without-{name}", settings, params)
                results.append(_replay_cell(name, "others", events, model, params, settings, work))
            mine = test.iloc[offset : offset + len(events)].to_numpy()
            offset += len(events)
            if mine.any():
                results.append(_replay_cell(name, "all", events[mine], all_model, params, settings, work))
            else:
                print(f"cross-family: {name}: no held-out task in the union's split; 'all' skipped", file=sys.stderr)
    table = pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=["family", "trained_on", "policy"])
    table.to_csv(out / "results.csv", index=False)
    path = out / "report.md"
    path.write_text(report(table, sorted(families), missing, settings))
    return path


def _per_seed(cell: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` per seed (rows) and policy (columns) of one cell (no ``seed`` column: seed 0)."""
    cell = cell if "seed" in cell.columns else cell.assign(seed=0)
    return cell.assign(seed=cell["seed"].fillna(0)).pivot_table(index="seed", columns="policy", values=metric)


def _cell_figures(cell: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Mean and 95% half-width over the cell's seeds, paired per seed: ``ratio`` (guarded /
    LRU harmful evictions), ``hit`` (guarded - LRU hit rate, points), ``kept`` (the share of
    the unguarded order's fewer harmful evictions the guarded one keeps, over the seeds where
    there was a gain) and, with ``cachewise``, ``jct`` (its mean JCT - LRU's, s); keys absent
    where a policy is missing."""
    harm, hit = _per_seed(cell, "harmful_evictions"), _per_seed(cell, "hit_rate")
    out: dict[str, tuple[float, float]] = {}
    if {"lru", "learned"} <= set(harm.columns):
        both = harm[["lru", "learned"]].dropna()
        out["ratio"] = interval([harmful_ratio(g, v) for v, g in both.itertuples(index=False)])
        out["hit"] = interval(100 * (hit["learned"] - hit["lru"]).dropna())
        if "learned_unguarded" in harm.columns:
            gain = (harm["lru"] - harm["learned_unguarded"]).dropna()
            gain = gain[gain > 0]
            out["kept"] = interval(100 * (harm["lru"] - harm["learned"])[gain.index] / gain)
    if "cachewise" in harm.columns and "lru" in harm.columns and "jct_s_mean" in cell.columns:
        jct = _per_seed(cell, "jct_s_mean")
        out["jct"] = interval((jct["cachewise"] - jct["lru"]).dropna())
    return out


def _pm(figure: tuple[float, float], fmt: str) -> str:
    mean, half = figure
    return format(mean, fmt) if math.isnan(half) else f"{format(mean, fmt)} ± {abs(half):{fmt.lstrip('+')}}"


def report(
    table: pd.DataFrame, found: list[str] | None = None, missing: list[str] | None = None, settings: Settings | None = None
) -> str:
    """The cross-family table (markdown): guarded vs LRU per cell and capacity, paired over seeds."""
    lines = ["# Cross-family replay: learned order with and without the guard vs vLLM's LRU", ""]
    if found is not None:
        lines.append(f"Families with traces: {', '.join(found) or 'none'}.")
        if missing:
            lines.append(f"Skipped (no traces here): {', '.join(missing)}.")
        if len(found) < 2:
            lines.append("With one family there is nothing to train on but itself: only `all` cells.")
        lines.append("")
    if settings is not None:
        lines += [
            f"Sized: at most {settings.max_sessions} sessions per cell, "
            f"{settings.seeds or 'replay.seeds'} seed(s), capacities "
            f"{list(settings.capacity_fracs) if settings.capacity_fracs else 'replay.sweep'}"
            + (f", training overrides {settings.train}" if settings.train else "") + ".",
            "",
        ]
    residency = "cachewise" in set(table.get("policy", ()))
    lines += [
        "Harmful evictions / hit rate per policy (means over seeds); `guard/LRU` = guarded harmful "
        f"evictions over LRU's per seed (target <= {HARMFUL_RATIO_TARGET}), `hit diff` = guarded minus LRU "
        f"hit rate in points per seed (target >= {-100 * HIT_RATE_SLACK:.1f}), `gain kept` = share of the "
        "unguarded order's fewer harmful evictions the guarded one keeps (seeds where it had a gain; –: none); "
        "mean ± 95% t interval over "
        "the seeds (none with one seed); `met`: both targets on the mean. `others`: model trained on the other "
        "families, all sessions of the family replayed; `all`: model trained on every family, the family's "
        "held-out tasks replayed. `certified`: the cell's model's traffic certificate names the family (the "
        "guard then serves the learned order from the start; replay/certify.py)."
        + (" `cachewise − LRU`: the residency controller (under the guard), mean JCT minus LRU's per seed (s)."
           if residency else ""),
        "",
        "| family | trained on | certified | capacity | seeds | LRU | LRU + arrival | learned (no guard) | learned + guard "
        "| guard/LRU | hit diff | gain kept (%) | switches | met |"
        + (" cachewise | cachewise − LRU JCT (s) |" if residency else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if residency else ""),
    ]
    keys = ["family", "trained_on", "capacity_frac", "concurrency"]
    for (family, trained_on, frac, _), cell in table.groupby(keys, sort=False):
        by = cell.groupby("policy").mean(numeric_only=True)  # mean over seeds
        figures = _cell_figures(cell)

        def fmt(policy: str) -> str:
            if policy not in by.index:
                return "n/a"
            return f"{int(by.at[policy, 'harmful_evictions']):,} / {100 * by.at[policy, 'hit_rate']:.1f}%"

        if "ratio" in figures:
            ratio, diff = figures["ratio"][0], figures["hit"][0]
            met = "yes" if ratio <= HARMFUL_RATIO_TARGET and diff >= -100 * HIT_RATE_SLACK else "**no**"
            switches = f"{by.at['learned', 'guard_switches']:.1f}" if "guard_switches" in by.columns else "n/a"
            has_gain = "kept" in figures and not math.isnan(figures["kept"][0])
            kept = _pm(figures["kept"], ".0f") if has_gain else "–"
            tail = f"{_pm(figures['ratio'], '.3f')} | {_pm(figures['hit'], '+.2f')} | {kept} | {switches} | {met}"
        else:
            tail = "n/a | n/a | n/a | n/a | n/a"
        seeds = cell["seed"].nunique() if "seed" in cell.columns else 1
        certified = "n/a" if "certified" not in cell.columns else ("yes" if bool(cell["certified"].iloc[0]) else "no")
        line = (
            f"| {family} | {trained_on} | {certified} | {frac:.0%} | {seeds} | {fmt('lru')} | {fmt('lru_arrival')} | "
            f"{fmt('learned_unguarded')} | {fmt('learned')} | {tail} |"
        )
        if residency:
            jct = _pm(figures["jct"], "+.1f") if "jct" in figures else "n/a"
            line += f" {fmt('cachewise')} | {jct} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cachewise.replay.cross_family --params params.yaml``."""
    prog = "python -m cachewise.replay.cross_family"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--stage", action="store_true", help="the `dvc repro` sizing (cross_family.stage over cross_family)"
    )
    args = parser.parse_args(argv)
    try:
        path = run_cross_family(args.params, args.stage)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cross-family: error: {exc}", file=sys.stderr)
        return 2
    print(f"cross-family report: {path}")
    return 0


if __name__ == "__main__":
    from cachewise.cli import pin_hash_seed

    pin_hash_seed()  # repeatable as the `cachewise` command is (cachewise.cli, "Repeatable runs")
    raise SystemExit(main())
