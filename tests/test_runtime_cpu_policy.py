"""CacheWise's CPU-tier cache policy (runtime/cpu_policy.py) driven by vLLM's real CPUOffloadingManager.

Order: ended/unknown sessions first, then idle sessions by predicted return (farthest first),
live sessions last; within an idle session its stale chunks, then its latest prefix deepest
first; vLLM's LRU order within a live session and as the fallback (no view, no forecast,
error: counted). Property: over random store/load/finish sequences the manager's
invariants hold (pinned and protected chunks are never evicted; an eviction fails only when
vLLM's LRU would fail too) and, without forecasts, victims are exactly vLLM's LRU victims.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm.v1.kv_offload.base import ReqContext, make_offload_key
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager

from cachewise.runtime.cpu_policy import MODULE_PATH, POLICY_NAME, CacheWiseCachePolicy, find_policy
from cachewise.runtime.hooks import PolicyBinding, bound
from cachewise.runtime.sessions import FORECAST_LEVELS, Forecast, SessionView


def key(i: int):
    return make_offload_key(i.to_bytes(8, "big"), 0)


def manager(num_chunks: int) -> CPUOffloadingManager:
    # vLLM's own out-of-tree loading path, as --kv-transfer-config's cache_policy_module_path
    return CPUOffloadingManager(num_chunks=num_chunks, cache_policy=POLICY_NAME, cache_policy_module_path=MODULE_PATH)


def flat(gap: float) -> Forecast:
    return Forecast((gap,) * len(FORECAST_LEVELS))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store(m: CPUOffloadingManager, rid: str, keys: list[int]) -> list:
    ctx = ReqContext(req_id=rid)
    out = m.prepare_store([key(k) for k in keys], ctx)
    assert out is not None
    m.complete_store(out.keys_to_store, ctx)
    m.on_request_finished(ctx)
    return out.evicted_keys


def session_call(view: SessionView, clock: Clock, rid: str, session: str, forecast: Forecast | None) -> None:
    """A request of ``session`` arrives now; its finish (with ``forecast``) comes later via :func:`finish`."""
    view.on_arrival(rid, session, session, 16, clock.now)
    view.on_forecast(rid, session, session, forecast)


def finish(view: SessionView, clock: Clock, rid: str) -> None:
    view.on_finished(rid, 16, (), clock.now)


def setup(num_chunks: int = 6):
    m = manager(num_chunks)
    policy = m._policy
    assert isinstance(policy, CacheWiseCachePolicy)
    view, clock = SessionView(16), Clock()
    policy.attach(view, clock)
    return m, policy, view, clock


def test_loaded_through_vllms_module_path_and_lru_without_view() -> None:
    m = manager(2)
    store(m, "a", [1])
    store(m, "b", [2])
    assert store(m, "c", [3]) == [key(1)]  # vLLM's LRU victim
    assert m._policy.stats.fallbacks["no_view"] == 1 and m._policy.stats.lru_evictions == 1


def test_evicts_the_session_predicted_back_last_and_keeps_live_ones() -> None:
    m, policy, view, clock = setup(6)
    for rid, session, gap in (("a", "soon", 5.0), ("b", "late", 500.0), ("c", "live", 1.0)):
        session_call(view, clock, rid, session, flat(gap))
        store(m, rid, {"a": [1, 2], "b": [3, 4], "c": [5, 6]}[rid])
    finish(view, clock, "a")
    finish(view, clock, "b")  # "c" stays live
    clock.now = 1.0
    session_call(view, clock, "d", "new", None)
    ctx = ReqContext(req_id="d")
    out = m.prepare_store([key(7), key(8), key(9)], ctx)
    # "late" (back in ~499 s) goes first, tail before head (vLLM's LRU order within a request), then "soon"
    assert out.evicted_keys == [key(4), key(3), key(2)]
    assert policy.owner_of(key(5)) == "live" and policy.stats.predicted_evictions == 3


def test_a_distrusting_guard_verdict_gives_vllms_lru_order() -> None:
    """The same set-up as above, but the view's verdict (the GPU pool's guard) distrusts the model:
    the host tier evicts in vLLM's LRU order; trusted again, it evicts by the forecasts."""
    m = manager(6)
    policy = m._policy
    verdict = [False]
    view, clock = SessionView(16, lambda: verdict[0]), Clock()
    policy.attach(view, clock)
    for rid, session, gap in (("a", "soon", 5.0), ("b", "late", 500.0)):
        session_call(view, clock, rid, session, flat(gap))
        store(m, rid, {"a": [1, 2], "b": [3, 4]}[rid])
        finish(view, clock, rid)
    clock.now = 1.0
    session_call(view, clock, "d", "new", None)
    assert store(m, "d", [7, 8, 9]) == [key(2)]  # vLLM's LRU victim (tail before head), not "late"'s blocks
    assert policy.stats.fallbacks["distrusted"] == 1 and policy.stats.predicted_evictions == 0
    verdict[0] = True
    assert store(m, "d", [10]) == [key(4)]  # by the forecasts: "late" first, tail before head
    assert policy.stats.predicted_evictions == 1


