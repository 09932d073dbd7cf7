"""Normalise an agent tool call to a command class and a few numeric argument facts.

Used by the trace loaders (to fill ``tool_calls.command_class``), by the feature code, and by
the vLLM runtime at serve time, so both functions are:

* pure: the result depends only on the arguments;
* total: any ``tool_name`` / ``tool_input`` (dict, JSON string, raw command string, ``None``,
  numbers, nested garbage) gives a result, never an exception;
* fast: all regular expressions are compiled once at import; no shell parser is used
  (``shlex`` raises on unbalanced quotes and is slow).

Command classes (:data:`COMMAND_CLASSES`):

``test``      test runners: pytest, tox, nox, unittest, ``npm test``, ``go test``, ``cargo test``...
``build``     dependency/build steps: pip/uv/poetry/conda/apt install, make, setup.py, npm install...
``search``    Grep, Glob, and grep / rg / ag / find / fd in a shell command
``read``      Read, and cat / head / tail / less / wc / ls / tree / ``sed -n`` in a shell command
``edit``      Edit, Write, MultiEdit, NotebookEdit, ``sed -i``, patch, heredoc/redirect writes,
              SWE-agent edit / create / insert, str_replace_editor edits
``git``       any git command
``network``   curl, wget, WebFetch, WebSearch
``subagent``  Task (a sub-agent run, a sidechain thread in the transcript)
``todo``      TodoWrite / TodoRead
``python``    other python invocations (``python -c``, scripts, heredoc programs)
``shell``     any other shell command (echo, rm, mkdir, background-shell polling...)
``other``     anything else, including unparseable input

A shell command with several parts (``cd x && pip install -e . && pytest -x | tail``) gets the
class of its most expensive part, by :data:`_SHELL_PRIORITY` (test > build > network > edit >
git > python > search > read > shell).
"""

from __future__ import annotations

import json
import re
from typing import Any

COMMAND_CLASSES: tuple[str, ...] = (
    "test",
    "build",
    "search",
    "read",
    "edit",
    "git",
    "network",
    "subagent",
    "todo",
    "python",
    "shell",
    "other",
)

#: Keys of :func:`argument_facts`, always all present, always numeric (int or float).
ARGUMENT_FACT_KEYS: tuple[str, ...] = (
    "cmd_len",  # characters of the command (shell) or of the JSON input (other tools)
    "n_segments",  # shell parts joined by && || ; | or newlines (1 for non-shell tools)
    "has_pipe",  # 1 if the shell command pipes into another command
    "n_paths",  # path-like arguments (contain '/' or end in a file extension)
    "is_test",  # 1 if the call runs a test command
    "test_targeted",  # 1 if the test run selects tests (-k, ::, a test file, -run, ...)
    "n_test_targets",  # test paths / node ids / dotted test names given
    "has_maxfail",  # 1 if the test run stops at the first failure (-x, --maxfail, --exitfirst)
    "has_timeout",  # 1 if a timeout is set (timeout prefix, --timeout flag, tool timeout field)
    "timeout_s",  # that timeout in seconds, 0 when none
    "background",  # 1 if the command runs in the background (run_in_background, trailing &)
    "output_limited",  # 1 if output is cut (| head / | tail / -q / --tb=no|line|short)
    "n_edits",  # number of edits (MultiEdit edits, 1 for Edit/Write, 0 otherwise)
)

_TOOL_CLASS: dict[str, str] = {
    "task": "subagent",
    "agent": "subagent",
    "todowrite": "todo",
    "todoread": "todo",
    "read": "read",
    "notebookread": "read",
    "view": "read",
    "ls": "read",
    "grep": "search",
    "glob": "search",
    "search": "search",
    "edit": "edit",
    "multiedit": "edit",
    "write": "edit",
    "notebookedit": "edit",
    "webfetch": "network",
    "websearch": "network",
    "bashoutput": "shell",
    "taskoutput": "shell",
    "killshell": "shell",
    "killbash": "shell",
}
_SHELL_TOOLS = frozenset("bash shell sh execute_bash execute_command run_command terminal exec".split())
_STR_REPLACE_EDITOR = frozenset("str_replace_editor str_replace_based_edit_tool text_editor".split())

_SHELL_PRIORITY: dict[str, int] = {
    c: i
    for i, c in enumerate(["other", "shell", "read", "search", "python", "git", "edit", "network", "build", "test"])
}

