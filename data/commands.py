"""Normalise an agent tool call to a command class and a few numeric argument facts.

Used by the trace loaders (to fill ``tool_calls.command_class``), by the feature code, and by
the vLLM runtime at serve time. :func:`classify` gives both results of one tool call from a
single pass over its input; :func:`command_class` and :func:`argument_facts` are its two
halves. All three are:

* pure: the result depends only on the arguments;
* total: any ``tool_name`` / ``tool_input`` (dict, JSON string, raw command string, ``None``,
  numbers, nested garbage) gives a result, never an exception;
* fast: the input is decoded and the shell command split and classified once per call; all
  regular expressions are compiled at import, start with a literal where they can (so the
  engine skips ahead to it), and are skipped when the text lacks a character they need; no
  shell parser is used (``shlex`` raises on unbalanced quotes and is slow). Results are
  cached per distinct shell command, per distinct part of one (``cd /testbed``, ``tail -20``:
  most new commands are made of parts seen before) and per distinct string tool input, in
  LRU caches of :data:`CACHE_SIZE` entries of at most :data:`CACHE_MAX_CHARS` characters.

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
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, NamedTuple

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

#: What each :func:`argument_facts` value means, in key order.
ARGUMENT_FACT_DOCS: dict[str, str] = {
    "cmd_len": "characters of the command (shell) or of the JSON input (other tools)",
    "n_segments": "shell parts joined by `&&` `||` `;` `|` or newlines (1 for non-shell tools)",
    "has_pipe": "1 if the shell command pipes into another command",
    "n_paths": "path-like arguments (contain `/` or end in a file extension)",
    "is_test": "1 if the call runs a test command",
    "test_targeted": "1 if the test run selects tests (`-k`, `::`, a test file, `-run`, ...)",
    "n_test_targets": "test paths / node ids / dotted test names given",
    "has_maxfail": "1 if the test run stops at the first failure (`-x`, `--maxfail`, `--exitfirst`)",
    "has_timeout": "1 if a timeout is set (`timeout` prefix, `--timeout` flag, tool `timeout` field)",
    "timeout_s": "that timeout in seconds, 0 when none",
    "background": "1 if the command runs in the background (`run_in_background`, trailing `&`)",
    "output_limited": "1 if output is cut (`| head`, `| tail`, `-q`, `--tb=no/line/short`)",
    "n_edits": "number of edits (MultiEdit edits, 1 for Edit/Write, 0 otherwise)",
}
#: Keys of :func:`argument_facts`, always all present, always numeric (int or float), never negative.
ARGUMENT_FACT_KEYS: tuple[str, ...] = tuple(ARGUMENT_FACT_DOCS)

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
# A heredoc operator, the rest of its line, then whole body lines up to the delimiter line.
_HEREDOC = re.compile(r"(<<-?\s*(['\"]?)(\w+)\2)([^\n]*)\n(?:[^\n]*\n)*?[ \t]*\3[ \t]*$", re.M)
_QUOTED = re.compile(r"'[^']*'|\"[^\"\\]*(?:\\.[^\"\\]*)*\"")
# Separators: && || ; newline, a lone | (not after | > &), a lone & (not after < > & or a digit).
# Each branch starts with its literal; lookbehinds sit after it so the engine can skip ahead.
_SEGMENT_SPLIT = re.compile(r"&&|\|\||;|\n|\|(?<![|>&]\|)(?!\|)|&(?<![<>&0-9]&)(?![&>])")
_PIPE = re.compile(r"\|(?<![|>]\|)(?!\|)")
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
_BACKGROUND = re.compile(r"&(?<![&>]&)\s*$")
# | head, | tail, -q / --quiet at the start or after whitespace, --tb=no|line|short (literal first).
_OUTPUT_LIMITED = re.compile(r"\|\s*(?:head|tail)\b|-(?<!\S-)(?:q|-quiet)\b|--tb=(?:no|line|short)")
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
    if "<<" in command:
        command = _HEREDOC.sub(r"\1\4", command)
    if "'" in command or '"' in command:
        command = _QUOTED.sub("Q", command)
    return command


def _part_words(part: str) -> list[str]:
    """Words of one part of a stripped command (text between separators), prefixes dropped."""
    words = part.split()
    i = 0
    while i < len(words):
        w = words[i]
        if ("=" in w and _ENV_ASSIGN.match(w)) or w in _PREFIX_WORDS or w in {"(", "{", "!"}:
            i += 1
        elif w == "timeout":  # timeout [-s SIG] [-k T] DURATION cmd...
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in ("-s", "-k", "--signal", "--kill-after") else 1
            i += 1
        else:
            break
    return words[i:]


def _python_class(words: list[str], calls_test_main: bool) -> str:
    """Class of a ``python ...`` part; ``calls_test_main``: the command calls pytest.main/unittest.main."""
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
            return "test" if calls_test_main else "python"
        if not w.startswith("-"):
            name = w.rsplit("/", 1)[-1]
            if name == "setup.py":
                return "build"
            if name == "manage.py":  # Django
                return "test" if words[i + 1 : i + 2] == ["test"] else "python"
            return "test" if name in _TEST_SCRIPTS else "python"
    return "python"


def _segment_class(words: list[str], calls_test_main: bool) -> str:
    """Class of one shell part given its words (prefixes already dropped); see :func:`_python_class`."""
    head = words[0]
    base = head[head.rfind("/") + 1 :]
    args = words[1:]
    if base in {"bash", "sh", "zsh"} and args and not args[0].startswith("-"):
        base = args[0][args[0].rfind("/") + 1 :]
        args = args[1:]
    if base.endswith(".sh") and "test" in base:
        return "test"
    if base in {"cd", "pushd", "popd", "source", ".", "export", "set", "unset", "true", ":"}:
        return "shell"
    if ("py" in head and _PY_WORD.match(head)) or base in ("python", "python3"):
        return _python_class(words, calls_test_main)
    if base in _TEST_RUNNERS or base.startswith("pytest"):
        return "test"
    if base == "coverage":
        return "test" if "run" in args or "-m" in args else "shell"
    if base == "git":
        return "git"
    if base in _INSTALLERS or (base.startswith("pip") and _VERSIONED.match(base[3:] or "0")):
        if base in ("uv", "poetry", "pdm", "hatch") and args[:1] == ["run"]:
            return _segment_class(args[1:], calls_test_main) if len(args) > 1 else "python"
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


def _shell_class(classes: list[str], command: str) -> str:
    """Class of a whole shell command given the classes of its parts: the most expensive part."""
    if len(classes) == 1:
        return classes[0]
    if not classes:
        return "shell" if command.strip() else "other"
    return max(classes, key=_SHELL_PRIORITY.__getitem__)


def _runner_args(words: list[str]) -> list[str]:
    """Arguments of a test part after the runner itself (``python -m pytest`` -> after ``pytest``)."""
    if _PY_WORD.match(words[0]) and "-m" in words[:-1]:
        return words[words.index("-m") + 2 :]
    return words[1:]


def _test_part_facts(words: list[str]) -> tuple[int, int, int, int]:
    """(is_test, targeted, n_targets, has_maxfail) of a test part."""
    targeted = targets = maxfail = 0
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
    return 1, targeted, targets, maxfail


#: Entries of each LRU cache (shell commands, parts of shell commands, string tool inputs) and
#: the longest text cached: a longer one is rare and is parsed again each time, so a cache
#: holds at most ``CACHE_SIZE * CACHE_MAX_CHARS`` characters.
CACHE_SIZE = 4096
CACHE_MAX_CHARS = 2048


def _memoised(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(text, *rest)`` with an LRU cache for texts of at most :data:`CACHE_MAX_CHARS` characters.

    ``fn`` must be pure; the result has ``cache_clear()``.
    """
    cached = lru_cache(maxsize=CACHE_SIZE)(fn)

    @wraps(fn)
    def memoised(text: str, *rest: Any) -> Any:
        return cached(text, *rest) if len(text) <= CACHE_MAX_CHARS else fn(text, *rest)

    memoised.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return memoised