def test_ended_and_unknown_sessions_go_first() -> None:
    m, policy, view, clock = setup(3)
    session_call(view, clock, "a", "idle", flat(100.0))
    store(m, "a", [1])
    finish(view, clock, "a")
    store(m, "stranger", [2])  # request the view never saw
    session_call(view, clock, "b", "ended", Forecast((1.0,) * (len(FORECAST_LEVELS) - 1) + (2.0,)))
    store(m, "b", [3])
    finish(view, clock, "b")
    clock.now = 10.0  # "ended" is past its forecast's expiry (2 s)
    session_call(view, clock, "c", "new", None)
    ctx = ReqContext(req_id="c")
    assert m.prepare_store([key(4), key(5)], ctx).evicted_keys == [key(2), key(3)]
    assert policy.session_score("ended", clock.now) == (math.inf, True)


def test_no_forecast_falls_back_to_lru_and_errors_are_counted(monkeypatch) -> None:
    m, policy, view, clock = setup(2)
    for rid in ("a", "b"):
        session_call(view, clock, rid, rid, None)
        store(m, rid, [ord(rid)])
        finish(view, clock, rid)
    assert store(m, "c", [1]) == [key(ord("a"))]
    assert policy.stats.fallbacks["no_prediction"] == 1

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(policy, "session_score", broken)
    assert store(m, "d", [2]) == [key(ord("b"))]
    assert policy.stats.fallbacks["error"] == 1 and policy.stats.lru_evictions == 2


def test_pinned_and_protected_chunks_are_not_evicted_and_failure_is_atomic() -> None:
    m, policy, view, clock = setup(2)
    session_call(view, clock, "a", "s", flat(900.0))
    store(m, "a", [1, 2])
    finish(view, clock, "a")
    load_ctx = ReqContext(req_id="load")
    m.prepare_load([key(1)], load_ctx)  # pinned while loading
    before = (dict(policy.chunks), set(policy._evictable))
    assert m.prepare_store([key(3), key(4)], ReqContext(req_id="x")) is None  # only one evictable chunk
    assert (dict(policy.chunks), set(policy._evictable)) == before
    assert m.prepare_store([key(2), key(3)], ReqContext(req_id="y")) is None  # key 2 is protected (in the offer)
    m.complete_load([key(1)], load_ctx)
    assert m.prepare_store([key(3)], ReqContext(req_id="z")).evicted_keys in ([key(1)], [key(2)])


def test_find_policy_finds_the_policy_behind_vllms_connector() -> None:
    class Manager:
        def __init__(self, policy: CacheWiseCachePolicy) -> None:
            self._policy = policy

    policy = CacheWiseCachePolicy(4)
    connector = type("C", (), {})()
    connector.connector_scheduler = type("S", (), {})()
    connector.connector_scheduler.manager = Manager(policy)
    scheduler = type("Sch", (), {"connector": connector})()
    assert find_policy(scheduler) is policy
    assert find_policy(type("Sch", (), {"connector": None})()) is None


