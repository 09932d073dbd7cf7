"""The shared session view: forecasts, event handling and its invariants under random event sequences."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise.runtime.sessions import FORECAST_LEVELS, PROVISIONAL, Forecast, SessionView
from cachewise.scoring.idle import IdleConditioner, N_LEVELS


def test_forecast_from_log_model_matches_the_idle_conditioner_median() -> None:
    residuals = tuple(-2.0 + 4.0 * i / (N_LEVELS - 1) for i in range(N_LEVELS))
    conditioner = IdleConditioner(residuals)
    forecast = Forecast.from_log_model(2.0, residuals)
    assert forecast.median == pytest.approx(conditioner.expected_gap_one(2.0, 0.0))
    assert forecast.gaps[0] == pytest.approx(math.expm1(0.0)) and forecast.gaps[-1] == pytest.approx(math.expm1(4.0))


def test_forecast_conditioning_on_elapsed_idle_time() -> None:
    forecast = Forecast.from_samples([float(x) for x in range(0, 101, 5)])  # gaps uniform on 0..100 s
    assert forecast.cdf(50.0) == pytest.approx(0.5) and forecast.quantile(0.25) == pytest.approx(25.0)
    assert forecast.p_back_within(0.0, 50.0) == pytest.approx(0.5)
    assert forecast.p_back_within(50.0, 10.0) == pytest.approx(0.1 / 0.5)  # P(50 < G <= 60 | G > 50)
    assert forecast.expected_hold(0.0, 1000.0) == pytest.approx(50.0)  # the mean of U(0, 100)
    assert forecast.expected_hold(0.0, 10.0) == pytest.approx(0.1 * 5.0 + 0.9 * 10.0)
    assert forecast.expected_hold(50.0, 1000.0) == pytest.approx(25.0)  # G - 50 | G > 50 is U(0, 50)
    assert forecast.remaining_quantile(50.0, 0.5) == pytest.approx(25.0)
    assert forecast.remaining_quantile(200.0, 0.5) == 200.0  # past every quantile: as long again
    assert forecast.p_back_within(200.0, 100.0) == 0.0 and forecast.expected_hold(200.0, 60.0) == 60.0
    assert Forecast.never().p_back_within(0.0, 1e9) == 0.0 and Forecast.never().expected_hold(0.0, 30.0) == pytest.approx(30.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.0, 500.0), min_size=len(FORECAST_LEVELS), max_size=len(FORECAST_LEVELS)),
    st.integers(0, 6),
    st.floats(0.0, 600.0),
    st.integers(1, 40),
)
def test_remaining_points_are_the_remaining_quantiles_at_bin_midpoints(gaps: list, never: int, elapsed: float, k: int) -> None:
    """remaining_points is an inlined fast path (the controller prices every idle candidate with it each
    step): bit for bit the remaining quantiles at the levels (i + 1/2) / k, "does not come back" tails included."""
    g = sorted(gaps)
    if never:
        g[-never:] = [math.inf] * never
    forecast = Forecast(tuple(g))
    points = forecast.remaining_points(elapsed, k)
    assert points == [forecast.remaining_quantile(elapsed, (i + 0.5) / k) for i in range(k)]


def test_forecast_extreme_quantiles_weigh_their_share_only() -> None:
    """The top stored quantile (level 1, e.g. the largest validation residual) holds the last 5%
    of the distribution spread down to the 0.95 quantile, not a whole sample's weight of 1/21."""
    gaps = [float(i) for i in range(20)] + [10_000.0]
    forecast = Forecast(tuple(gaps))
    assert forecast.expected_hold(0.0, 1e6) == pytest.approx(sum(i + 0.5 for i in range(19)) / 20 + (19 + 10_000) / 2 / 20)
    assert forecast.p_back_within(0.0, 19.0) == pytest.approx(0.95)
    half_never = Forecast(tuple([1.0] * 11 + [math.inf] * 10))
    assert half_never.p_back_within(0.0, 1e9) == pytest.approx(0.5)


def test_forecast_rejects_bad_gaps() -> None:
    with pytest.raises(ValueError):
        Forecast((1.0, 0.0) + (2.0,) * (len(FORECAST_LEVELS) - 2))
    with pytest.raises(ValueError):
        Forecast((math.nan,) * len(FORECAST_LEVELS))


def test_lifecycle_idle_forecast_and_working_set() -> None:
    view = SessionView(block_size=16)
    assert view.on_arrival("r1", "s", "t", 160, now=0.0) == "s"
    assert view.working_set("s") == 10 and view.waiting_since("s") == 0.0
    view.on_scheduled("r1")
    assert view.get("s").waiting == set() and view.get("s").idle_since is None
    view.on_forecast("r1", "s", "t", Forecast.never())
    view.on_finished("r1", 200, [b"a", b"b"], now=3.0)
    state = view.get("s")
    assert state.idle_since == 3.0 and state.forecast == Forecast.never() and not state.live
    assert view.working_set("s") == 13  # ceil(200 / 16); no growth measured yet
    view.on_arrival("r2", "s", "t", 260, now=5.0)
    view.on_finished("r2", 300, [b"a", b"b", b"c"], now=6.0)
    assert view.get("s").threads["t"].growth == 19 - 13
    assert view.working_set("s") == 19 + 6


