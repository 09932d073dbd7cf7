"""The traffic certificate: the trace families on which a model's learned order beat vLLM's LRU before serving.

The online guard (:mod:`cachewise.runtime.guard`) has to earn the learned order its place on the
run's own evidence, which at real scale comes after most of the gain is decided. The certificate
is the evidence from before the run that the guard's certified start acts on ("Certified traffic"
there): for each trace family (the events' ``source``) the model was trained with,

* its *validation* tasks (the training split's validation part, by task: the model's early
  stopping saw them, its gradient never did; its held-out test tasks stay untouched for the
  replay report) are replayed with ``lru`` (vLLM's order) and ``learned_unguarded`` (the
  learned order, no guard) at each of ``capacity_fracs``, ``concurrency`` sessions at once, at
  most ``max_sessions`` sessions, ``seeds`` seeds (:func:`replay_events`, the replay's own
  top-level run);
* a capacity is *evidence* when LRU's harmful evictions there average at least
  ``min_harmful`` a run (fewer say nothing about an order);
* the family is **certified** iff it has evidence at some capacity, at every capacity with
  evidence the learned order has fewer harmful evictions than LRU (the mean of the per-seed
  ratios learned / LRU below 1) and a hit rate not below LRU's (mean over seeds), and the
  per-seed ratios of all those capacities together have their 95% t interval wholly below 1.
  The interval is pooled over capacities because three seeds alone give a t factor of 4.3: on
  the pipeline's Claude Code validation sessions at 75% three seeds at 0.81, 0.94 and 0.56 give
  0.77 ± 0.48 (session 28), a gain that each capacity's own interval could not show.

Families with no validation task, or none with evidence, are not certified. ``certificate.json``
(:data:`cachewise.scoring.exported.CERTIFICATE_FILE`) holds the model's ``model_sha256`` (a
certificate is read only for the model it was made for), the settings, and per family the
verdict, its reason and the per-capacity figures; it is written atomically into the model's
folder. ``cachewise export`` certifies the folder it exports (``certify`` params);
:mod:`cachewise.replay.cross_family` certifies each cell's model the same way, so a model trained
without a family never carries a certificate for it.

Cost: ``2 * len(capacity_fracs) * seeds`` replay runs of at most ``max_sessions`` sessions per
family (52 s for the pipeline's three families at the defaults, 2 cores shared with two other replays; session 28).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cachewise.atomic_write import write_text
from cachewise.data.schema import write_events
from cachewise.replay.cli import replay
from cachewise.replay.config import load_config
from cachewise.replay.stats import harmful_ratio, interval
from cachewise.scoring.exported import CERTIFICATE_FILE, SHA_KEY, SPEC_FILE, read_spec
from cachewise.train.split import split_by_task

SECTION = "certify"
POLICIES = ("lru", "learned_unguarded")


@dataclass(frozen=True)
class CertifySettings:
    """The ``certify`` params section (module doc)."""

    capacity_fracs: tuple[float, ...] = (0.25, 0.5, 0.75)
    concurrency: int = 8
    max_sessions: int = 12
    seeds: int = 3
    min_harmful: float = 100.0

    def __post_init__(self) -> None:
        if not self.capacity_fracs or not all(0 < c <= 1 for c in self.capacity_fracs):
            raise ValueError(f"{SECTION}.capacity_fracs must be fractions in (0, 1], got {self.capacity_fracs}")
        if self.concurrency < 1 or self.max_sessions < 1 or self.seeds < 2 or not self.min_harmful > 0:
            raise ValueError(f"{SECTION}: concurrency, max_sessions >= 1, seeds >= 2, min_harmful > 0 ({self})")

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> CertifySettings:
        """From the ``certify`` mapping (absent keys: the defaults above)."""
        raw = dict(section or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{SECTION}: unknown keys {sorted(unknown)}")
        if "capacity_fracs" in raw:
            raw["capacity_fracs"] = tuple(float(c) for c in raw["capacity_fracs"])
        return cls(**raw)


def replay_events(
    events: pd.DataFrame,
    events_path: Path,
    model: Path,
    params: str,
    out: Path,
    overrides: dict[str, Any],
    capacity_fracs: tuple[float, ...] | None,
    concurrency: int | None = None,
) -> pd.DataFrame:
    """The replay sweep (``params``' ``replay`` section with ``overrides``) of ``events`` (written to
    ``events_path``), all of whose sessions may be replayed (``split: all``, every source), with
    ``model``, at ``capacity_fracs`` and ``concurrency`` (None: the section's sweep's), reported
    under ``out``; its ``results.csv`` rows."""
    write_events(events.reset_index(drop=True), events_path)
    config = load_config(params, {**overrides, "events": str(events_path), "out": str(out), "model": str(model), "split": "all"})
    config = replace(config, sources=None)
    if capacity_fracs is not None:
        config = replace(config, sweep=replace(config.sweep, capacity_fracs=capacity_fracs))
    if concurrency is not None:
        config = replace(config, sweep=replace(config.sweep, concurrency=(concurrency,)))
    replay(config, params, sweep=True, progress=False)
    return pd.read_csv(out / "results.csv")


def validation_events(events: pd.DataFrame, train: dict[str, Any]) -> pd.DataFrame:
    """Rows of ``events`` whose task is in the training split's validation part (``train`` params)."""
    parts = split_by_task(
        events["task_id"].reset_index(drop=True),
        float(train.get("test_fraction", 0.25)),
        float(train.get("valid_fraction", 0.2)),
        int(train.get("seed", 42)),
    )
    return events.iloc[np.sort(parts.valid)]