def test_a_policy_built_inside_a_binding_attaches_its_view_and_clock() -> None:
    view, clock = SessionView(16), Clock()
    assert CacheWiseCachePolicy(4).view is None  # no binding: vLLM's LRU order
    with bound(PolicyBinding(None, clock, sessions=view)):
        policy = CacheWiseCachePolicy(4)
    assert policy.view is view and policy.clock is clock


ops = st.lists(
    st.tuples(st.sampled_from(["store", "load", "done", "finish"]), st.integers(0, 5), st.lists(st.integers(0, 11), min_size=1, max_size=4)),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, forecasts=st.booleans(), gaps=st.lists(st.floats(0.0, 1000.0), min_size=6, max_size=6))
def test_property_manager_invariants_and_lru_equivalence_without_forecasts(ops, forecasts, gaps) -> None:
    ours, _, view, clock = setup(5)
    ref = CPUOffloadingManager(num_chunks=5, cache_policy="lru")
    loading: list[tuple[list, ReqContext, ReqContext]] = []
    step = 0
    for op, sess, keys in ops:
        step += 1
        clock.now = float(step)
        rid = f"r{step}"
        session = f"s{sess}"
        session_call(view, clock, rid, session, flat(gaps[sess]) if forecasts else None)
        ks = [key(k) for k in dict.fromkeys(keys)]
        c1, c2 = ReqContext(req_id=rid), ReqContext(req_id=rid)
        if op == "store":
            pinned = {k for k, c in ours._policy.chunks.items() if c.ref_cnt != 0}
            evictable = len(ours._policy._evictable - set(ks))
            new = sum(k not in ours._policy.chunks for k in ks)
            free = 5 - len(ours._policy.chunks)
            o1, o2 = ours.prepare_store(ks, c1), ref.prepare_store(ks, c2)
            assert (o1 is None) == (new - free > evictable)  # fails only when no policy could succeed
            if not forecasts:
                assert (o1 is None) == (o2 is None)
            if o1 is not None:
                assert not set(o1.evicted_keys) & (pinned | set(ks))
                assert len(o1.evicted_keys) <= evictable
                if not forecasts:
                    assert o1.evicted_keys == o2.evicted_keys
                ours.complete_store(o1.keys_to_store, c1)
            if o2 is not None:
                ref.complete_store(o2.keys_to_store, c2)
        elif op == "load":
            ready = [k for k in ks if ours.lookup(k, c1).name == "HIT" and ref.lookup(k, c2).name == "HIT"]
            if ready:
                ours.prepare_load(ready, c1)
                ref.prepare_load(ready, c2)
                loading.append((ready, c1, c2))
        elif op == "done" and loading:
            ready, l1, l2 = loading.pop(0)
            ours.complete_load(ready, l1)
            ref.complete_load(ready, l2)
        ours.on_request_finished(c1)
        ref.on_request_finished(c2)
        finish(view, clock, rid)
        assert set(ours._policy.chunks) == set(ref._policy.chunks) or forecasts
        assert ours._num_evictable_cache_chunks == len(ours._policy._evictable)
        # the view holds the chunk <-> session relation: its groups partition exactly the policy's chunks
        groups = dict(view.host.groups(ours._policy.tier))
        assert sorted(k for keys in groups.values() for k in keys) == sorted(ours._policy.chunks)
        assert set(groups) <= {s.key for s in view} | {""}