# --- shell text normalisation -------------------------------------------------------------
_HEREDOC = re.compile(r"(<<-?\s*(['\"]?)(\w+)\2)([^\n]*)\n.*?^[ \t]*\3[ \t]*$", re.S | re.M)
_QUOTED = re.compile(r"'[^']*'|\"(?:\\.|[^\"\\])*\"")
_SEGMENT_SPLIT = re.compile(r"&&|\|\||;|\n|(?<![|>&])\|(?!\|)|(?<![<>&0-9])&(?![&>])")
_PIPE = re.compile(r"(?<![|>])\|(?!\|)")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_PREFIX_WORDS = frozenset("sudo time nohup env exec command builtin xargs stdbuf".split())
_REDIRECT_TO_FILE = re.compile(r"(?<![0-9&])>>?\s*(?!&|/dev/null)[^\s&|;]+")
_PATHLIKE = re.compile(
    r"^(?:[\w.~-]*/[\w./~*:-]*"
    r"|[\w.-]+\.(?:py|pyi|js|ts|go|rs|java|c|cc|h|cpp|rb|toml|cfg|ini|json|ya?ml|txt|md|rst|sh|sql)(?:::[\w:\[\]-]*)?)$"
)
_TEST_FILE = re.compile(
    r"(?:^|/)(?:test_[\w-]*\.py|[\w-]*_test\.(?:py|go)|tests?\.py|[\w-]*\.(?:test|spec)\.[jt]sx?)(?:::|$)"
)
_TIMEOUT_FLAG = re.compile(r"--timeout[= ](\d+(?:\.\d+)?)")
_TIMEOUT_PREFIX = re.compile(r"(?:^|[;&|\n(]\s*)timeout\s+(?:-\S+\s+)*(\d+(?:\.\d+)?)")
_BACKGROUND = re.compile(r"(?<![&>])&\s*$")
_OUTPUT_LIMITED = re.compile(r"\|\s*(?:head|tail)\b|(?:^|\s)(?:-q|--quiet)\b|--tb=(?:no|line|short)")
_SHORT_X = re.compile(r"^-[a-wyzA-Z]*x[a-zA-Z]*$")
_DOTTED_TEST = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+$")
_SELECT_FLAGS = frozenset("-k -m -run --run -t --testNamePattern --filter --lf --last-failed".split())
_VALUE_FLAGS = frozenset(
    "-k -m -run -t -p -c -e -o --tb --rootdir --junitxml --cov --timeout --maxfail -n --color".split()
)
_PY_TEST_CALL = re.compile(r"pytest\.main|unittest\.main")
_PY_WORD = re.compile(r"^(?:.*/)?(?:python[0-9.]*|pypy[0-9.]*)$")
_VERSIONED = re.compile(r"[0-9.]+$")

_TEST_RUNNERS = frozenset(
    "pytest py.test tox nox nosetests nose2 trial runtests.py runtests jest mocha vitest ctest phpunit rspec".split()
)
_TEST_SCRIPTS = frozenset("runtests.py run_tests.py runtests".split())
_PY_TEST_MODULES = frozenset("pytest unittest tox nox nose nose2 twisted.trial doctest".split())
_BUILD_WORDS = frozenset("make cmake ninja meson bazel maturin gcc g++ cc clang javac tsc webpack pre-commit".split())
_INSTALLERS = frozenset(
    "pip pip3 uv poetry conda mamba micromamba pipenv pipx apt apt-get yum dnf apk brew pdm hatch".split()
)
_JS_TOOLS = frozenset("npm yarn pnpm bun npx".split())
_LANG_TOOLS = frozenset("go cargo mvn gradle ./gradlew dotnet sbt mix swift".split())
_SEARCH_WORDS = frozenset("grep egrep fgrep rg ag ack find fd locate search_dir search_file find_file".split())
_READ_WORDS = frozenset(
    "cat head tail less more wc ls tree file stat du nl bat diff cmp open goto scroll_down scroll_up pwd "
    "readlink realpath strings xxd hexdump od jq".split()
)
_EDIT_WORDS = frozenset("patch edit create insert append ed tee str_replace undo_edit".split())
_NETWORK_WORDS = frozenset("curl wget http ssh scp rsync nc ping".split())


def _as_input(tool_input: Any) -> Any:
    """JSON-decode a string that holds an object; leave everything else as it is."""
    if isinstance(tool_input, (bytes, bytearray)):
        tool_input = tool_input.decode("utf-8", "replace")
    if isinstance(tool_input, str):
        text = tool_input.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError:
                return tool_input
    return tool_input


def _command_text(tool_input: Any) -> str:
    """The shell command inside a tool input: ``input["command"]`` or the raw string."""
    if isinstance(tool_input, dict):
        for key in ("command", "cmd", "script", "code"):
            value = tool_input.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return " ".join(value)
        return ""
    if isinstance(tool_input, str):
        return tool_input
    return ""