def test_provisional_session_is_merged_into_the_named_one() -> None:
    view = SessionView(block_size=16)
    view.on_arrival("r1", "s", "t", 16, now=0.0)
    view.on_finished("r1", 32, [b"a", b"b"], now=1.0)
    key = view.on_arrival("r2", None, None, 48, now=2.0)
    assert key == PROVISIONAL + "r2" and len(view) == 2
    view.on_forecast("r2", "s", "t", None)
    view.on_finished("r2", 64, [b"a", b"b", b"c"], now=3.0)
    assert len(view) == 1 and view.get("s").first_arrival == 0.0 and view.get("s").threads["t"].blocks == 4


def test_exclusive_hashes_leave_out_shared_prefixes() -> None:
    view = SessionView(block_size=16)
    for rid, session, hashes in (("a", "s1", [b"sys", b"x"]), ("b", "s2", [b"sys", b"y"])):
        view.on_arrival(rid, session, "t", 32, now=0.0)
        view.on_finished(rid, 32, hashes, now=1.0)
    assert view.exclusive_hashes("s1") == [b"x"] and view.hash_refs(b"sys") == 2
    assert view.working_set("s2") == 1.5  # the shared block counts half in the session that saw it shared


def test_forget_drops_expired_idle_sessions_only() -> None:
    view = SessionView(block_size=16)
    view.on_arrival("a", "s", "t", 16, now=0.0)
    view.on_forecast("a", "s", "t", Forecast.from_samples([1.0, 2.0]))
    view.on_finished("a", 16, [b"h"], now=0.0)
    view.on_arrival("b", "live", "t", 16, now=0.0)
    assert view.forget(now=1.0) == []
    assert view.forget(now=10.0) == ["s"] and view.hash_refs(b"h") == 0 and view.get("live") is not None


events = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "schedule", "forecast", "finish", "abort"]),
        st.integers(0, 7),  # request
        st.sampled_from(["s0", "s1", "s2", None]),  # session named at arrival / by the predictor
        st.integers(1, 400),  # tokens
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events, st.integers(1, 4))
def test_invariants_hold_under_random_events(seq: list, max_sessions: int) -> None:
    view = SessionView(block_size=16, max_sessions=max_sessions)
    live: set[str] = set()
    used: set[bytes] = set()
    now = 0.0
    for kind, req, session, tokens in seq:
        before = {s.key: (bool(s.live), s.idle_since) for s in view}
        rid = f"r{req}"
        now += 1.0
        if kind == "arrive":
            view.on_arrival(rid, session, None, tokens, now)
            live.add(rid)
        elif kind == "schedule":
            view.on_scheduled(rid)
        elif kind == "forecast":
            view.on_forecast(rid, session or "s0", "t", Forecast.from_samples([1.0, float(tokens)]))
        elif kind == "finish":
            grown = [b"sys", *(bytes([i]) for i in range(tokens % 7))]  # a thread's chains often extend each other
            hashes = grown if tokens % 2 else [*grown, rid.encode()]
            hashes = hashes[: tokens // 16]  # full-block hashes: at most one per full block (the view's contract)
            used.update(hashes)
            view.on_finished(rid, tokens, hashes, now)
            live.discard(rid)
        else:
            view.on_aborted(rid, now)
            live.discard(rid)
        owners = [s for s in view for r in s.live]
        assert sorted(r for s in view for r in s.live) == sorted(live)  # every live request in exactly one session
        assert len(owners) == len(live)
        for s in view:
            assert s.waiting <= s.live
            assert (s.idle_since is None) == bool(s.live)
            assert view.working_set(s.key) >= sum(t.blocks - t.shared for t in s.threads.values()) >= 0
            for rid in s.live:
                assert view.session_of(rid) == s.key
        refs: dict = {}
        for s in view:
            for t in s.threads.values():
                for h in t.hashes:
                    refs[h] = refs.get(h, 0) + 1
        assert all(view.hash_refs(h) == refs.get(h, 0) for h in used)
        # bounded: past max_sessions only sessions with a live request are kept ...
        assert len(view) <= max(max_sessions, sum(1 for s in view if s.live))
        # ... and what went (other than a provisional session merged into its name; its live
        # requests, if any, would have failed the ownership check above) was idle no shorter than
        # any idle session still kept (idle since now if this event's finish or abort made it idle)
        gone = [k for k in before if view.get(k) is None and not k.startswith(PROVISIONAL)]
        for k in gone:
            since = before[k][1] if not before[k][0] else now
            assert all(since <= s.idle_since for s in view if s.idle_since is not None)


agents = st.lists(  # calls: (agent, new prompt blocks, output blocks, client session id or None)
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2), st.sampled_from([None, None, "client"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(agents)
def test_thread_index_gives_each_growing_prompt_one_thread(calls: list) -> None:
    """Agents share a system prompt block and each grows its own chain: every call of an agent
    gets the thread of its first call, no two agents share one; :meth:`known_thread` predicts
    :meth:`on_call` without changing anything (a twin view never asked agrees on every call)."""
    view, twin = SessionView(16), SessionView(16)
    chains: dict[int, list] = {}
    thread_of: dict[int, str] = {}
    for agent, grow, out, client in calls:
        chain = chains.setdefault(agent, [b"sys", (agent, 0)])
        prompt = len(chain) + grow
        chain.extend((agent, len(chain) + i) for i in range(grow + out))
        hashes = chain[: prompt + out]
        known = view.known_thread(hashes, prompt, None, client)
        size = view.indexed_hashes()
        assert view.known_thread(hashes, prompt, None, client) == known and view.indexed_hashes() == size
        named = view.on_call(hashes, prompt, None, client)
        assert twin.on_call(hashes, prompt, None, client) == named
        if agent in thread_of:
            assert known is not None and known[0] == named[0] == thread_of[agent]
        else:
            assert (known is None) if client is None else (known == (None, client))
            assert named[0] not in thread_of.values()
            thread_of[agent] = named[0]
        assert named[1] == (client or view.known_thread(hashes, prompt, None, None)[1])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=8), max_size=30), st.integers(1, 6))