def test_two_policies_on_one_view_keep_their_chunks_apart_and_detach_cleanly() -> None:
    """Two CPU tiers (e.g. two offloading connectors) on one view, the same chunk ids in both:
    each has its own tier id, so dropping a chunk in one leaves the other's owner in place."""
    m1, p1, view, clock = setup(4)
    m2 = manager(4)
    p2 = m2._policy
    p2.attach(view, clock)
    assert p1.tier != p2.tier
    session_call(view, clock, "a", "s", flat(10.0))
    store(m1, "a", [1, 2])
    store(m2, "a", [1, 2])
    p1.remove(key(1))
    assert p1.owner_of(key(1)) is None and p2.owner_of(key(1)) == "s" and view.host.blocks("s") == 3
    p2.attach(None, clock)  # detached: the view drops its tier, the policy is vLLM's LRU
    assert view.host.blocks("s") == 1 and p2.owner_of(key(2)) is None


def test_a_forgotten_sessions_chunks_stay_cached_unowned_and_go_first() -> None:
    m, policy, view, clock = setup(3)
    for rid, session, gap in (("a", "gone", 1.0), ("b", "idle", 100.0)):
        session_call(view, clock, rid, session, flat(gap))
        store(m, rid, [ord(rid)])
        finish(view, clock, rid)
    clock.now = 5.0
    assert view.forget(clock.now) == ["gone"]  # past its expiry: the view drops it ...
    assert policy.owner_of(key(ord("a"))) is None and key(ord("a")) in view.host.keys(policy.tier, "")  # ... its chunk is unowned
    session_call(view, clock, "c", "new", None)
    assert store(m, "c", [1, 2]) == [key(ord("a"))]


def test_an_idle_sessions_chain_goes_deepest_first_and_its_stale_chunks_before_it() -> None:
    """vLLM's connector re-ranks only the chunks a request loads or stores: a request that found its
    head (chunks 1-3) on the GPU and loaded 4-6 from the host leaves the head's host copies with the
    oldest rank. vLLM's LRU order would evict 1-3 first and the rest of the chain could no longer be
    loaded (the connector loads from the first block the GPU lacks); CacheWise evicts the session's
    stale chunk (90: no thread holds it now) first, then its prefix tail first."""
    m, policy, view, clock = setup(10)
    chain = list(range(1, 9))
    hashes = tuple(i.to_bytes(8, "big") for i in chain)
    session_call(view, clock, "r1", "s", flat(500.0))
    store(m, "r1", [1, 2, 3, 4, 5, 6, 90])
    view.on_finished("r1", 7 * 16, hashes[:6] + (int(90).to_bytes(8, "big"),), clock.now)
    clock.now = 1.0
    session_call(view, clock, "r2", "s", flat(500.0))
    ctx = ReqContext(req_id="r2")
    m.prepare_load([key(4), key(5), key(6)], ctx)  # 1-3 were on the GPU: the connector loads 4-6 only
    m.complete_load([key(4), key(5), key(6)], ctx)
    out = m.prepare_store([key(7), key(8)], ctx)
    m.complete_store(out.keys_to_store, ctx)
    m.on_request_finished(ctx)
    view.on_finished("r2", 8 * 16, hashes, clock.now)  # its thread's latest prefix: 1-8
    lru = CPUOffloadingManager(num_chunks=10, cache_policy="lru")
    for rid, keys, loaded in (("r1", [1, 2, 3, 4, 5, 6, 90], []), ("r2", [7, 8], [4, 5, 6])):
        c = ReqContext(req_id=rid)
        if loaded:
            lru.prepare_load([key(k) for k in loaded], c)
            lru.complete_load([key(k) for k in loaded], c)
        o = lru.prepare_store([key(k) for k in keys], c)
        lru.complete_store(o.keys_to_store, c)
        lru.on_request_finished(c)
    clock.now = 2.0
    session_call(view, clock, "x", "other", None)
    offer = [key(k) for k in (20, 21, 22, 23, 24)]  # 9 of 10 chunks held: 4 go
    assert lru.prepare_store(offer, ReqContext(req_id="x")).evicted_keys == [key(90), key(3), key(2), key(1)]  # the head
    assert m.prepare_store(offer, ReqContext(req_id="x")).evicted_keys == [key(90), key(8), key(7), key(6)]
    assert policy.stats.predicted_evictions == 4