_HAS_TIMEOUT = ARGUMENT_FACT_KEYS.index("has_timeout")
_TIMEOUT_S = ARGUMENT_FACT_KEYS.index("timeout_s")
_IN_BACKGROUND = ARGUMENT_FACT_KEYS.index("background")
_NOT_A_TEST = (0, 0, 0, 0)


@_memoised
def _part_info(part: str, calls_test_main: bool) -> tuple[str | None, int, tuple[int, int, int, int]] | None:
    """``(class, n_paths, test facts)`` of one part of a stripped command; None for an empty part.

    The class is None when classifying raised (only a pathological part does, e.g. ``uv run``
    nested past the recursion limit). Test facts are :func:`_test_part_facts` for a test
    part, zeros otherwise.
    """
    words = _part_words(part)
    if not words:
        return None
    n_paths = 0
    for w in words[1:]:
        if ("/" in w or "." in w) and _PATHLIKE.match(w):
            n_paths += 1
    try:
        cls = _segment_class(words, calls_test_main)
    except Exception:  # noqa: BLE001 - totality: see _shell_info
        return None, n_paths, _NOT_A_TEST
    return cls, n_paths, _test_part_facts(words) if cls == "test" else _NOT_A_TEST


@_memoised
def _shell_info(command: str) -> tuple[str, tuple[float, ...], bool]:
    """``(class, facts, complete)`` of a shell command text, from one split of it.

    ``facts`` are the :data:`ARGUMENT_FACT_KEYS` values the text alone determines. ``complete``
    is false when classifying a part raised: the class is then ``other`` and the facts after
    ``n_paths`` are 0. Parts are looked up in their own cache, since new commands are mostly
    made of parts seen before (``cd /testbed``, ``| tail -20``).
    """
    stripped = _strip_shell(command)
    calls_test_main = ".main" in command and _PY_TEST_CALL.search(command) is not None
    parts = [info for part in _SEGMENT_SPLIT.split(stripped) if (info := _part_info(part, calls_test_main))]
    has_pipe = int("|" in stripped and _PIPE.search(stripped) is not None)
    n_paths = sum(info[1] for info in parts)
    classes = [info[0] for info in parts]
    if None in classes:
        return "other", (len(command), max(1, len(parts)), has_pipe, n_paths, *(0,) * 9), False
    is_test = targeted = targets = maxfail = 0
    if "test" in classes:
        for _, _, (part_is_test, part_targeted, part_targets, part_maxfail) in parts:
            is_test |= part_is_test
            targeted |= part_targeted
            targets += part_targets
            maxfail |= part_maxfail
    timeout = None
    if "timeout" in stripped:
        timeout = _TIMEOUT_PREFIX.search(stripped) or _TIMEOUT_FLAG.search(stripped)
    background = int("&" in stripped and _BACKGROUND.search(stripped) is not None)
    output_limited = int(
        ("|" in stripped or "-q" in stripped or "--tb=" in stripped) and _OUTPUT_LIMITED.search(stripped) is not None
    )
    facts = (  # positional, in ARGUMENT_FACT_KEYS order
        len(command),
        max(1, len(parts)),
        has_pipe,
        n_paths,
        is_test,
        targeted,
        targets,
        maxfail,
        1 if timeout else 0,
        float(timeout.group(1)) if timeout else 0,
        background,
        output_limited,
        0,
    )
    return _shell_class(classes, command), facts, True


