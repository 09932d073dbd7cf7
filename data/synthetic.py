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

One generator, two outputs: :class:`_Session` makes every random draw of a session and hands
it, in time order, to a sink -- :class:`_Transcript` (transcript lines + sidecar entries, what
:func:`generate_corpus` writes) or :class:`_Events` (events rows, what
:func:`generate_events` streams). The draws never depend on the sink, so for a seed the
streamed rows equal what ingest loads from the written corpus (times are rounded to the
millisecond of the transcript timestamps in both). Cost: O(calls) time, one session (plus
O(tasks) ints, plus one chunk of rows for :func:`generate_events`) in memory;
:func:`generate_events` runs at ~39k calls/s on one core, ~5x the write-then-ingest path
(~8k; no JSON is written or parsed): tests/benchmarks/bench_synthetic.py.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from functools import lru_cache
from typing import Any, Callable, Iterator, TypeVar

import pyarrow as pa

from cachewise.data.claude_code import CHARS_PER_TOKEN, PLAUSIBLE_OUTPUT_FRACTION, SYNTHETIC_MARK, SYNTHETIC_SOURCE
from cachewise.data.commands import command_class
from cachewise.data.schema import EVENTS_SCHEMA, tag_schema

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mu", math.log(self.median))
        object.__setattr__(self, "_sigma", _sigma(self.median, self.p90))

    def draw(self, rng: random.Random) -> float:
        return min(self.cap, rng.lognormvariate(self._mu, self._sigma))  # type: ignore[attr-defined]


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


