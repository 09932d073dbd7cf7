"""Fault injection: damaged exported models never reach LightGBM's parser unchecked.

A real model (trained on a small synthetic corpus, written as ``cachewise train`` writes it)
is damaged by byte deletions, truncations and bit flips. Two defences are tested apart:

* the spec's ``model_sha256`` (every change is refused before parsing);
* the structural check, with the hash recomputed as if the damage had happened before it was
  recorded: whatever the check lets through must load in LightGBM without crashing (tried in
  a child process first, so a miss fails the test instead of killing pytest).

And the engine: vLLM's real scheduler built with a damaged model falls back with one warning
and keeps serving. Before these defences, a 100 kB truncation crashed the process (SIGSEGV)
and a deleted byte inside a tree aborted it (SIGABRT).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise.data.ingest import load_sources
from cachewise.scoring.exported import SHA_KEY, ModelLoadError, load_exported, model_sha256
from cachewise.scoring.model_text import ModelTextError, check_model_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(synthetic_model: dict) -> Path:
    """The export folder (model.txt + spec.json) of the shared synthetic model (tests/conftest.py)."""
    return synthetic_model["model"]


class LoaderChild:
    """A child process that loads model files with LightGBM on request: a crash ends it, not pytest."""

    CODE = (
        "import sys, lightgbm, numpy as np\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        b = lightgbm.Booster(model_file=line.strip()); b.predict(np.zeros((2, b.num_feature())))\n"
        "        print('verdict: ok', flush=True)\n"
        "    except Exception as e:\n"
        "        print('verdict: error', flush=True)\n"
    )

    def __init__(self) -> None:
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def load(self, path: Path) -> str:
        """'ok', 'error' (LightGBM raised), or 'crashed (status N)'.

        LightGBM prints its own warnings to stdout, so only ``verdict:`` lines are answers."""
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        while line := self.proc.stdout.readline():
            if line.startswith("verdict: "):
                return line.removeprefix("verdict: ").strip()
        status = self.proc.wait()
        self.proc = self._start()
        return f"crashed (status {status})"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@pytest.fixture(scope="module")
def loader_child() -> Iterator[LoaderChild]:
    child = LoaderChild()
    yield child
    child.close()


def _mutations(size: int) -> st.SearchStrategy[tuple[str, int, int]]:
    return st.tuples(st.sampled_from(["delete", "truncate", "flip"]), st.integers(0, size - 1), st.integers(0, 7))


def _damage(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, at, bit = mutation
    if kind == "delete":
        return data[:at] + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


def _damaged_copy(exported: Path, folder: Path, mutation: tuple[str, int, int], rehash: bool) -> Path:
    folder.mkdir(exist_ok=True)
    shutil.copyfile(exported / "spec.json", folder / "spec.json")
    data = _damage((exported / "model.txt").read_bytes(), mutation)
    (folder / "model.txt").write_bytes(data)
    if rehash:
        spec = json.loads((folder / "spec.json").read_text())
        spec[SHA_KEY] = hashlib.sha256(data).hexdigest()
        (folder / "spec.json").write_text(json.dumps(spec))
    return folder


def test_the_issue_cases_are_refused_before_parsing(exported: Path, tmp_path: Path) -> None:
    """Truncation (SIGSEGV before) and one byte deleted inside a tree (SIGABRT before)."""
    text = (exported / "model.txt").read_text()
    inside_tree = text.index("leaf_value=", text.index("Tree=1\n")) + 15
    for mutation in [("truncate", len(text) // 2, 0), ("delete", inside_tree, 0)]:
        for rehash in (False, True):
            folder = _damaged_copy(exported, tmp_path / "m", mutation, rehash)
            with pytest.raises(ModelLoadError, match="sha256" if not rehash else "not a LightGBM model"):
                load_exported(folder)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_caught_by_the_checksum(exported: Path, tmp_path: Path, data: st.DataObject) -> None:
    original = (exported / "model.txt").read_bytes()
    mutation = data.draw(_mutations(len(original)))
    folder = _damaged_copy(exported, tmp_path / "m", mutation, rehash=False)
    if (folder / "model.txt").read_bytes() == original:  # a truncation at the very end changes nothing
        assert load_exported(folder).spec
        return
    with pytest.raises(ModelLoadError, match="sha256"):
        load_exported(folder)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_what_the_structural_check_accepts_loads_safely(
    exported: Path, tmp_path: Path, loader_child: LoaderChild, data: st.DataObject
) -> None:
    original = (exported / "model.txt").read_bytes()
    mutation = data.draw(_mutations(len(original)))
    folder = _damaged_copy(exported, tmp_path / "m", mutation, rehash=True)
    try:
        check_model_text((folder / "model.txt").read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ModelTextError):
        with pytest.raises(ModelLoadError, match="not a LightGBM model"):
            load_exported(folder)
        return
    assert loader_child.load(folder / "model.txt") in ("ok", "error")  # never crashed
    try:
        model = load_exported(folder)
    except ModelLoadError:  # LightGBM raised, or the damage changed the probe row's prediction
        return
    assert math.isfinite(model.predict_one(np.zeros(model.n_features)))


def test_a_model_predicting_nan_is_refused_at_load(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nan"
    shutil.copytree(exported, folder)
    lines = (folder / "model.txt").read_text().split("\n")
    out = []
    for line in lines:
        if line.startswith("leaf_value="):
            line = "leaf_value=" + " ".join("nan" for _ in line.split("=", 1)[1].split(" "))
        out.append(line)
    text = "\n".join(out)
    # keep tree_sizes true to the new trees, so only the NaN values are wrong
    sizes, body = [], text.split("\n\n", 1)[1]
    starts = [body.index(f"Tree={i}\n") for i in range(check_model_text((exported / "model.txt").read_text()))]
    starts.append(body.index("end of trees"))
    sizes = [b - a for a, b in zip(starts, starts[1:])]
    head = text.split("\n\n", 1)[0].split("\n")
    head = [f"tree_sizes={' '.join(map(str, sizes))}" if h.startswith("tree_sizes=") else h for h in head]
    text = "\n".join(head) + "\n\n" + body
    (folder / "model.txt").write_text(text)
    spec = json.loads((folder / "spec.json").read_text())
    spec[SHA_KEY] = model_sha256(text)
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match="leaf_value is not finite"):
        load_exported(folder)


@pytest.mark.vllm
@pytest.mark.parametrize("rehash", [False, True], ids=["checksum", "structure"])
@pytest.mark.parametrize("kind", ["truncate", "delete", "flip"])
def test_engine_builds_falls_back_and_serves_with_a_damaged_model(
    exported: Path, tmp_path: Path, kind: str, rehash: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from cachewise.runtime.block_pool import ScoredBlockPool
    from cachewise.runtime.cpu_engine import make_request, make_scheduler, make_vllm_config, run_to_completion
    from cachewise.runtime.plugin import register

    register()
    text = (exported / "model.txt").read_text()
    at = text.index("left_child=", text.index("Tree=2\n")) + 12
    folder = _damaged_copy(exported, tmp_path / "m", (kind, at, 1), rehash)
    with caplog.at_level(logging.INFO, logger="vllm.cachewise"):
        scheduler = make_scheduler(make_vllm_config(24, 16, additional_config={"cachewise": {"model": str(folder)}}))
        pool = scheduler.kv_cache_manager.block_pool
        for i in range(6):
            scheduler.add_request(make_request(f"r{i}", range(1000 * i, 1000 * i + 64), 16, 3))
            run_to_completion(scheduler)
    assert isinstance(pool, ScoredBlockPool) and not pool.active and pool.stats.fallbacks["load"] == 1
    assert pool.stats.released == 6 and pool.stats.evictions > 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "vllm.cachewise" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "vLLM's default eviction order" in warnings[0]
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CacheWise active")]
    assert started and "fallback mode" in started[0] and "learned eviction order" not in started[0]


def test_score_and_replay_exit_2_with_one_line_on_a_damaged_model(exported: Path, tmp_path: Path, capsys) -> None:
    from cachewise.cli import main
    from cachewise.data.schema import write_events

    size = len((exported / "model.txt").read_bytes())
    folder = _damaged_copy(exported, tmp_path / "m", ("truncate", size // 2, 0), rehash=True)
    corpus = exported.parent / "corpus"
    assert main(["score", "--traces", str(corpus), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("score: error:") and "not a LightGBM model" in err[0]

    events, _ = load_sources([corpus])
    write_events(events, tmp_path / "events.parquet")
    train = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": train, "replay": {"max_sessions": 2, "workload": {"token_scale": 32}}}))
    argv = ["replay", "--params", str(params), "--events", str(tmp_path / "events.parquet"), "--model", str(folder),
            "--policies", "lru,learned", "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "replay: error:" in err[0] and "not a LightGBM model" in err[0]