class CommandInfo(NamedTuple):
    """Command class and argument facts of one tool call (what :func:`classify` returns).

    ``command_class`` is a :data:`COMMAND_CLASSES` entry; ``facts`` holds the
    :func:`argument_facts` values in :data:`ARGUMENT_FACT_KEYS` order.
    """

    command_class: str
    facts: tuple[float, ...]

    def facts_dict(self) -> dict[str, float]:
        """The facts keyed by :data:`ARGUMENT_FACT_KEYS` (a new dict)."""
        return dict(zip(ARGUMENT_FACT_KEYS, self.facts))


_JSON_ENCODER = json.JSONEncoder(default=str)  # json.dumps(x, default=str), without its per-call setup
_UNREADABLE = CommandInfo("other", (0,) * len(ARGUMENT_FACT_KEYS))


def _class_of(name: str, data: Any, shell: tuple | None) -> str:
    """Command class of a call to tool ``name`` with decoded input ``data``.

    ``shell`` is the :func:`_shell_info` of the call's command text (None when it has none).
    """
    if name in _SHELL_TOOLS:
        return shell[0] if shell is not None else "other"
    if name in _STR_REPLACE_EDITOR:
        sub = data.get("command") if isinstance(data, dict) else None
        return "read" if sub == "view" else "edit"
    if name in _TOOL_CLASS:
        return _TOOL_CLASS[name]
    if isinstance(data, dict) and isinstance(data.get("command"), str):
        return _shell_info(data["command"])[0]  # an unknown tool that takes a shell command
    return "other"


