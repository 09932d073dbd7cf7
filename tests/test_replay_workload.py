"""Call plans and synthetic token ids: the recorded prefix sharing, dependencies and cuts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.data.schema import SchemaError
from cachewise.replay.tokens import TokenSynth
from cachewise.replay.workload import WorkloadParams, build_workload
from tests.event_rows import frame, row

VOCAB = 128256


def replay_tokens(workload, synth):
    """Prompt and output ids of every call, built in dependency order as the driver does."""
    previous, prompts, outputs = {}, {}, {}
    for call in workload.calls:
        prompt = synth.prompt(call, previous.get(call.thread))
        output = synth.output(call)
        previous[call.thread] = np.concatenate([prompt, output])
        prompts[call.request_id], outputs[call.request_id] = prompt, output
    return prompts, outputs


def test_prompt_repeats_previous_prompt_and_output():
    events = frame([row("a", 0, 0, 1, 100, 30), row("a", 1, 2, 3, 180, 30), row("a", 2, 4, 5, 190, 30)])
    w = build_workload(events, WorkloadParams(system_prompt_tokens=0))
    c0, c1, c2 = w.calls
    assert (c1.keep_len, c2.keep_len) == (130, 190)  # growth 80 >= output 30; growth 10 < output 30
    prompts, outputs = replay_tokens(w, TokenSynth(w, 0, VOCAB, 512))
    p0, p1, p2 = (prompts[c.request_id] for c in (c0, c1, c2))
    assert [len(p) for p in (p0, p1, p2)] == [100, 180, 190]
    assert np.array_equal(p1[:100], p0) and np.array_equal(p1[100:130], outputs[c0.request_id])
    assert np.array_equal(p2[:180], p1) and np.array_equal(p2[180:], outputs[c1.request_id][:10])
    assert not np.isin(p1[130:], p0).any()  # tool-result tokens are new


def test_system_prompt_shared_within_a_model_only():
    events = frame(
        [
            row("a", 0, 0, 1, 100, 5, cached_tokens=40),
            row("b", 0, 0, 1, 120, 5, cached_tokens=60),
            row("c", 0, 0, 1, 100, 5, model="m2"),
        ]
    )
    w = build_workload(events, WorkloadParams())  # auto: median cache read of m1's first calls = 50
    prompts, _ = replay_tokens(w, TokenSynth(w, 0, VOCAB, 512))
    a, b, c = (prompts[x.request_id] for x in w.calls)
    assert np.array_equal(a[:50], b[:50]) and a[50] != b[50]
    # m2 reports no cache read: shortest first prompt (100) minus m1's median unshared part (60).
    assert w.calls[2].prefix_len == 40
    assert not np.array_equal(a[:40], c[:40])


def test_shrinking_prompt_restarts_the_thread():
    events = frame([row("a", 0, 0, 1, 100, 10), row("a", 1, 2, 3, 60, 10)])
    w = build_workload(events, WorkloadParams(system_prompt_tokens=20))
    assert w.calls[1].keep_len == 0 and w.calls[1].prefix_len == 20
    assert w.counts["prefix_restarts"] == 1


def test_closed_loop_dependencies_and_gaps():
    events = frame(
        [
            row("s", 0, 0.0, 1.0, 100, 10),
            row("s", 1, 3.0, 4.0, 150, 10),
            row("s", 2, 5.0, 6.0, 200, 10),
            row("s", 0, 1.5, 2.0, 50, 10, thread_id="s:sub", is_sidechain=True),  # launched by main call 0
            row("s", 1, 1.9, 3.5, 80, 10, thread_id="s:sub", is_sidechain=True),  # recorded 0.1 s early
        ]
    )
    w = build_workload(events, WorkloadParams(system_prompt_tokens=0))
    by = {(c.thread, c.index): c for c in w.calls}
    main0, main1, main2 = by[(0, 0)], by[(0, 1)], by[(0, 2)]
    sub0, sub1 = by[(1, 0)], by[(1, 1)]
    deps = {c.request_id: sorted((d.request_id, round(d.delay, 6)) for d in c.deps) for c in w.calls}
    assert deps[main0.request_id] == [] and main0.start_offset == 0.0
    assert deps[main1.request_id] == [(main0.request_id, 2.0)]
    assert deps[sub0.request_id] == [(main0.request_id, 0.5)]
    assert deps[sub1.request_id] == [(sub0.request_id, 0.0)]  # -0.1 s clamped
    # The first main call after the sub-agent's end waits for it too (the Task tool returns then).
    assert deps[main2.request_id] == sorted([(main1.request_id, 1.0), (sub1.request_id, 1.5)])
    assert w.counts["negative_gaps_clamped"] == 1
    assert (main0.next_gap, main1.next_gap, main2.next_gap) == (2.0, 1.0, None)
    assert sub0.prefix_group != main0.prefix_group  # a sub-agent has its own system prompt


def test_long_prompts_cut_and_counted():
    events = frame([row("a", 0, 0, 1, 100, 10), row("a", 1, 2, 3, 5000, 10), row("a", 2, 4, 5, 5100, 10)])
    w = build_workload(events, WorkloadParams(max_prompt_tokens=1000))
    assert len(w.calls) == 1 and w.counts["calls_cut_long_prompt"] == 2
    with pytest.raises(SchemaError, match="no session left"):
        build_workload(events, WorkloadParams(max_prompt_tokens=50))


def test_token_scale_divides_lengths():
    events = frame([row("a", 0, 0, 1, 1600, 160), row("a", 1, 2, 3, 3200, 160)])
    w = build_workload(events, WorkloadParams(token_scale=16, system_prompt_tokens=0))
    assert [(c.prompt_len, c.output_len, c.keep_len) for c in w.calls] == [(100, 10, 0), (200, 10, 110)]


def _common(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    differ = np.nonzero(a[:n] != b[:n])[0]
    return int(differ[0]) if len(differ) else n


_CALLS = st.lists(st.tuples(st.integers(16, 5000), st.integers(1, 600)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(_CALLS, min_size=1, max_size=3), st.integers(0, 3000), st.sampled_from([2, 4, 16]))
def test_scaling_keeps_shared_prefixes_exact(sessions, system_prompt, scale):
    """Two prompts sharing k trace tokens at token_scale 1 share exactly floor(k / scale) replay tokens at
    ``scale`` (hence the same leading blocks), within a thread, across restarts and across sessions."""
    events = frame([row(f"s{i}", k, 10 * k, 10 * k + 1, p, o) for i, calls in enumerate(sessions) for k, (p, o) in enumerate(calls)])
    traces, scaled = (
        build_workload(events, WorkloadParams(token_scale=t, system_prompt_tokens=system_prompt)) for t in (1, scale)
    )
    prompts1, _ = replay_tokens(traces, TokenSynth(traces, 0, VOCAB, 512))
    prompts_s, _ = replay_tokens(scaled, TokenSynth(scaled, 1, VOCAB, 512))
    ids = [c.request_id for c in traces.calls]
    assert ids == [c.request_id for c in scaled.calls]
    for i, a in enumerate(ids):
        assert len(prompts_s[a]) == len(prompts1[a]) // scale
        for b in ids[i + 1 :]:
            assert _common(prompts_s[a], prompts_s[b]) == _common(prompts1[a], prompts1[b]) // scale, (a, b)


def test_block_hashes_give_the_prefix_identity():
    events = frame(
        [
            row("a", 0, 0, 1, 1000, 5, hash_ids=[7, 8]),
            row("b", 0, 0, 1, 1000, 5, hash_ids=[7, 9]),
        ]
    )
    w = build_workload(events, WorkloadParams(system_prompt_tokens=0))
    prompts, _ = replay_tokens(w, TokenSynth(w, 0, VOCAB, 512))
    a, b = (prompts[c.request_id] for c in w.calls)
    assert np.array_equal(a[:512], b[:512]) and not np.array_equal(a[512:], b[512:])


def test_unknown_session_is_an_error():
    events = frame([row("a", 0, 0, 1, 100, 10)])
    with pytest.raises(SchemaError, match="not in the events"):
        build_workload(events, WorkloadParams(), ["zzz"])