def verdict(rows: pd.DataFrame, settings: CertifySettings) -> dict[str, Any]:
    """The certificate entry of one family from its replay rows (``policy``, ``capacity_frac``,
    ``seed``, ``harmful_evictions``, ``hit_rate``): ``certified``, ``reason`` and per capacity the
    figures (module doc's rule)."""
    capacities: list[dict[str, Any]] = []
    failed: list[str] = []
    pooled: list[float] = []
    for capacity, part in rows.groupby("capacity_frac"):
        harm = part.pivot_table(index="seed", columns="policy", values="harmful_evictions").dropna()
        hit = part.pivot_table(index="seed", columns="policy", values="hit_rate").dropna()
        if not set(POLICIES) <= set(harm.columns) or len(harm) < 2:
            failed.append(f"{capacity:g}: fewer than two seeds with both policies")
            continue
        lru_mean = float(harm["lru"].mean())
        entry: dict[str, Any] = {"capacity_frac": float(capacity), "lru_harmful_mean": lru_mean, "evidence": lru_mean >= settings.min_harmful}
        if entry["evidence"]:
            ratios = [harmful_ratio(g, v) for v, g in harm[list(POLICIES)].itertuples(index=False)]
            ratio, half = interval(np.asarray(ratios, dtype="float64"))
            hit_diff = float((hit["learned_unguarded"] - hit["lru"]).mean())
            entry.update({"harmful_ratio": ratio, "harmful_ratio_half_width": half, "hit_rate_diff": hit_diff})
            pooled.extend(ratios)
            if not ratio < 1.0:
                failed.append(f"{capacity:g}: learned/LRU harmful evictions {ratio:.3f} ± {half:.3f}")
            elif hit_diff < 0:
                failed.append(f"{capacity:g}: hit rate {100 * hit_diff:+.2f} points against LRU")
        capacities.append(entry)
    evidenced = [c["capacity_frac"] for c in capacities if c["evidence"]]
    ratio, half = interval(np.asarray(pooled, dtype="float64")) if pooled else (math.nan, math.nan)
    if failed:
        reason = "; ".join(failed)
    elif not evidenced:
        reason = f"no capacity where LRU averages {settings.min_harmful:g} harmful evictions a run"
    elif not ratio + half < 1.0:  # NaN (one run in all) fails too
        reason = f"learned/LRU harmful evictions {ratio:.3f} ± {half:.3f} over {len(pooled)} runs (not wholly below 1)"
    else:
        reason = f"learned/LRU harmful evictions {ratio:.3f} ± {half:.3f} over {len(pooled)} runs at " + ", ".join(
            f"{c:g}" for c in evidenced
        )
    certified = bool(evidenced) and not failed and ratio + half < 1.0
    return {"certified": certified, "reason": reason, "harmful_ratio": ratio, "harmful_ratio_half_width": half, "capacities": capacities}


def certify(
    model: Path, events: pd.DataFrame, params: str, train: dict[str, Any], settings: CertifySettings, progress: bool = True
) -> dict[str, Any]:
    """The certificate of the export folder ``model`` (module doc) from ``events`` (its training
    events: the validation tasks are taken with the ``train`` params' split); also written to
    ``model / certificate.json``."""
    valid = validation_events(events, train)
    families: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cachewise-certify-") as tmp:
        for family, part in sorted(valid.groupby("source"), key=lambda kv: str(kv[0])):
            overrides = {
                "policies": list(POLICIES),
                "max_sessions": settings.max_sessions,
                "seeds": settings.seeds,
                "allow_train_tasks": True,  # validation tasks: not held out by the spec, never trained on
            }
            work = Path(tmp) / str(family)
            work.mkdir()
            rows = replay_events(
                part, work / "events.parquet", model, params, work, overrides, settings.capacity_fracs, settings.concurrency
            )
            families[str(family)] = verdict(rows, settings)
            if progress:
                entry = families[str(family)]
                print(f"certify: {family}: {'certified' if entry['certified'] else 'not certified'} ({entry['reason']})")
    certificate = {
        SHA_KEY: read_spec(model / SPEC_FILE)[SHA_KEY],
        "settings": asdict(settings),
        "validation_sessions": int(valid.groupby(["source", "session_id"]).ngroups) if len(valid) else 0,
        "families": families,
    }
    write_text(model / CERTIFICATE_FILE, json.dumps(certificate, indent=2, sort_keys=True) + "\n")
    return certificate