def _input_facts(name: str, data: Any) -> tuple[tuple[float, ...], bool]:
    """``(facts, complete)`` of a call without a command text: size, paths and edits of its input.

    ``complete`` is false when measuring the input raised (e.g. a dict with non-string keys):
    that fact and the later ones are then 0.
    """
    cmd_len = n_paths = n_edits = 0
    try:
        cmd_len = len(_JSON_ENCODER.encode(data)) if data is not None else 0
        if isinstance(data, dict):
            n_paths = sum(
                1 for k, v in data.items() if k in ("file_path", "path", "notebook_path") and isinstance(v, str)
            )
            if name in ("edit", "write", "notebookedit"):
                n_edits = 1
            elif name == "multiedit":
                edits = data.get("edits")
                n_edits = len(edits) if isinstance(edits, list) else 0
    except Exception:  # noqa: BLE001 - totality: keep whatever facts were computed
        return (cmd_len, 1, 0, n_paths, *(0,) * 9), False
    return (cmd_len, 1, 0, n_paths, 0, 0, 0, 0, 0, 0, 0, 0, n_edits), True  # ARGUMENT_FACT_KEYS order


def _with_field_facts(data: dict, facts: tuple[float, ...]) -> tuple[float, ...]:
    """``facts`` updated by the input's own ``timeout`` (milliseconds) and ``run_in_background``."""
    if "timeout" not in data and "run_in_background" not in data:
        return facts
    out = list(facts)
    try:
        tmo = data.get("timeout")
        if isinstance(tmo, (int, float)) and not isinstance(tmo, bool) and tmo > 0:
            out[_HAS_TIMEOUT] = 1
            out[_TIMEOUT_S] = float(tmo) / 1000.0  # Claude Code tool timeouts are in ms
        if data.get("run_in_background") is True:
            out[_IN_BACKGROUND] = 1
    except Exception:  # noqa: BLE001 - totality: keep whatever facts were computed
        pass
    return tuple(out)


def _classify(tool_name: Any, tool_input: Any) -> CommandInfo:
    """:func:`classify` without the cache of string inputs."""
    try:
        name = tool_name.strip().lower() if isinstance(tool_name, str) else ""
        data = _as_input(tool_input)
        text = _command_text(data) if name in _SHELL_TOOLS or not isinstance(data, dict) else ""
    except Exception:  # noqa: BLE001 - totality: an unreadable input is "other" with all facts 0
        return _UNREADABLE
    shell = _shell_info(text) if text else None
    try:
        cls = _class_of(name, data, shell)
    except Exception:  # noqa: BLE001 - totality: unknown shapes are "other"
        cls = "other"
    facts, complete = _input_facts(name, data) if shell is None else shell[1:]
    if complete and isinstance(data, dict):
        facts = _with_field_facts(data, facts)
    return CommandInfo(cls, facts)


@_memoised
def _classify_string(tool_input: str, tool_name: str) -> CommandInfo:
    """:func:`_classify` of a string tool input (argument order for :func:`_memoised`)."""
    return _classify(tool_name, tool_input)


def clear_caches() -> None:
    """Empty the caches of shell commands, their parts and string inputs (results do not depend on them)."""
    _shell_info.cache_clear()
    _part_info.cache_clear()
    _classify_string.cache_clear()


def classify(tool_name: str, tool_input: dict | str) -> CommandInfo:
    """Command class and argument facts of one tool call, from one decode and one shell split.

    A tool input given as a string (a JSON object or a raw command) is cached whole; from a
    dict, decoded already, only the shell command is cached.
    """
    if isinstance(tool_input, str) and isinstance(tool_name, str):
        return _classify_string(tool_input, tool_name)
    return _classify(tool_name, tool_input)


def command_class(tool_name: str, tool_input: dict | str) -> str:
    """The :data:`COMMAND_CLASSES` entry for one tool call (see the module docstring)."""
    return classify(tool_name, tool_input).command_class


def argument_facts(tool_name: str, tool_input: dict | str) -> dict[str, float]:
    """Small numeric facts about a tool call's arguments; keys are :data:`ARGUMENT_FACT_KEYS`."""
    return classify(tool_name, tool_input).facts_dict()
