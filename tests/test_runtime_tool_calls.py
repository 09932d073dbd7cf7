"""Tool calls and call identity as the runtime sees them: parsed from output tokens, hints, threads."""

from __future__ import annotations

import json

import pytest
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from cachewise.features.record import ToolCallInfo
from cachewise.runtime.cpu_engine import make_request
from cachewise.runtime.request_calls import CallBuilder, LazyTokenizer
from cachewise.runtime.tool_calls import (
    calls_from_hint,
    get_parser,
    parse_auto,
    parse_hermes,
    parse_openai,
    register_parser,
)

BLOCK = 16
PYTEST = {"command": "python -m pytest -x tests/"}


def test_hermes_blocks_including_an_unterminated_last_one() -> None:
    text = (
        'Running tests.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "python -m pytest -x tests/"}}\n</tool_call>'
        '<tool_call>{"name": "Read", "arguments": "{\\"file_path\\": \\"a.py\\"}"}</tool_call>'
        "<tool_call>{broken json}</tool_call>"
        '<tool_call>{"name": "Grep", "arguments": {"pattern": "x"}}'
    )
    assert parse_hermes(text) == (
        ToolCallInfo("Bash", PYTEST),
        ToolCallInfo("Read", '{"file_path": "a.py"}'),
        ToolCallInfo("Grep", {"pattern": "x"}),
    )
    assert parse_hermes("no calls here") == ()


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"name": "Bash", "arguments": PYTEST}),
        json.dumps([{"name": "Bash", "parameters": PYTEST}]),
        json.dumps({"tool_calls": [{"type": "function", "function": {"name": "Bash", "arguments": json.dumps(PYTEST)}}]}),
        json.dumps({"function_call": {"name": "Bash", "arguments": PYTEST}}),
        "Sure, I will run the tests: " + json.dumps({"name": "Bash", "arguments": PYTEST}) + " and report back.",
    ],
    ids=["object", "list-parameters", "tool_calls", "function_call", "embedded"],
)
def test_openai_style_function_calls(text: str) -> None:
    calls = parse_openai(text)
    assert len(calls) == 1 and calls[0].name == "Bash"
    args = calls[0].input if isinstance(calls[0].input, dict) else json.loads(calls[0].input)
    assert args == PYTEST
    assert parse_auto(text) == calls


def test_parsers_are_total_and_pluggable() -> None:
    for garbage in ["", "{", "[1, 2]", '{"name": 3}', "null", "<tool_call>", '{"arguments": {}}']:
        assert parse_openai(garbage) == () and parse_hermes(garbage) == () and parse_auto(garbage) == ()
    with pytest.raises(ValueError, match="unknown tool_parser 'nope'"):
        get_parser("nope")
    register_parser("upper", lambda text: (ToolCallInfo(text.upper(), {}),))
    assert get_parser("upper")("x") == (ToolCallInfo("X", {}),)
    assert get_parser("none")(json.dumps({"name": "Bash", "arguments": {}})) == ()


def test_client_hints() -> None:
    assert calls_from_hint({"tool": "Bash", "arguments": PYTEST}) == (ToolCallInfo("Bash", PYTEST),)
    assert calls_from_hint({"tool_calls": []}) == ()
    assert calls_from_hint({"tool_calls": [{"name": "Read", "arguments": {"file_path": "a"}}]}) == (
        ToolCallInfo("Read", {"file_path": "a"}),
    )
    assert calls_from_hint({"session_id": "s"}) is None


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer (trained here; no download) that round-trips tool-call text."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(['<tool_call>{"name": "Bash"}</tool_call> run the tests'], vocab_size=300, min_frequency=1)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


def _finished(rid: str, prompt: list[int], output: list[int], **kwargs):
    req = make_request(rid, prompt, BLOCK, max_tokens=len(output) + 1, **kwargs)
    req.append_output_token_ids(output)
    return req


def test_call_built_from_decoded_output_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {"command": "python -m pytest -x tests/"}}</tool_call>'
    builder = CallBuilder("qwen3-coder", BLOCK, get_parser("hermes"), LazyTokenizer(lambda: tokenizer), arrival_clock=lambda: 1005.0)
    req = _finished("r1", list(range(40)), tokenizer.encode(text), arrival_time=1000.0)
    call = builder.build(req, now=50.0)
    assert call.tool_calls == (ToolCallInfo("Bash", PYTEST),) and not call.ended_turn
    assert (call.request_time, call.finish_time) == (45.0, 50.0)  # 5 s old on the arrival clock
    assert call.prompt_tokens == 40 and call.output_tokens == len(tokenizer.encode(text)) and call.model == "qwen3-coder"


def test_no_tokenizer_means_no_parsed_calls_but_hints_still_count() -> None:
    def broken():
        raise OSError("no tokenizer files")

    builder = CallBuilder("m", BLOCK, get_parser("auto"), LazyTokenizer(broken))
    plain = builder.build(_finished("r1", list(range(40)), [5, 6, 7]), now=1.0)
    assert plain.tool_calls == () and plain.ended_turn
    hinted = builder.build(_finished("r2", list(range(40)), [5], hint={"tool": "Bash", "arguments": PYTEST}), now=2.0)
    assert hinted.tool_calls == (ToolCallInfo("Bash", PYTEST),)


def test_threads_and_sessions_follow_the_prefix_chain() -> None:
    builder = CallBuilder("m", BLOCK, get_parser("none"))
    first = builder.build(_finished("a1", list(range(48)), [900, 901]), now=1.0)
    # the next call of the thread re-sends the first prompt, then the output and tool result
    second = builder.build(_finished("a2", list(range(48)) + [900, 901] + list(range(500, 540)), [7]), now=9.0)
    other = builder.build(_finished("b1", list(range(2000, 2048)), [7]), now=10.0)
    assert second.thread_key == first.thread_key and second.session_key == first.session_key
    assert other.thread_key != first.thread_key and other.session_key == other.thread_key
    named = builder.build(_finished("c1", list(range(3000, 3048)), [7], session_id="S-42"), now=11.0)
    follow = builder.build(_finished("c2", list(range(3000, 3048)) + [1, 2, 3], [7]), now=12.0)
    assert named.session_key == "S-42" and follow.session_key == "S-42" and follow.thread_key == named.thread_key
    hinted = builder.build(_finished("d1", list(range(4000, 4048)), [7], hint={"thread_id": "T", "session_id": "S"}), now=13.0)
    assert (hinted.thread_key, hinted.session_key) == ("T", "S")


def test_hints_arrive_json_encoded_through_vllm_xargs() -> None:
    """The OpenAI server's ``vllm_xargs`` only carries strings/numbers: the hint comes as JSON text."""
    from cachewise.runtime.request_calls import hint_of

    hint = {"session_id": "s1", "tool_calls": [{"name": "Bash", "arguments": PYTEST}]}
    assert hint_of(make_request("j", range(20), BLOCK, hint=json.dumps(hint))) == hint  # type: ignore[arg-type]
    assert hint_of(make_request("bad", range(20), BLOCK, hint="{not json")) == {}  # type: ignore[arg-type]
    assert hint_of(make_request("dict", range(20), BLOCK, hint=hint)) == hint
