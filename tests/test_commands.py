"""cachewise.data.commands: command classes, argument facts, totality on any input."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.data.commands import (
    ARGUMENT_FACT_KEYS,
    CACHE_MAX_CHARS,
    COMMAND_CLASSES,
    argument_facts,
    classify,
    clear_caches,
    command_class,
)


@pytest.mark.parametrize(
    ("tool", "tool_input", "expected"),
    [
        ("Bash", {"command": "cd /testbed && python -m pytest tests/test_x.py::test_y -xvs 2>&1 | tail -30"}, "test"),
        ("Bash", {"command": "source venv/bin/activate && pytest tests/unit/test_sql.py -v"}, "test"),
        ("Bash", {"command": "tox -e py39"}, "test"),
        ("Bash", {"command": "python -m unittest tests.test_mod"}, "test"),
        ("Bash", {"command": "npm test"}, "test"),
        ("Bash", {"command": "go test ./... -run TestX"}, "test"),
        ("Bash", {"command": "cargo test"}, "test"),
        ("Bash", {"command": "make test"}, "test"),
        ("Bash", {"command": "python -c \"import pytest; pytest.main(['-x'])\""}, "test"),
        ("Bash", {"command": "pip install -e . && pip install pytest"}, "build"),
        ("Bash", {"command": "python setup.py develop"}, "build"),
        ("Bash", {"command": "npm install"}, "build"),
        ("Bash", {"command": "cargo build --release"}, "build"),
        ("Bash", {"command": "make"}, "build"),
        ("Bash", {"command": "apt-get update && apt-get install -y libopenblas-dev"}, "build"),
        ("Bash", {"command": "python -m pip install -r requirements.txt"}, "build"),
        ("Bash", {"command": 'grep -rn "def foo" /testbed/pkg | head -20'}, "search"),
        ("Bash", {"command": "find /testbed -name '*.py' | xargs grep -l foo"}, "search"),
        ("Bash", {"command": "rg pattern src/"}, "search"),
        ("Bash", {"command": "cat /testbed/setup.py"}, "read"),
        ("Bash", {"command": "ls -la /testbed/"}, "read"),
        ("Bash", {"command": "sed -n '1,40p' a.py"}, "read"),
        ("Bash", {"command": "head -30 file.py"}, "read"),
        ("Bash", {"command": "sed -i 's/a/b/' a.py"}, "edit"),
        ("Bash", {"command": "patch -p1 < fix.diff"}, "edit"),
        ("Bash", {"command": "cat > /tmp/x.py << 'EOF'\nimport pytest\npytest.main()\nEOF"}, "edit"),
        ("Bash", {"command": "echo 'x = 1' >> config.py"}, "edit"),
        ("Bash", {"command": "git diff"}, "git"),
        ("Bash", {"command": "git log --oneline | grep fix"}, "git"),
        ("Bash", {"command": "curl -s https://example.com | grep title"}, "network"),
        ("Bash", {"command": "wget https://example.com/f.tgz"}, "network"),
        ("Bash", {"command": 'python -c "print(1)"'}, "python"),
        ("Bash", {"command": "python3 << 'EOF'\nimport os\nprint(os.getcwd())\nEOF"}, "python"),
        ("Bash", {"command": "python reproduce.py"}, "python"),
        ("Bash", {"command": "rm -f a.py b.py"}, "shell"),
        ("Bash", {"command": "echo done"}, "shell"),
        ("Bash", {"command": "timeout 60 pytest -q"}, "test"),
        ("Bash", {"command": "FOO=1 sudo pytest"}, "test"),
        ("Read", {"file_path": "/a.py"}, "read"),
        ("Grep", {"pattern": "x"}, "search"),
        ("Glob", {"pattern": "**/*.py"}, "search"),
        ("Edit", {"file_path": "a", "old_string": "x", "new_string": "y"}, "edit"),
        ("Write", {"file_path": "a", "content": ""}, "edit"),
        ("MultiEdit", {"file_path": "a", "edits": []}, "edit"),
        ("NotebookEdit", {}, "edit"),
        ("WebFetch", {"url": "https://x"}, "network"),
        ("WebSearch", {"query": "x"}, "network"),
        ("Task", {"prompt": "explore"}, "subagent"),
        ("TodoWrite", {"todos": []}, "todo"),
        ("str_replace_editor", {"command": "view", "path": "/a"}, "read"),
        ("str_replace_editor", {"command": "str_replace", "path": "/a"}, "edit"),
        ("bash", {"command": "find_file missing.py"}, "search"),
        ("bash", {"command": 'open "tests/x.py"'}, "read"),
        ("bash", {"command": "edit 4:4\n    return x\nend_of_edit"}, "edit"),
        ("Bash", '{"command": "pytest -x"}', "test"),  # JSON-encoded input
        ("Bash", "git status", "git"),  # raw command string
        ("SomeNewTool", {"x": 1}, "other"),
        ("Bash", None, "other"),
        ("Bash", {"command": ""}, "other"),
    ],
)
def test_command_class(tool: str, tool_input: object, expected: str) -> None:
    assert command_class(tool, tool_input) == expected


def test_argument_facts_test_selection() -> None:
    targeted = argument_facts("Bash", {"command": "python -m pytest tests/test_a.py::test_b -x 2>&1 | tail -20"})
    assert targeted["is_test"] == 1 and targeted["test_targeted"] == 1 and targeted["n_test_targets"] == 1
    assert targeted["has_maxfail"] == 1 and targeted["has_pipe"] == 1 and targeted["output_limited"] == 1
    by_keyword = argument_facts("Bash", {"command": "pytest -k 'foo and not bar' tests/"})
    assert by_keyword["test_targeted"] == 1 and by_keyword["n_test_targets"] == 1
    suite = argument_facts("Bash", {"command": "python -m pytest tests/ -v"})
    assert suite["is_test"] == 1 and suite["test_targeted"] == 0 and suite["has_maxfail"] == 0
    assert argument_facts("Bash", {"command": "ls"})["is_test"] == 0


def test_argument_facts_timeouts_background_edits() -> None:
    prefixed = argument_facts("Bash", {"command": "timeout 120 python -m pytest"})
    assert prefixed["has_timeout"] == 1 and prefixed["timeout_s"] == 120.0
    flagged = argument_facts("Bash", {"command": "pytest --timeout=30"})
    assert flagged["timeout_s"] == 30.0
    tool_field = argument_facts("Bash", {"command": "make", "timeout": 600000, "run_in_background": True})
    assert tool_field["timeout_s"] == 600.0 and tool_field["background"] == 1
    assert argument_facts("Bash", {"command": "sleep 5 &"})["background"] == 1
    assert argument_facts("Bash", {"command": "a && b"})["background"] == 0
    assert argument_facts("MultiEdit", {"file_path": "/a", "edits": [{}, {}, {}]})["n_edits"] == 3
    assert argument_facts("Read", {"file_path": "/a/b.py"})["n_paths"] == 1
    chain = argument_facts("Bash", {"command": "cd /x && cat a.py b/c.txt | grep y; echo z"})
    assert chain["n_segments"] == 4 and chain["n_paths"] == 3


def test_heredoc_body_and_quotes_do_not_leak_into_the_class() -> None:
    # "pytest" only appears inside a heredoc body / a quoted string: writing a file, printing text.
    assert command_class("Bash", {"command": "cat > t.py << 'EOF'\npytest -x\nEOF"}) == "edit"
    assert command_class("Bash", {"command": "echo 'run pytest later'"}) == "shell"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_SHELL_TOKENS = list("ab -|&;<>'\"\\\n=()$`*/.:") + ["pytest ", "EOF", "<<", "timeout ", "git ", "-k ", "::", "-m "]
_SHELLISH = st.lists(st.sampled_from(_SHELL_TOKENS), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    tool=st.one_of(
        st.none(),
        st.integers(),
        st.sampled_from(["Bash", "bash", "Read", "Task", "str_replace_editor", "X"]),
        st.text(max_size=12),
    ),
    tool_input=st.one_of(
        _JSON,
        st.binary(max_size=40),
        _SHELLISH,
        st.builds(lambda c: {"command": c}, _SHELLISH),
        st.builds(lambda c, t: {"command": c, "timeout": t}, st.text(max_size=30), _JSON),
    ),
)
def test_total_on_any_input(tool: object, tool_input: object) -> None:
    cls = command_class(tool, tool_input)  # type: ignore[arg-type]
    assert cls in COMMAND_CLASSES
    facts = argument_facts(tool, tool_input)  # type: ignore[arg-type]
    assert tuple(facts) == ARGUMENT_FACT_KEYS
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in facts.values())



_TOOL_NAMES = st.sampled_from(["Bash", "bash", "Read", "Edit", "MultiEdit", "Task", "str_replace_editor", "X"])
_INPUT_DICTS = st.one_of(
    st.dictionaries(
        st.sampled_from(["command", "cmd", "file_path", "path", "timeout", "run_in_background", "edits", "x"]),
        _JSON,
        max_size=4,
    ),
    st.builds(lambda c, t: {"command": c, "timeout": t}, _SHELLISH, st.integers(0, 10**6)),
)


@settings(max_examples=300, deadline=None)
@given(tool=_TOOL_NAMES, data=_INPUT_DICTS)
def test_a_json_string_input_gives_the_result_of_its_decoded_dict(tool: str, data: dict) -> None:
    """The runtime may hold a tool input as JSON text, the offline path as a dict: same features."""
    expected = classify(tool, data)
    assert classify(tool, json.dumps(data)) == expected
    assert classify(tool, json.dumps(data, indent=2)) == expected  # formatting does not matter
    assert (command_class(tool, data), argument_facts(tool, data)) == (expected.command_class, expected.facts_dict())


@settings(max_examples=300, deadline=None)
@given(tool=_TOOL_NAMES, tool_input=st.one_of(_INPUT_DICTS, _SHELLISH, st.binary(max_size=40)))
def test_argument_facts_are_never_negative(tool: str, tool_input: object) -> None:
    """FeatureState takes the per-key maximum over a response's calls starting from 0."""
    assert all(v >= 0 for v in classify(tool, tool_input).facts)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(max_size=10), _JSON, max_size=5))