def _strip_shell(command: str) -> str:
    """Drop heredoc bodies and the contents of quoted strings (each becomes ``Q``)."""
    return _QUOTED.sub("Q", _HEREDOC.sub(r"\1\4", command))


def _segments(stripped: str) -> list[list[str]]:
    """Split a stripped command into parts, each a list of words without prefixes."""
    parts = []
    for raw in _SEGMENT_SPLIT.split(stripped):
        words = raw.split()
        i = 0
        while i < len(words):
            w = words[i]
            if _ENV_ASSIGN.match(w) or w in _PREFIX_WORDS or w in ("(", "{", "!"):
                i += 1
            elif w == "timeout":  # timeout [-s SIG] [-k T] DURATION cmd...
                i += 1
                while i < len(words) and words[i].startswith("-"):
                    i += 2 if words[i] in ("-s", "-k", "--signal", "--kill-after") else 1
                i += 1
            else:
                break
        words = words[i:]
        if words:
            parts.append(words)
    return parts


def _python_class(words: list[str], raw: str) -> str:
    """Class of a ``python ...`` part."""
    for i, w in enumerate(words[1:], start=1):
        if w == "-m" and i + 1 < len(words):
            module = words[i + 1]
            if module in _PY_TEST_MODULES or module.startswith("pytest"):
                return "test"
            if module in ("pip", "build", "setuptools", "venv", "ensurepip", "compileall"):
                return "build"
            if module in ("http.server",):
                return "network"
            return "python"
        if w == "-c":
            return "test" if _PY_TEST_CALL.search(raw) else "python"
        if not w.startswith("-"):
            name = w.rsplit("/", 1)[-1]
            if name == "setup.py":
                return "build"
            if name == "manage.py":  # Django
                return "test" if words[i + 1 : i + 2] == ["test"] else "python"
            return "test" if name in _TEST_SCRIPTS else "python"
    return "python"


def _segment_class(words: list[str], raw: str) -> str:
    """Class of one shell part given its words (prefixes already dropped)."""
    head = words[0]
    base = head.rsplit("/", 1)[-1]
    args = words[1:]
    if base in ("bash", "sh", "zsh") and args and not args[0].startswith("-"):
        base = args[0].rsplit("/", 1)[-1]
        args = args[1:]
    if base.endswith(".sh") and "test" in base:
        return "test"
    if base in ("cd", "pushd", "popd", "source", ".", "export", "set", "unset", "true", ":"):
        return "shell"
    if _PY_WORD.match(head) or base in ("python", "python3"):
        return _python_class(words, raw)
    if base in _TEST_RUNNERS or base.startswith("pytest"):
        return "test"
    if base == "coverage":
        return "test" if "run" in args or "-m" in args else "shell"
    if base == "git":
        return "git"
    if base in _INSTALLERS or (base.startswith("pip") and _VERSIONED.match(base[3:] or "0")):
        if base in ("uv", "poetry", "pdm", "hatch") and args[:1] == ["run"]:
            return _segment_class(args[1:], raw) if len(args) > 1 else "python"
        return "build"
    if base in _JS_TOOLS:
        sub = args[0] if args else ""
        if sub in ("test", "t") or (sub == "run" and len(args) > 1 and "test" in args[1]):
            return "test"
        if base == "npx" and sub in ("jest", "mocha", "vitest", "playwright"):
            return "test"
        return "build"
    if base in _LANG_TOOLS:
        sub = args[0] if args else ""
        if sub in ("test", "check") or "test" in sub:
            return "test"
        return "build"
    if base in _BUILD_WORDS:
        if base == "make" and any("test" in a or a == "check" for a in args):
            return "test"
        return "build"
    if base in _NETWORK_WORDS:
        return "network"
    if base == "sed":
        return "edit" if any(a.startswith("-i") or a == "--in-place" for a in args) else "read"
    if base in ("awk", "perl") and any(a.startswith("-i") for a in args):
        return "edit"
    if base in _EDIT_WORDS:
        return "edit"
    if base in ("cat", "echo", "printf") and _REDIRECT_TO_FILE.search(" ".join(args)):
        return "edit"
    if base in _SEARCH_WORDS:
        return "search"
    if base in _READ_WORDS:
        return "read"
    return "shell"


def _shell_class(command: str) -> str:
    """Class of a whole shell command: its most expensive part."""
    parts = _segments(_strip_shell(command))
    if not parts:
        return "shell" if command.strip() else "other"
    best = "other"
    for words in parts:
        c = _segment_class(words, command)
        if _SHELL_PRIORITY[c] > _SHELL_PRIORITY[best]:
            best = c
    return best


