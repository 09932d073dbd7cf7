"""GhostWindow against a plain reference: a key is a ghost hit iff its latest eviction is within
the last ``size`` evictions and it was not counted since (random batches of evictions and lookups)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.runtime.ghost_window import GhostWindow

KEYS = [bytes([i]) * 4 for i in range(12)]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("evict"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=6)),
        st.tuples(st.just("lookup"), st.sampled_from(KEYS)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(size=st.integers(0, 9), program=steps)
def test_ghost_window_matches_reference(size: int, program: list) -> None:
    window = GhostWindow(size)
    last: dict[bytes, int] = {}  # key -> number of its latest eviction not yet counted
    evictions = 0
    for op, arg in program:
        if op == "evict":
            window.add(arg, evictions)
            for key in arg:
                last[key] = evictions
                evictions += 1
        else:
            at = last.pop(arg, None)
            expected = size > 0 and at is not None and at >= evictions - size
            assert window.hit(arg, evictions) == expected
        assert len(window) <= 2 * size + 2 * 6


def test_ghost_window_rejects_a_negative_size() -> None:
    with pytest.raises(ValueError, match="ghost window size"):
        GhostWindow(-1)