def test_cmd_len_of_a_non_shell_call_is_the_length_of_its_json(data: dict) -> None:
    assert argument_facts("Read", data)["cmd_len"] == len(json.dumps(data, default=str))


def test_results_do_not_depend_on_the_caches() -> None:
    calls = [
        ("Bash", {"command": 'python -c "import pytest; pytest.main()"'}),  # both strip to `python -c Q`
        ("Bash", {"command": 'python -c "print(1)"'}),
        ("Bash", {"command": "cd /testbed && pytest tests/test_a.py -x | tail -5"}),
        ("Bash", {"command": "cd /testbed && git diff | tail -5", "timeout": 5000}),
        ("Bash", '{"command": "cd /testbed && ls"}'),
        ("Read", '{"file_path": "/testbed/a.py"}'),
        ("Bash", "cd /testbed && ls"),
    ]
    clear_caches()
    fresh = []
    for name, tool_input in calls:
        clear_caches()
        fresh.append(classify(name, tool_input))
    clear_caches()
    warm = [classify(name, tool_input) for name, tool_input in calls + calls][len(calls) :]
    assert warm == fresh
    assert [info.command_class for info in fresh[:2]] == ["test", "python"]


def test_inputs_longer_than_the_cache_limit_are_classified_the_same_way() -> None:
    body = "x = 1\n" * (CACHE_MAX_CHARS // 6 + 1)
    command = f"cat > t.py << 'EOF'\n{body}EOF\npytest t.py -x"
    assert len(command) > CACHE_MAX_CHARS
    info = classify("Bash", {"command": command})
    assert info.command_class == "test"
    facts = info.facts_dict()
    assert facts["cmd_len"] == len(command) and facts["n_segments"] == 2 and facts["n_paths"] == 2
    assert facts["is_test"] == 1 and facts["n_test_targets"] == 1 and facts["has_maxfail"] == 1
    assert classify("Bash", json.dumps({"command": command})) == info



def test_timeout_and_background_fields_count_on_their_own() -> None:
    facts = argument_facts("Bash", {"command": "sleep 5", "run_in_background": True})
    assert facts["background"] == 1 and facts["has_timeout"] == 0
    facts = argument_facts("Read", {"file_path": "/a", "timeout": 2000})
    assert facts["has_timeout"] == 1 and facts["timeout_s"] == 2.0 and facts["background"] == 0


def test_real_bash_commands_are_classified(shared_traces) -> None:
    """On the real corpus, almost every Bash command gets a specific class."""
    counts: Counter[str] = Counter()
    for path in sorted((shared_traces / "claude-code").rglob("trace.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            for line in f:
                obj = json.loads(line)
                for block in (obj.get("message") or {}).get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == "Bash":
                        counts[command_class("Bash", block.get("input"))] += 1
    total = sum(counts.values())
    assert total > 1000
    assert counts["other"] == 0
    assert counts["shell"] / total < 0.05
    assert counts["test"] / total > 0.15 and counts["search"] / total > 0.05 and counts["git"] / total > 0.05
