"""Per-request cost of the online feature path and of one model prediction.

Prints, best of ``--repeat`` passes over the calls of ../shared/traces/claude-code (or of a
synthetic corpus where the real traces are absent):

* ``FeatureState.observe`` microseconds per finished request: the mean, and the median and
  99th percentile of single requests. Every pass starts with the command caches of
  :mod:`cachewise.data.commands` empty (*cold*: a command costs a full parse the first time
  the pass sees it, as in serving, where most commands are new); then the same with the
  caches *warm* (every command seen before), with :func:`cachewise.data.commands.classify`
  answered from a table precomputed for these tool calls (the feature state's own cost), and
  ``classify`` alone over the same tool calls (cold); and the cold median per request by the
  name of its first tool call (number of requests in brackets);
* ``ExportedModel.predict_one`` (LightGBM single-row fast C API) vs ``Booster.predict`` on one
  row, microseconds per call, with the model of ``--model`` (default: a model trained here).

Run: ``python tests/benchmarks/bench_featurize.py [--model models/cachewise-reuse] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import yaml

from cachewise.data.commands import classify, clear_caches
from cachewise.data.ingest import load_sources
from cachewise.data.synthetic import generate_corpus
from cachewise.features import online
from cachewise.features.featurize import featurize, finish_order
from cachewise.features.online import FeatureState
from cachewise.features.record import finished_call_from_row
from cachewise.scoring.exported import ExportedModel, load_exported
from cachewise.train.train import train_model, write_outputs

REPO = Path(__file__).resolve().parents[2]
SHARED_TRACES = (REPO / ".." / "shared" / "traces").resolve()


def best_of(repeat: int, fn) -> float:
    """Shortest wall time of ``repeat`` runs of ``fn()``, seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_observe(events, repeat: int) -> None:
    calls = [finished_call_from_row(r) for r in finish_order(events).to_dict("records")]
    tools = [tc for c in calls for tc in c.tool_calls]
    clock = time.perf_counter_ns

    def observe_all(cold: bool = True) -> list[int]:
        """Nanoseconds of each ``observe`` in one pass over ``calls``."""
        if cold:
            clear_caches()
        state = FeatureState()
        spent = []
        for c in calls:
            start = clock()
            state.observe(c)
            spent.append(clock() - start)
        return spent

    def classify_all() -> None:
        clear_caches()
        for tc in tools:
            classify(tc.name, tc.input)

    def best_pass(cold: bool) -> np.ndarray:
        """Per-request microseconds of the fastest of ``repeat`` passes."""
        return np.array(min((observe_all(cold) for _ in range(repeat)), key=sum)) / 1e3

    def summary(us: np.ndarray) -> str:
        return f"mean {us.mean():5.1f} / median {np.median(us):5.1f} / p99 {np.percentile(us, 99):6.1f} us"

    cold = best_pass(cold=True)
    warm = best_pass(cold=False)
    commands = best_of(repeat, classify_all) / len(calls) * 1e6
    infos = {id(tc.input): classify(tc.name, tc.input) for tc in tools}
    with patch.object(online, "classify", lambda _n, i: infos[id(i)]):
        own = best_pass(cold=False)
    print(f"FeatureState.observe over {len(calls)} requests ({len(tools)} tool calls), per request:")
    print(f"  cold command caches:    {summary(cold)}")
    print(f"  warm command caches:    {summary(warm)}")
    print(f"  classify precomputed:   {summary(own)}  (the feature state's own cost)")
    print(f"  classify alone (cold):  mean {commands:5.1f} us")
    by_tool: dict[str, list[float]] = {}
    for call, us in zip(calls, cold):
        by_tool.setdefault(call.tool_calls[0].name if call.tool_calls else "(none)", []).append(us)
    common = sorted(by_tool.items(), key=lambda item: -len(item[1]))[:6]
    print("  cold, median by first tool: " + ", ".join(f"{n} {np.median(v):.1f} ({len(v)})" for n, v in common))


def bench_predict(model: ExportedModel, matrix: np.ndarray, repeat: int) -> None:
    rows = [np.ascontiguousarray(r) for r in matrix[:2000]]

    def fast() -> None:
        for r in rows:
            model.predict_one(r)

    def booster() -> None:
        for r in rows[:300]:
            model.booster.predict(r.reshape(1, -1))

    print(
        f"predict_one (fast C API): {best_of(repeat, fast) / len(rows) * 1e6:6.1f} us/call;"
        f" Booster.predict on one row: {best_of(repeat, booster) / 300 * 1e6:7.1f} us/call"
        f" ({model.booster.num_trees()} trees)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="export folder or models:/ URI (default: train one here)")
    parser.add_argument("--repeat", type=int, default=5, help="best of N passes")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    horizon = float(params["features"]["horizon_s"])
    with tempfile.TemporaryDirectory() as tmp:
        source = SHARED_TRACES / "claude-code"
        if not source.is_dir():
            print(f"real traces not found at {source}: using a SYNTHETIC corpus")
            source = Path(tmp) / "corpus"
            generate_corpus(source, seed=7, sessions=120)
        events, _ = load_sources([source])
        bench_observe(events, args.repeat)
        start = time.perf_counter()
        table = featurize(events, horizon)
        per_request = (time.perf_counter() - start) / len(events) * 1e6
        print(f"featurize (labels + features + frame): {per_request:6.1f} us/request")
        if args.model:
            model = load_exported(args.model)
        else:
            result = train_model(table.frame, {}, params["train"], horizon, "params.yaml:train")
            write_outputs(result, Path(tmp) / "model")
            model = load_exported(Path(tmp) / "model")
        bench_predict(model, table.frame[model.spec["feature_names"]].to_numpy(), args.repeat)


if __name__ == "__main__":
    main()
