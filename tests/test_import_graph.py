"""What vLLM loads stays light: the runtime never imports training, the replay, pandas or matplotlib.

Two checks, because neither alone is complete:

* **dynamic** (a fresh interpreter): import every module of ``cachewise.runtime`` that vLLM
  loads, call ``register()``, build a scheduler with a learned model through the plugin's
  ``--additional-config`` path, and try a ``models:/`` URI against a missing registry (the
  lazy registry import). Afterwards ``cachewise.train`` / ``cachewise.replay`` are not in
  ``sys.modules``, and no ``cachewise`` module imported pandas or matplotlib (vLLM itself
  imports pandas, through transformers and scikit-learn, so the check records who asked:
  ``builtins.__import__`` is wrapped to note each importer of those packages);
* **static** (AST of every runtime and scoring source): no import statement, at module
  level or inside a function, names a forbidden package, so a lazy import on a path the
  dynamic run does not take is caught too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_PACKAGES = ("cachewise.train", "cachewise.replay")
FORBIDDEN_THIRD_PARTY = ("pandas", "matplotlib")
#: Modules of runtime/ that vLLM loads (cpu_engine is the CPU test harness and offline check).
LOADED = (
    "plugin", "hooks", "block_pool", "eviction_order", "scheduler", "residency", "sessions",
    "learned", "request_calls", "tool_calls", "guard", "serving_log", "metrics", "config",
    "policy", "vllm_compat", "kv_blocks",
)

PROBE = r"""
import builtins, json, os, sys, tempfile
from pathlib import Path
askers = []
_orig = builtins.__import__
def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in {third_party}:
        askers.append(((globals or {{}}).get("__name__", "?"), name))
    return _orig(name, globals, locals, fromlist, level)
builtins.__import__ = _import
import importlib
for mod in {loaded}:
    importlib.import_module("cachewise.runtime." + mod)
from cachewise.runtime.plugin import register
from cachewise.runtime.cpu_engine import make_scheduler, make_vllm_config
from cachewise.scoring.exported import ModelLoadError, load_exported
register()
cfg = {{"cachewise": {{"model": sys.argv[1]}}}}
sched = make_scheduler(make_vllm_config(64, additional_config=cfg,
                       scheduler_cls="cachewise.runtime.scheduler.PrefixAwareScheduler"))
assert type(sched.kv_cache_manager.block_pool).__name__ == "ScoredBlockPool"
assert sched.kv_cache_manager.block_pool.active
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + str(Path(tempfile.mkdtemp()) / "absent.db")
try:
    load_exported("models:/cachewise-reuse@champion", registry_timeout_s=1)
except ModelLoadError:
    pass
print(json.dumps({{"modules": sorted(sys.modules), "askers": askers}}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from cachewise.runtime.cpu_engine import export_tiny_model

    model = export_tiny_model(tmp_path_factory.mktemp("model"))
    code = PROBE.format(third_party=set(FORBIDDEN_THIRD_PARTY), loaded=LOADED)
    done = subprocess.run(
        [sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serving_path_never_imports_training_or_replay(probe: dict) -> None:
    loaded = [m for m in probe["modules"] if m.startswith(FORBIDDEN_PACKAGES)]
    assert loaded == [], f"the runtime imported {loaded}"
    assert "cachewise.runtime.plugin" in probe["modules"]  # the probe did import the runtime


def test_no_cachewise_module_imports_pandas_or_matplotlib(probe: dict) -> None:
    ours = sorted({(who, name) for who, name in probe["askers"] if who.startswith("cachewise")})
    assert ours == [], f"imported by CacheWise modules: {ours}"
    # The recorder works: vLLM's own chain (transformers -> sklearn) asks for pandas.
    assert any(name.startswith("pandas") for _, name in probe["askers"])


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement of ``path``, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


@pytest.mark.parametrize("folder", ["runtime", "scoring"])
def test_no_source_line_of_the_serving_half_names_a_forbidden_package(folder: str) -> None:
    sources = sorted((ROOT / folder).glob("*.py"))
    assert sources
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sources
        for line, name in _imports(path)
        if name.startswith(FORBIDDEN_PACKAGES) or name.split(".")[0] in FORBIDDEN_THIRD_PARTY
    ]
    assert bad == []


def test_the_static_check_sees_nested_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from cachewise.train.tracking import tracking_uri\n    import pandas as pd\n")
    assert _imports(src) == [(2, "cachewise.train.tracking.tracking_uri"), (3, "pandas")]