def test_thread_index_stays_within_max_hashes(chains: list, max_hashes: int) -> None:
    view = SessionView(16, max_hashes=max_hashes)
    for chain in chains:
        view.on_call(chain, len(chain), None, None)
        assert view.indexed_hashes() <= max_hashes
    if chains:  # the last call's tips are the most recently used: never the ones dropped
        last = chains[-1]
        assert view.known_thread(last, len(last), None, None) is not None


def test_client_thread_id_skips_the_index_search() -> None:
    view = SessionView(16)
    assert view.on_call([b"a", b"b"], 2, None, None) == ("t1", "t1")
    assert view.on_call([b"a", b"b", b"c"], 3, "sub", None) == ("sub", "sub")  # the client's thread wins
    assert view.on_call([b"a", b"b", b"c", b"d"], 4, None, "S") == ("sub", "S")  # latest tip b"c" is sub's


host_events = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "arrive", "forecast", "finish", "abort", "forget", *["store"] * 4, "drop", "clear"]),
        st.integers(0, 3),  # request
        st.sampled_from(["s0", "s1", None]),  # session named at arrival / by the predictor
        st.integers(0, 5),  # chunk (tier = chunk % 2: the same chunk ids in two tiers)
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(host_events, st.integers(1, 3))
def test_host_working_sets_partition_each_tiers_chunks_under_random_events(seq: list, max_sessions: int) -> None:
    """The view's host-tier relation against a model of what each tier holds and who last used it:
    per tier the owner groups partition the held chunks; every owner is a session the view knows
    (forgotten ones hand theirs to "unowned", merged provisional ones to their real session); an
    unknown session never takes a chunk from a known owner; two tiers never mix."""
    view = SessionView(block_size=16, max_sessions=max_sessions)
    host = view.host
    tiers = (host.tier(), host.tier())
    held: list[dict[int, str]] = [{}, {}]  # per tier: chunk -> owner the model expects ("" = unowned)
    now = 0.0
    for kind, req, session, chunk in seq:
        rid = f"r{req}"
        now += 1.0
        before = {s.key for s in view}
        if kind == "arrive":
            view.on_arrival(rid, session, None, 16, now)
        elif kind == "forecast":
            view.on_forecast(rid, session or "s0", "t", Forecast.from_samples([0.5, 1.0]))
        elif kind == "finish":
            view.on_finished(rid, 16, [rid.encode()], now)
        elif kind == "abort":
            view.on_aborted(rid, now)
        elif kind == "forget":
            view.forget(now)
        elif kind in ("store", "drop", "clear"):
            i = chunk % 2
            if kind == "store":
                owner = view.session_of(rid)  # as the CPU policy asks: the session of a live request, if any
                host.stored(tiers[i], [chunk], owner)
                old = held[i].get(chunk)
                if owner is not None and (old != owner):
                    held[i][chunk] = owner
                elif old is None:
                    held[i][chunk] = ""
            elif kind == "drop":
                host.dropped(tiers[i], chunk)
                held[i].pop(chunk, None)
            else:
                host.cleared(tiers[i])
                held[i].clear()
        gone = before - {s.key for s in view}
        known = {s.key for s in view}
        for i, tier in enumerate(tiers):
            for k, owner in held[i].items():
                if owner in gone:  # forgotten: unowned; a merged provisional session: its real one
                    got = host.owner(tier, k) or ""
                    assert got == "" or (owner.startswith(PROVISIONAL) and got in known and not got.startswith(PROVISIONAL))
                    held[i][k] = got
            groups = dict(host.groups(tier))
            assert all(groups.values())  # no empty group
            assert sorted(k for keys in groups.values() for k in keys) == sorted(held[i])  # a partition of the held chunks
            assert set(groups) <= known | {""}
            for owner, keys in groups.items():
                assert all(held[i][k] == owner and (host.owner(tier, k) or "") == owner for k in keys)
            assert host.held(tier) == len(held[i])
        for key in known:
            assert host.blocks(key) == sum(owner == key for h in held for owner in h.values())