def command_class(tool_name: str, tool_input: dict | str) -> str:
    """The :data:`COMMAND_CLASSES` entry for one tool call (see the module docstring)."""
    try:
        name = tool_name.strip().lower() if isinstance(tool_name, str) else ""
        data = _as_input(tool_input)
        if name in _SHELL_TOOLS:
            return _shell_class(_command_text(data))
        if name in _STR_REPLACE_EDITOR:
            sub = data.get("command") if isinstance(data, dict) else None
            return "read" if sub == "view" else "edit"
        if name in _TOOL_CLASS:
            return _TOOL_CLASS[name]
        if isinstance(data, dict) and isinstance(data.get("command"), str):
            return _shell_class(data["command"])  # an unknown tool that takes a shell command
        return "other"
    except Exception:  # noqa: BLE001 - totality is the contract; unknown shapes are "other"
        return "other"


def _runner_args(words: list[str]) -> list[str]:
    """Arguments of a test part after the runner itself (``python -m pytest`` -> after ``pytest``)."""
    if _PY_WORD.match(words[0]) and "-m" in words[:-1]:
        return words[words.index("-m") + 2 :]
    return words[1:]


def _test_facts(parts: list[list[str]], command: str) -> tuple[int, int, int, int]:
    """(is_test, targeted, n_targets, has_maxfail) over the test parts of a command."""
    is_test = targeted = targets = maxfail = 0
    for words in parts:
        if _segment_class(words, command) != "test":
            continue
        is_test = 1
        args = _runner_args(words)
        for i, a in enumerate(args):
            previous = args[i - 1] if i else ""
            if a in _SELECT_FLAGS or a.startswith(("-k=", "--keyword", "-run=", "--deselect")):
                targeted = 1
            elif a in ("--exitfirst", "--ff") or a.startswith("--maxfail") or _SHORT_X.match(a):
                maxfail = 1
            elif a.startswith("-") or previous in _VALUE_FLAGS:
                continue
            elif "::" in a or _TEST_FILE.search(a) or (_DOTTED_TEST.match(a) and "test" in a.lower()):
                targeted = 1
                targets += 1
            elif "/" in a or a.endswith(".py"):
                targets += 1
    return is_test, targeted, targets, maxfail


def argument_facts(tool_name: str, tool_input: dict | str) -> dict[str, float]:
    """Small numeric facts about a tool call's arguments; keys are :data:`ARGUMENT_FACT_KEYS`."""
    facts: dict[str, float] = dict.fromkeys(ARGUMENT_FACT_KEYS, 0)
    try:
        name = tool_name.strip().lower() if isinstance(tool_name, str) else ""
        data = _as_input(tool_input)
        text = _command_text(data) if name in _SHELL_TOOLS or not isinstance(data, dict) else ""
        facts["n_segments"] = 1
        if text:
            stripped = _strip_shell(text)
            parts = _segments(stripped)
            facts["cmd_len"] = len(text)
            facts["n_segments"] = max(1, len(parts))
            facts["has_pipe"] = int(bool(_PIPE.search(stripped)))
            facts["n_paths"] = sum(1 for words in parts for w in words[1:] if _PATHLIKE.match(w))
            is_test, targeted, targets, maxfail = _test_facts(parts, text)
            facts.update(is_test=is_test, test_targeted=targeted, n_test_targets=targets, has_maxfail=maxfail)
            timeout = _TIMEOUT_PREFIX.search(stripped) or _TIMEOUT_FLAG.search(stripped)
            if timeout:
                facts["has_timeout"] = 1
                facts["timeout_s"] = float(timeout.group(1))
            facts["background"] = int(bool(_BACKGROUND.search(stripped)))
            facts["output_limited"] = int(bool(_OUTPUT_LIMITED.search(stripped)))
        else:
            facts["cmd_len"] = len(json.dumps(data, default=str)) if data is not None else 0
            if isinstance(data, dict):
                paths = [
                    v for k, v in data.items() if k in ("file_path", "path", "notebook_path") and isinstance(v, str)
                ]
                facts["n_paths"] = len(paths)
                if name in ("edit", "write", "notebookedit"):
                    facts["n_edits"] = 1
                elif name == "multiedit":
                    edits = data.get("edits")
                    facts["n_edits"] = len(edits) if isinstance(edits, list) else 0
        if isinstance(data, dict):
            tmo = data.get("timeout")
            if isinstance(tmo, (int, float)) and not isinstance(tmo, bool) and tmo > 0:
                facts["has_timeout"] = 1
                facts["timeout_s"] = float(tmo) / 1000.0  # Claude Code tool timeouts are in ms
            if data.get("run_in_background") is True:
                facts["background"] = 1
    except Exception:  # noqa: BLE001 - totality: keep whatever facts were computed
        pass
    return facts
