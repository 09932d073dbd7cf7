"""SYNTHETIC coding-agent corpus, written in Claude Code transcript format.

This is the embedded default for machines without the real traces: it writes
``<out>/<task>/attempt_<n>/trace.jsonl`` + ``tool_calls.json`` sidecars, so the *same* loader
(:mod:`cachewise.data.claude_code`) reads it. Nothing here is real data: every transcript line
and sidecar entry carries ``"cachewiseSynthetic": true`` (the loader then tags the rows
``source = "synthetic"``), models are named ``cachewise-synthetic-*``, and the folder holds a
``SYNTHETIC_README.md`` and ``synthetic_manifest.json``.

Generation is deterministic in ``seed`` and calibrated to the facts measured on the real
Claude Code traces (``../shared/traces/README.md``), kept in :data:`CALIBRATION`:

* calls per session: log-normal, median 34, clipped to [4, 146];
* main-thread prompt growth: previous output + tool observation tokens, median ~447 per call;
* LLM latency: log-normal, median 2.2 s, p90 5.5 s; output tokens grow with latency;
* tool durations by tool and, for Bash, by command class (so a model has real signal): test
  runs are long with a heavy tail up to 300 s (whole-suite runs much longer than targeted
  ones), installs/builds seconds, ``cat``/``ls``/``grep``/git tens of milliseconds. Overall
  Bash median ~1.35 s / p90 ~10 s; Read 0.015/0.07 s; Edit and Grep 0.026/0.06 s;
* ~15% of sessions call a ``Task`` sub-agent: a sidechain thread of Read/Grep/Glob calls
  lasting ~66 s median (p90 ~130 s);
* each task has 1 or 2 attempts (sessions); ~12% of sessions end right after a tool call
  (half of those before the tool result arrived).

Sessions run one after another in wall time from 2026-01-05, like the real traces.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cachewise.data.claude_code import SYNTHETIC_MARK

MANIFEST = "synthetic_manifest.json"
README = "SYNTHETIC_README.md"
GENERATOR_VERSION = "cachewise-synthetic-1"
MAIN_MODEL = "cachewise-synthetic-agent"
SUBAGENT_MODEL = "cachewise-synthetic-subagent"
EPOCH_START = datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()
Z90 = 1.2815515655446004  # standard-normal 90th percentile

#: The README facts the corpus is calibrated to (test_synthetic checks them).
CALIBRATION: dict[str, float] = {
    "calls_per_session_median": 34,
    "calls_per_session_max": 146,
    "prompt_growth_median": 447,
    "llm_latency_median_s": 2.2,
    "llm_latency_p90_s": 5.5,
    "bash_median_s": 1.35,
    "bash_p90_s": 10.2,
    "read_median_s": 0.015,
    "read_p90_s": 0.07,
    "edit_median_s": 0.026,
    "edit_p90_s": 0.06,
    "grep_median_s": 0.026,
    "grep_p90_s": 0.06,
    "task_median_s": 66,
    "task_p90_s": 132,
}


def _sigma(median: float, p90: float) -> float:
    return math.log(p90 / median) / Z90


@dataclass(frozen=True)
class Duration:
    """Log-normal duration in seconds given its median and p90, capped."""

    median: float
    p90: float
    cap: float = 300.0

    def draw(self, rng: random.Random) -> float:
        return min(self.cap, rng.lognormvariate(math.log(self.median), _sigma(self.median, self.p90)))


# Tool execution time by (tool, command class); Bash classes are what make durations predictable.
DURATIONS: dict[str, Duration] = {
    "Read": Duration(0.015, 0.07),
    "Edit": Duration(0.026, 0.06),
    "Write": Duration(0.03, 0.07),
    "Grep": Duration(0.026, 0.06),
    "Glob": Duration(0.03, 0.09),
    "TodoWrite": Duration(0.017, 0.04),
    "bash:test_targeted": Duration(3.5, 10.0),
    "bash:test_suite": Duration(15.0, 60.0),
    "bash:build": Duration(6.5, 16.0),
    "bash:python": Duration(2.2, 8.0),
    "bash:search": Duration(0.04, 0.2),
    "bash:read": Duration(0.02, 0.08),
    "bash:git": Duration(0.05, 0.4),
    "bash:edit": Duration(0.02, 0.06),
    "bash:shell": Duration(0.02, 0.06),
}
LLM_LATENCY = Duration(2.2, 5.5, cap=90.0)
SUBAGENT_LATENCY = Duration(3.4, 7.0, cap=60.0)
OUTPUT_TOKENS_PER_S = 45.0
SUBAGENT_CALLS_MEDIAN = 16
# Main-thread calls; with sub-agent calls added a session has ~34 calls (median).
MAIN_CALLS_MEDIAN = 32
# Tool observation size in tokens (median, p90) by action; prompt growth = output + observation.
OBSERVATION_TOKENS: dict[str, Duration] = {
    "Read": Duration(550, 2400, cap=12000),
    "Edit": Duration(180, 500, cap=4000),
    "Write": Duration(60, 150, cap=1000),
    "Grep": Duration(220, 900, cap=6000),
    "Glob": Duration(120, 500, cap=3000),
    "TodoWrite": Duration(70, 120, cap=400),
    "Task": Duration(900, 2000, cap=6000),
    "bash:test_targeted": Duration(450, 1500, cap=8000),
    "bash:test_suite": Duration(900, 3000, cap=12000),
    "bash:build": Duration(300, 1200, cap=6000),
    "bash:python": Duration(200, 900, cap=6000),
    "bash:search": Duration(250, 1000, cap=6000),
    "bash:read": Duration(400, 1600, cap=8000),
    "bash:git": Duration(250, 1200, cap=6000),
    "bash:edit": Duration(20, 60, cap=400),
    "bash:shell": Duration(15, 40, cap=200),
}

_BASH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "test_targeted": (
        "python -m pytest tests/test_{mod}.py::test_{fn} -xvs 2>&1 | tail -40",
        "pytest tests/test_{mod}.py -k {fn} -q",
        "cd /testbed && python -m pytest tests/test_{mod}.py -v 2>&1 | tail -60",
    ),
    "test_suite": (
        "python -m pytest tests/ -q 2>&1 | tail -30",
        "cd /testbed && python -m pytest 2>&1 | tail -50",
        "tox -e py311",
    ),
    "build": ("pip install -e . -q", "pip install pytest {pkg}-extras", "python setup.py develop", "make"),
    "python": (
        'python -c "import {pkg}; print({pkg}.{fn})"',
        "python /tmp/reproduce_{fn}.py",
        "python3 << 'EOF'\nfrom {pkg} import {mod}\nprint({mod}.{fn})\nEOF",
    ),
    "search": (
        'grep -rn "def {fn}" /testbed/{pkg}/ | head -20',
        'find /testbed -name "*{mod}*" -type f',
        "rg {fn} /testbed/{pkg}",
    ),
    "read": (
        "cat /testbed/{pkg}/{mod}.py",
        "ls -la /testbed/{pkg}/",
        "head -80 /testbed/{pkg}/{mod}.py",
        "sed -n '100,160p' /testbed/{pkg}/{mod}.py",
    ),
    "git": ("git diff", "git status", "git log --oneline -5", "git diff {pkg}/{mod}.py"),
    "edit": (
        "sed -i 's/{fn}_old/{fn}/' /testbed/{pkg}/{mod}.py",
        "cat > /tmp/reproduce_{fn}.py << 'EOF'\nimport {pkg}\nprint({pkg}.{fn}())\nEOF",
    ),
    "shell": ("rm -f /tmp/reproduce_{fn}.py", "mkdir -p /tmp/work", "echo done"),
}

# Action weights by session phase (fraction of the session's calls done).
_PHASES: tuple[tuple[float, dict[str, float]], ...] = (
    (
        0.3,
        {
            "Read": 30,
            "Grep": 13,
            "Glob": 6,
            "TodoWrite": 7,
            "bash:search": 9,
            "bash:read": 5,
            "bash:git": 7,
            "bash:python": 10,
            "bash:build": 6,
            "bash:test_targeted": 5,
            "bash:test_suite": 2,
        },
    ),
    (
        0.65,
        {
            "Edit": 24,
            "Read": 16,
            "TodoWrite": 5,
            "Write": 3,
            "Grep": 5,
            "bash:python": 13,
            "bash:test_targeted": 13,
            "bash:test_suite": 3,
            "bash:search": 5,
            "bash:read": 3,
            "bash:edit": 3,
            "bash:build": 3,
            "bash:git": 4,
        },
    ),
    (
        1.01,
        {
            "Edit": 13,
            "Read": 8,
            "TodoWrite": 5,
            "bash:test_targeted": 18,
            "bash:test_suite": 8,
            "bash:python": 11,
            "bash:git": 12,
            "bash:shell": 5,
            "bash:build": 4,
            "bash:read": 3,
            "bash:search": 3,
        },
    ),
)
_SIDECHAIN_ACTIONS = {"Read": 45, "Grep": 25, "Glob": 15, "bash:search": 10, "bash:read": 5}
_PARALLEL_ACTIONS = ("Read", "Grep", "Glob")
_WORDS = ("core", "utils", "parser", "config", "io", "engine", "cli", "model", "array", "session", "schema", "graph")


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`generate_corpus` wrote."""

    path: Path
    seed: int
    sessions: int
    calls: int
    files: int


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _filler(n_chars: int) -> str:
    unit = "synthetic tool output (cachewise synthetic corpus)\n"
    return (unit * (n_chars // len(unit) + 1))[:n_chars]


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class _SessionWriter:
    """Builds one session's transcript lines and sidecar entries in time order."""

    def __init__(self, rng: random.Random, session_id: str, task: str, start: float) -> None:
        self.rng = rng
        self.session_id = session_id
        self.task = task
        self.t = start
        self.lines: list[dict[str, Any]] = []
        self.sidecar: list[dict[str, Any]] = []
        self.calls = 0
        self.vocab = {"pkg": task.split("__")[0], "mod": rng.choice(_WORDS), "fn": rng.choice(_WORDS) + "_value"}

    def _id(self, prefix: str = "") -> str:
        return prefix + uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def _line(self, kind: str, t: float, parent: str | None, side: bool, message: dict[str, Any]) -> str:
        uid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.lines.append(
            {
                "parentUuid": parent,
                "isSidechain": side,
                "userType": "synthetic",
                "cwd": f"/synthetic/{self.task}",
                "sessionId": self.session_id,
                "version": GENERATOR_VERSION,
                SYNTHETIC_MARK: True,
                "type": kind,
                "message": message,
                "uuid": uid,
                "timestamp": _iso(t),
            }
        )
        return uid

    def _action_input(self, action: str) -> tuple[str, dict[str, Any]]:
        v = self.vocab
        path = f"/testbed/{v['pkg']}/{v['mod']}.py"
        if action.startswith("bash:"):
            template = self.rng.choice(_BASH_TEMPLATES[action[5:]])
            return "Bash", {"command": template.format(**v), "description": f"synthetic {action[5:]} step"}
        if action == "Read":
            return action, {"file_path": path}
        if action == "Edit":
            return action, {"file_path": path, "old_string": f"{v['fn']}_old", "new_string": v["fn"]}
        if action == "Write":
            return action, {"file_path": f"/tmp/reproduce_{v['fn']}.py", "content": f"import {v['pkg']}\n"}
        if action == "Grep":
            return action, {"pattern": f"def {v['fn']}", "path": f"/testbed/{v['pkg']}"}
        if action == "Glob":
            return action, {"pattern": f"**/*{v['mod']}*.py"}
        if action == "TodoWrite":
            return action, {"todos": [{"content": "synthetic step", "status": "in_progress"}]}
        return "Task", {
            "description": "explore code",
            "prompt": f"Find where {v['fn']} is defined.",
            "subagent_type": "Explore",
        }

    def call(
        self, parent: str | None, side: bool, prompt: int, actions: list[str], model: str, latency: Duration
    ) -> tuple[str, int, list[tuple[str, str, str, dict[str, Any]]]]:
        """Emit one LLM response at ``self.t``; return (last uuid, output tokens, tool uses)."""
        rng = self.rng
        elapsed = latency.draw(rng)
        output = max(3, round(elapsed * OUTPUT_TOKENS_PER_S * rng.uniform(0.5, 1.5)))
        cache_read = max(0, prompt - rng.randint(200, 900))
        usage = {
            "input_tokens": 4,
            "cache_creation_input_tokens": prompt - cache_read - 4,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output,
        }
        msg_id = self._id("msg_synth_")
        base = {"model": model, "id": msg_id, "type": "message", "role": "assistant", "usage": usage}
        uses = [(action, self._id("toolu_synth_"), *self._action_input(action)) for action in actions]
        text_chars = max(8, output * 4 - sum(len(json.dumps(u[3])) for u in uses))
        blocks = [{"type": "text", "text": _filler(text_chars)}]
        blocks += [{"type": "tool_use", "id": tid, "name": name, "input": inp} for _, tid, name, inp in uses]
        end = self.t + elapsed
        for i, block in enumerate(blocks):  # streamed: first block at 60% of the latency, last at the end
            t = self.t + elapsed * (0.6 + 0.4 * i / (len(blocks) - 1)) if len(blocks) > 1 else end
            parent = self._line("assistant", t, parent, side, {**base, "content": [block]})
        self.t = end
        self.calls += 1
        return parent, output, uses

    def run_tools(
        self, parent: str, side: bool, uses: list[tuple[str, str, str, dict[str, Any]]], deliver: bool = True
    ) -> tuple[str, int]:
        """Run tool uses concurrently from ``self.t``, results written as they finish.

        Returns (last uuid, observation tokens); ``deliver=False`` leaves the results out (the
        session stopped while the tools ran).
        """
        rng = self.rng
        runs = []
        for action, tid, name, inp in uses:
            t0 = self.t + rng.uniform(0.001, 0.01)
            end = self.subagent(t0, inp["prompt"]) if action == "Task" else t0 + DURATIONS[action].draw(rng)
            runs.append((end, t0, action, tid, name, inp))
        obs_total = 0
        for end, t0, action, tid, name, inp in sorted(runs, key=lambda run: run[0]):
            obs = round(OBSERVATION_TOKENS[action].draw(rng))
            obs_total += obs
            entry = {"timestamp": _iso(t0), "tool": name, "id": tid, "input": repr(inp), SYNTHETIC_MARK: True}
            if deliver:
                is_error = action.startswith("bash:test") and rng.random() < 0.35
                content = ("Error: " if is_error else "") + _filler(obs * 4)
                result = {"tool_use_id": tid, "type": "tool_result", "content": content, "is_error": is_error}
                parent = self._line("user", end, parent, side, {"role": "user", "content": [result]})
                entry.update(end_timestamp=_iso(end), result_preview=content[:80])
            self.sidecar.append(entry)
        self.t = max(run[0] for run in runs) + rng.uniform(0.005, 0.05)
        return parent, obs_total

    def subagent(self, start: float, prompt_text: str) -> float:
        """A sidechain run of exploration calls starting at ``start``; returns its end time."""
        rng = self.rng
        saved_t = self.t
        self.t = start + 0.1
        parent = self._line("user", self.t, None, True, {"role": "user", "content": prompt_text})
        n = max(3, min(60, round(rng.lognormvariate(math.log(SUBAGENT_CALLS_MEDIAN), 0.35))))
        prompt = rng.randint(8000, 10000)
        for k in range(n):
            actions = [] if k == n - 1 else [_pick(rng, _SIDECHAIN_ACTIONS)]
            parent, output, uses = self.call(parent, True, prompt, actions, SUBAGENT_MODEL, SUBAGENT_LATENCY)
            obs = 0
            if uses:
                parent, obs = self.run_tools(parent, True, uses)
            prompt += output + obs
        end = self.t + 0.05
        self.t = saved_t
        return end

    def session(self, n_calls: int, with_task: bool, cut: bool) -> None:
        rng = self.rng
        self.t += rng.uniform(0.5, 2.0)
        parent = self._line(
            "user", self.t, None, False, {"role": "user", "content": f"Fix this issue (synthetic task {self.task})."}
        )
        self.t += rng.uniform(0.01, 0.1)
        prompt = rng.randint(11000, 16000)
        task_at = rng.randrange(1, max(2, int(0.3 * n_calls))) if with_task else -1
        for k in range(n_calls):
            last = k == n_calls - 1
            phase = next(w for limit, w in _PHASES if k / n_calls < limit)
            if k == task_at:
                actions = ["Task"]
            elif last and not cut:
                actions = []
            elif rng.random() < 0.12:
                actions = [rng.choice(_PARALLEL_ACTIONS) for _ in range(rng.randint(2, 3))]
            else:
                actions = [_pick(rng, phase)]
            parent, output, uses = self.call(parent, False, prompt, actions, MAIN_MODEL, LLM_LATENCY)
            if uses:
                deliver = not (last and cut and rng.random() < 0.5)
                parent, obs = self.run_tools(parent, False, uses, deliver)
                prompt += output + obs


def _clean(out_dir: Path) -> None:
    """Empty ``out_dir`` if it is absent, empty, or a previous synthetic corpus; refuse otherwise."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise FileExistsError(f"{out_dir} exists and is not a synthetic corpus; refusing to overwrite it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def generate_corpus(out_dir: str | Path, seed: int, sessions: int) -> CorpusInfo:
    """Write a SYNTHETIC corpus of ``sessions`` sessions to ``out_dir`` (replacing an old one)."""
    if sessions < 1:
        raise ValueError("sessions must be >= 1")
    out_dir = Path(out_dir)
    _clean(out_dir)
    rng = random.Random(seed)
    n_tasks = max(1, round(sessions / 1.3))
    attempts = [1] * n_tasks
    for i in rng.sample(range(n_tasks), min(n_tasks, sessions - n_tasks)):
        attempts[i] += 1
    t = EPOCH_START
    calls = files = 0
    for task_index, n_attempts in enumerate(attempts):
        task = f"synthetic{task_index:03d}__{rng.choice(_WORDS)}-{rng.randint(100, 9999)}"
        for attempt in range(1, n_attempts + 1):
            session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            writer = _SessionWriter(rng, session_id, task, t)
            n_calls = round(rng.lognormvariate(math.log(MAIN_CALLS_MEDIAN), 0.55))
            n_calls = max(4, min(int(CALIBRATION["calls_per_session_max"]), n_calls))
            writer.session(n_calls, with_task=rng.random() < 0.15, cut=rng.random() < 0.12)
            folder = out_dir / task / f"attempt_{attempt}"
            folder.mkdir(parents=True)
            with open(folder / "trace.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in writer.lines)
            (folder / "tool_calls.json").write_text(json.dumps(writer.sidecar), encoding="utf-8")
            calls += writer.calls
            files += 2
            t = writer.t + rng.uniform(30, 120)
    manifest = {
        "synthetic": True,
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "sessions": sessions,
        "calls": calls,
        "calibration": CALIBRATION,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (out_dir / README).write_text(
        "# SYNTHETIC corpus - not real agent traces\n\n"
        f"Generated by `cachewise.data.synthetic` ({GENERATOR_VERSION}), seed {seed}, {sessions} sessions, "
        f'{calls} LLM calls.\nClaude Code transcript format; every line carries `"{SYNTHETIC_MARK}": true`.\n'
        "Calibrated to the facts of ../shared/traces/README.md; see synthetic_manifest.json.\n",
        encoding="utf-8",
    )
    return CorpusInfo(out_dir, seed, sessions, calls, files + 2)