def _ms(t: float) -> float:
    """``t`` rounded to the millisecond: the resolution of transcript timestamps (both sinks use it)."""
    return round(t, 3)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(_ms(t), tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uuid(bits: int) -> str:
    return str(uuid.UUID(int=bits, version=4))


def _filler(n_chars: int) -> str:
    unit = "synthetic tool output (cachewise synthetic corpus)\n"
    return (unit * (n_chars // len(unit) + 1))[:n_chars]


@lru_cache(maxsize=None)
def _cumulative(weights: tuple[tuple[str, float], ...]) -> tuple[list[str], list[float]]:
    return [k for k, _ in weights], list(itertools.accumulate(w for _, w in weights))


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    """``rng.choices(keys, weights)[0]`` (same draw) with the cumulative weights computed once."""
    keys, cum = _cumulative(tuple(weights.items()))
    return rng.choices(keys, cum_weights=cum)[0]


@dataclass(frozen=True)
class _Use:
    """One tool use of a response, as drawn by :class:`_Session`."""

    action: str  # key of DURATIONS / OBSERVATION_TOKENS ("Read", "bash:git", "Task", ...)
    id_bits: int
    name: str
    input: dict[str, Any]
    input_json: str  # json.dumps(input): what the transcript holds and the loader re-encodes


@dataclass(frozen=True)
class _Response:
    """One LLM response of a thread, as drawn by :class:`_Session`."""

    start: float  # when the response began streaming (the client sent the request earlier)
    elapsed: float
    side: bool
    model: str
    msg_bits: int
    prompt: int
    cache_read: int
    output: int
    uses: tuple[_Use, ...]
    line_bits: tuple[int, ...]  # one transcript line per block: the text block, then each tool use

    @property
    def text_chars(self) -> int:
        return max(8, self.output * 4 - sum(len(u.input_json) for u in self.uses))

    def block_times(self) -> list[float]:
        """Streamed: the first block at 60% of the latency, the last at the end."""
        n = len(self.line_bits)
        if n == 1:
            return [self.start + self.elapsed]
        return [self.start + self.elapsed * (0.6 + 0.4 * i / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class _ToolRun:
    """One tool execution; ``result`` is (observation tokens, is_error), None when never delivered."""

    use: _Use
    start: float
    end: float
    side: bool
    result: tuple[int, bool] | None
    line_bits: int


class _Transcript:
    """Sink: one session as Claude Code transcript lines and ``tool_calls.json`` sidecar entries."""

    def __init__(self, session_id: str, task: str, attempt: int) -> None:
        self.session_id = session_id
        self.task = task
        self.attempt = attempt
        self.lines: list[dict[str, Any]] = []
        self.sidecar: list[dict[str, Any]] = []
        self.parent: dict[bool, str | None] = {False: None, True: None}  # last line uuid per chain

    def _line(self, kind: str, t: float, side: bool, bits: int, message: dict[str, Any], root: bool = False) -> None:
        uid = _uuid(bits)
        self.lines.append(
            {
                "parentUuid": None if root else self.parent[side],
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
        self.parent[side] = uid

    def prompt(self, t: float, side: bool, text: str, bits: int) -> None:
        self._line("user", t, side, bits, {"role": "user", "content": text}, root=True)

    def response(self, r: _Response) -> None:
        usage = {
            "input_tokens": 4,
            "cache_creation_input_tokens": r.prompt - r.cache_read - 4,
            "cache_read_input_tokens": r.cache_read,
            "output_tokens": r.output,
        }
        base = {"model": r.model, "id": "msg_synth_" + uuid.UUID(int=r.msg_bits, version=4).hex}
        base.update(type="message", role="assistant", usage=usage)
        blocks: list[dict[str, Any]] = [{"type": "text", "text": _filler(r.text_chars)}]
        blocks += [
            {"type": "tool_use", "id": _tool_id(u.id_bits), "name": u.name, "input": u.input} for u in r.uses
        ]
        for block, t, bits in zip(blocks, r.block_times(), r.line_bits):
            self._line("assistant", t, r.side, bits, {**base, "content": [block]})

    def tool(self, run: _ToolRun) -> None:
        tid = _tool_id(run.use.id_bits)
        entry = {"timestamp": _iso(run.start), "tool": run.use.name, "id": tid, "input": repr(run.use.input)}
        entry[SYNTHETIC_MARK] = True
        if run.result is not None:
            obs, is_error = run.result
            content = ("Error: " if is_error else "") + _filler(obs * 4)
            result = {"tool_use_id": tid, "type": "tool_result", "content": content, "is_error": is_error}
            self._line("user", run.end, run.side, run.line_bits, {"role": "user", "content": [result]})
            entry.update(end_timestamp=_iso(run.end), result_preview=content[:80])
        self.sidecar.append(entry)


def _tool_id(bits: int) -> str:
    return "toolu_synth_" + uuid.UUID(int=bits, version=4).hex


@lru_cache(maxsize=65536)
def _command_class(name: str, input_json: str) -> str:
    return command_class(name, json.loads(input_json))


class _Events:
    """Sink: one session directly as events rows, equal to what :mod:`cachewise.data.claude_code`
    loads from the :class:`_Transcript` of the same draws (tests/test_synthetic.py checks it).

    Sub-agent runs never nest (a sidechain calls no ``Task``), so one open thread per side suffices.
    """

    def __init__(self, session_id: str, task: str, src_file: str) -> None:
        self.common = {"source": SYNTHETIC_SOURCE, "src_file": src_file, "task_id": task, "session_id": session_id}
        self.rows: list[dict[str, Any]] = []
        # per side: [thread_id, next call_index, last user-line time]
        self.threads: dict[bool, list[Any]] = {False: [session_id, 0, 0.0], True: ["", 0, 0.0]}
        self.pending: dict[int, dict[str, Any]] = {}

    def prompt(self, t: float, side: bool, text: str, bits: int) -> None:
        if side:
            self.threads[True] = [f"{self.common['session_id']}:{_uuid(bits)}", 0, _ms(t)]
        else:
            self.threads[False][2] = _ms(t)

    def response(self, r: _Response) -> None:
        thread = self.threads[r.side]
        tools = []
        for u in r.uses:
            tool = {"name": u.name, "input_json": u.input_json, "command_class": _command_class(u.name, u.input_json)}
            self.pending[u.id_bits] = tool
            tools.append(tool)
        estimate = math.ceil((r.text_chars + sum(len(u.input_json) for u in r.uses)) / CHARS_PER_TOKEN)
        output = estimate if r.output < PLAUSIBLE_OUTPUT_FRACTION * estimate else r.output
        self.rows.append(
            {
                **self.common,
                "thread_id": thread[0],
                "is_sidechain": r.side,
                "call_index": thread[1],
                "model": r.model,
                "time_basis": "wall",
                "request_time": thread[2],
                "response_time": _ms(r.block_times()[-1]),
                "prompt_tokens": r.prompt,
                "cached_tokens": r.cache_read,
                "output_tokens": output,
                "hash_ids": None,
                "tool_calls": tools,
                "ended_turn": not tools,
            }
        )
        thread[1] += 1

    def tool(self, run: _ToolRun) -> None:
        tool = self.pending.pop(run.use.id_bits)
        tool["start_time"] = _ms(run.start)
        if run.result is None:
            tool.update(end_time=None, observation_bytes=None, is_error=None)
            return
        obs, is_error = run.result
        end = _ms(run.end)
        tool.update(end_time=end, observation_bytes=obs * 4 + (7 if is_error else 0), is_error=is_error)
        self.threads[run.side][2] = end


_Sink = _Transcript | _Events
_S = TypeVar("_S", _Transcript, _Events)


class _Session:
    """Draws one session (all the randomness lives here) and hands it to a sink in time order."""

    def __init__(self, rng: random.Random, task: str, start: float, sink: _Sink) -> None:
        self.rng = rng
        self.sink = sink
        self.t = start
        self.calls = 0
        self.vocab = {"pkg": task.split("__")[0], "mod": rng.choice(_WORDS), "fn": rng.choice(_WORDS) + "_value"}

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

    def _use(self, action: str) -> _Use:
        bits = self.rng.getrandbits(128)
        name, inp = self._action_input(action)
        return _Use(action, bits, name, inp, json.dumps(inp))

    def prompt(self, t: float, side: bool, text: str) -> None:
        self.sink.prompt(t, side, text, self.rng.getrandbits(128))

    def call(self, side: bool, prompt: int, actions: list[str], model: str, latency: Duration) -> _Response:
        """Emit one LLM response at ``self.t``."""
        rng = self.rng
        elapsed = latency.draw(rng)
        output = max(3, round(elapsed * OUTPUT_TOKENS_PER_S * rng.uniform(0.5, 1.5)))
        cache_read = max(0, prompt - rng.randint(200, 900))
        msg_bits = rng.getrandbits(128)
        uses = tuple(self._use(action) for action in actions)
        line_bits = tuple(rng.getrandbits(128) for _ in range(len(uses) + 1))
        r = _Response(self.t, elapsed, side, model, msg_bits, prompt, cache_read, output, uses, line_bits)
        self.sink.response(r)
        self.t += elapsed
        self.calls += 1
        return r

    def run_tools(self, side: bool, uses: tuple[_Use, ...], deliver: bool = True) -> int:
        """Run tool uses concurrently from ``self.t``, results delivered as they finish.

        Returns the observation tokens; ``deliver=False`` leaves the results out (the session
        stopped while the tools ran).
        """
        rng = self.rng
        runs = []
        for use in uses:
            t0 = self.t + rng.uniform(0.001, 0.01)
            end = self.subagent(t0, use.input["prompt"]) if use.action == "Task" else t0 + DURATIONS[use.action].draw(rng)
            runs.append((end, t0, use))
        obs_total = 0
        for end, t0, use in sorted(runs, key=lambda run: run[0]):
            obs = round(OBSERVATION_TOKENS[use.action].draw(rng))
            obs_total += obs
            result = None
            if deliver:
                result = (obs, use.action.startswith("bash:test") and rng.random() < 0.35)
            self.sink.tool(_ToolRun(use, t0, end, side, result, rng.getrandbits(128) if deliver else 0))
        self.t = max(run[0] for run in runs) + rng.uniform(0.005, 0.05)
        return obs_total

    def subagent(self, start: float, prompt_text: str) -> float:
        """A sidechain run of exploration calls starting at ``start``; returns its end time."""
        rng = self.rng
        saved_t = self.t
        self.t = start + 0.1
        self.prompt(self.t, True, prompt_text)
        n = max(3, min(60, round(rng.lognormvariate(math.log(SUBAGENT_CALLS_MEDIAN), 0.35))))
        prompt = rng.randint(8000, 10000)
        for k in range(n):
            actions = [] if k == n - 1 else [_pick(rng, _SIDECHAIN_ACTIONS)]
            r = self.call(True, prompt, actions, SUBAGENT_MODEL, SUBAGENT_LATENCY)
            obs = self.run_tools(True, r.uses) if r.uses else 0
            prompt += r.output + obs
        end = self.t + 0.05
        self.t = saved_t
        return end

    def session(self, n_calls: int, with_task: bool, cut: bool, task: str) -> None:
        rng = self.rng
        self.t += rng.uniform(0.5, 2.0)
        self.prompt(self.t, False, f"Fix this issue (synthetic task {task}).")
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
            r = self.call(False, prompt, actions, MAIN_MODEL, LLM_LATENCY)
            if r.uses:
                deliver = not (last and cut and rng.random() < 0.5)
                prompt += r.output + self.run_tools(False, r.uses, deliver)


def _clean(out_dir: Path) -> None:
    """Empty ``out_dir`` if it is absent, empty, or a previous synthetic corpus; refuse otherwise."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise FileExistsError(f"{out_dir} exists and is not a synthetic corpus; refusing to overwrite it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _sessions(seed: int, sessions: int, sink_for: Callable[[str, str, int], _S]) -> Iterator[tuple[_S, int]]:
    """Draw ``sessions`` sessions from ``seed``: ``(sink, calls)`` per session, in order.

    ``sink_for(session_id, task, attempt)`` makes each session's sink; the draws do not depend
    on the sink, so every sink sees the same corpus for a seed. Memory: one session at a time
    plus O(tasks) ints.
    """
    if sessions < 1:
        raise ValueError("sessions must be >= 1")
    rng = random.Random(seed)
    n_tasks = max(1, round(sessions / 1.3))
    attempts = [1] * n_tasks
    for i in rng.sample(range(n_tasks), min(n_tasks, sessions - n_tasks)):
        attempts[i] += 1
    t = EPOCH_START
    for task_index, n_attempts in enumerate(attempts):
        task = f"synthetic{task_index:03d}__{rng.choice(_WORDS)}-{rng.randint(100, 9999)}"
        for attempt in range(1, n_attempts + 1):
            sink = sink_for(_uuid(rng.getrandbits(128)), task, attempt)
            session = _Session(rng, task, t, sink)
            n_calls = round(rng.lognormvariate(math.log(MAIN_CALLS_MEDIAN), 0.55))
            n_calls = max(4, min(int(CALIBRATION["calls_per_session_max"]), n_calls))
            session.session(n_calls, with_task=rng.random() < 0.15, cut=rng.random() < 0.12, task=task)
            yield sink, session.calls
            t = session.t + rng.uniform(30, 120)


def _trace_dir(task: str, attempt: int) -> str:
    return f"{task}/attempt_{attempt}"


def generate_events(seed: int, sessions: int, chunk_sessions: int = 1000, folder: str = "synthetic") -> Iterator[pa.Table]:
    """The corpus ``generate_corpus(<folder>, seed, sessions)`` writes, as events tables, streamed.

    Yields one schema-tagged table (:data:`cachewise.data.schema.EVENTS_SCHEMA`) per
    ``chunk_sessions`` sessions whose rows equal what ingest loads from that corpus (``src_file``
    as ingest names it, under ``folder``), without writing or parsing any JSON: the fast path
    for large corpora (tests/benchmarks/bench_fleet.py). Memory: one chunk.
    """

    def sink(session_id: str, task: str, attempt: int) -> _Events:
        return _Events(session_id, task, f"{folder}/{_trace_dir(task, attempt)}/trace.jsonl")

    rows: list[dict[str, Any]] = []
    for done, (events, _) in enumerate(_sessions(seed, sessions, sink), start=1):
        rows.extend(events.rows)
        if done % chunk_sessions == 0 or done == sessions:
            yield tag_schema(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA))
            rows = []


def generate_corpus(out_dir: str | Path, seed: int, sessions: int) -> CorpusInfo:
    """Write a SYNTHETIC corpus of ``sessions`` sessions to ``out_dir`` (replacing an old one)."""
    if sessions < 1:
        raise ValueError("sessions must be >= 1")
    out_dir = Path(out_dir)
    _clean(out_dir)
    calls = files = 0
    for writer, n in _sessions(seed, sessions, _Transcript):
        folder = out_dir / _trace_dir(writer.task, writer.attempt)
        folder.mkdir(parents=True)
        with open(folder / "trace.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in writer.lines)
        (folder / "tool_calls.json").write_text(json.dumps(writer.sidecar), encoding="utf-8")
        calls += n
        files += 2
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
