"""Prefetch (runtime/prefetch.py) on vLLM's real Scheduler with its OffloadingConnector on the CPU
and the CacheWise CPU-tier policy (the residency scheduler on a scored pool with a fixed-forecast
predictor; the served ``--additional-config`` settings are parsed in the settings test).

Checked: a demoted session predicted back soon gets its prefix loaded from the host by an
internal request before its own request arrives (a load job, the prefix cached on the GPU
afterwards, the request then computes only its new tail and loads nothing); the internal
request never appears in ``update_from_output``'s outputs and the session view never sees it
as a request; no prefetch for a session predicted back late, nor while a session waits for
admission, nor while the guard distrusts the model; a prefetch that cannot start is aborted
when the session's request arrives; prefetch settings parse and reject bad values; off without
the CacheWise tier. With the tier, admission counts GPU + host (residency rule 6) and an
admitted idle session whose blocks the GPU pool evicted is prefetched.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import RequestStatus

from cachewise.replay.host_tier import LinkCost, TransferModel, TransferWorker, offload_transfer_config
from cachewise.runtime import cpu_engine
from cachewise.runtime.config import CacheWiseSettings, ConfigError, PoolConfig, PrefetchSettings, ResidencySettings
from cachewise.runtime.hooks import use_policy
from cachewise.runtime.policy import ManualClock
from cachewise.runtime.prefetch import PREFIX, Prefetcher
from cachewise.runtime.scheduler import ResidencyScheduler
from cachewise.runtime.sessions import FORECAST_LEVELS, Forecast, SessionView
from tests.residency_doubles import UNGUARDED, Forecaster

pytestmark = pytest.mark.vllm

BS = 16
RESIDENCY = {"host_reload_s_per_token": 1e-6}


def build(
    num_blocks: int = 40, host_chunks: int = 400, policy: str = "cachewise", forecasts: dict[str, float] | None = None,
    pool: PoolConfig = UNGUARDED,
):  # fmt: skip
    """The residency scheduler with prefetch on vLLM's scheduler with its offloading connector, on a scored
    pool whose predictor reports ``forecasts`` (each session's gap; default 500 s), the guard off so the
    controller and the prefetcher act on them from the first step (the guard's own gating: residency
    rule 5, tests/test_runtime_residency_guard.py). Prefetch settings as parsed from ``--additional-config``
    are tested below."""
    cls = type(
        "PrefetchingResidencyScheduler", (ResidencyScheduler,),
        {"residency_settings": ResidencySettings(**RESIDENCY), "prefetch_settings": PrefetchSettings(enabled=True)},
    )  # fmt: skip
    config = cpu_engine.make_vllm_config(num_blocks, BS, scheduler_cls=cls, max_model_len=2048)
    page = cpu_engine.make_kv_cache_config(num_blocks, BS).kv_cache_groups[0].kv_cache_spec.page_size_bytes
    config.kv_transfer_config = offload_transfer_config(host_chunks, page, policy)
    gaps = {key: forecast(gap) for key, gap in (forecasts or {}).items()}
    with use_policy(Forecaster(gaps, forecast(500.0)), clock=ManualClock(), config=pool):
        return cpu_engine.make_scheduler(config)


class Clocked:
    """Steps a scheduler with the simulated worker on a fake clock (0.01 s per step); records outputs."""

    def __init__(self, scheduler) -> None:
        self.s = scheduler
        self.now = 0.0
        # the engine's one clock, read by the pool (and the view's writers) and the residency scheduler
        self.s._clock = self.s.kv_cache_manager.block_pool.clock = lambda: self.now
        self.worker = TransferWorker(TransferModel(LinkCost(1e-5, 50.0, 3e-6), LinkCost(1e-5, 50.0, 2e-6)), chunk_bytes=BS * 131072)
        self.output_ids: set[str] = set()
        self.computed: dict[str, int] = {}

    def step(self) -> list:
        out = self.s.schedule()
        self.now = self.worker.submit(out.kv_connector_metadata, self.now) + 0.01
        ids = list(out.num_scheduled_tokens)
        for rid, n in out.num_scheduled_tokens.items():
            self.computed[rid] = self.computed.get(rid, 0) + n
        reqs = [self.s.requests[r] for r in ids]
        sampled = [[] if r.is_prefill_chunk else [7] for r in reqs]
        runner = ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled,
            kv_connector_output=self.worker.poll(self.now),
        )  # fmt: skip
        for eco in self.s.update_from_output(out, runner).values():
            self.output_ids |= {o.request_id for o in eco.outputs} | set(eco.finished_requests or ())
        return [r for r in reqs if r.is_finished()]

    def until_idle(self, steps: int = 3000) -> list:
        done = []
        for _ in range(steps):
            if not self.s.has_unfinished_requests():
                return done
            done += self.step()
        raise AssertionError("requests left unfinished")


def forecast(gap: float) -> Forecast:
    return Forecast((gap,) * len(FORECAST_LEVELS))


def first_round(run: Clocked, sessions: int = 4) -> dict[int, list[int]]:
    rng = random.Random(0)
    prompts = {s: [rng.randrange(1000, 30000) for _ in range(160)] for s in range(sessions)}
    for s, p in prompts.items():
        run.s.add_request(cpu_engine.make_request(f"a{s}", p, BS, max_tokens=4, session_id=f"s{s}"))
    assert len(run.until_idle()) == sessions
    return prompts


def demote_all(run: Clocked, gaps: dict[str, float]) -> None:
    """Every session demoted (as the controller does when room is needed), with the given forecasts."""
    for key, gap in gaps.items():
        state = run.s.sessions.get(key)
        state.forecast = forecast(gap)
        run.s.sessions.set_residency(key, False, demoted=True)


def gpu_hit_blocks(scheduler, request) -> int:
    _, tokens, _ = scheduler.kv_cache_manager.coordinator.find_longest_cache_hit(request.block_hashes, request.num_tokens - 1)
    return tokens // BS


def test_a_demoted_session_predicted_back_soon_is_loaded_back_before_its_request() -> None:
    run = Clocked(build())
    pf = run.s.prefetcher
    assert pf is not None
    prompts = first_round(run)
    # s0 back within a second (expected back before the 1 s lead ends), the others much later; a filler session keeps vLLM scheduling and
    # pushes s0's prefix out of the 40-block GPU cache (to the host only).
    demote_all(run, {"s0": 0.9, "s1": 500.0, "s2": 500.0, "s3": 500.0})
    filler = cpu_engine.make_request("f", [random.Random(1).randrange(1000, 30000) for _ in range(300)], BS, max_tokens=60, session_id="f")
    run.s.add_request(filler)
    probe = cpu_engine.make_request("probe", prompts[0] + [5] * 20, BS, max_tokens=4, session_id="x")
    loads_before = run.worker.load_jobs
    run.until_idle()
    assert pf.stats.issued == 1 and pf.stats.completed == 1, pf.stats
    assert run.worker.load_jobs > loads_before  # the prefix came from the host
    assert not any(r.startswith(PREFIX) for r in run.output_ids)  # never an output
    assert run.s.sessions.get("s0").resident and run.s.sessions.get("s0").finished_calls == 1  # not a request of the view
    assert gpu_hit_blocks(run.s, probe) == 10  # s0's prefix (160 prompt + 3 computed outputs) is on the GPU
    # s0's request now finds its prefix resident: nothing loaded, only the new tail computed
    loads = run.worker.load_jobs
    again = cpu_engine.make_request("b0", prompts[0] + [7, 7, 7, 7] + [5] * 16, BS, max_tokens=4, session_id="s0")
    run.s.add_request(again)
    done = run.until_idle()
    assert [r.request_id for r in done] == ["b0"] and run.worker.load_jobs == loads
    assert run.computed["b0"] <= 180 - 10 * BS + 3
    assert pf.stats.issued == 1  # s0 is no longer idle-and-demoted: no second prefetch


def test_no_prefetch_for_a_late_return_or_while_a_session_waits() -> None:
    run = Clocked(build())
    first_round(run)
    demote_all(run, {"s0": 300.0, "s1": 500.0, "s2": 500.0, "s3": 500.0})
    run.s.add_request(cpu_engine.make_request("f", list(range(1000, 1300)), BS, max_tokens=30, session_id="f"))
    run.until_idle()
    assert run.s.prefetcher.stats.issued == 0  # P(back within load + lead) = 0 < min_p_back
    # back soon, but a session is held for admission (the plan holds it): prefetch never overtakes it
    run.s.sessions.get("s1").forecast = forecast(1.0)
    plan_held = run.s.residency.plan
    run.s.residency.plan = lambda *a, **k: (lambda p: (p.held.append("someone"), p)[1])(plan_held(*a, **k))
    run.s.add_request(cpu_engine.make_request("g", list(range(2000, 2100)), BS, max_tokens=10, session_id="g"))
    run.until_idle()
    assert run.s.prefetcher.stats.issued == 0 and run.s.prefetcher.stats.skipped_waiting == 1


def test_a_prefetch_that_has_not_started_is_aborted_when_the_request_arrives() -> None:
    run = Clocked(build())
    prompts = first_round(run)
    demote_all(run, {"s0": 0.9, "s1": 500.0, "s2": 500.0, "s3": 500.0})
    run.s.add_request(cpu_engine.make_request("f", list(range(1000, 1300)), BS, max_tokens=30, session_id="f"))
    pf = run.s.prefetcher
    for _ in range(50):
        run.step()
        if pf.inflight:
            break
    (rid, inflight), = pf.inflight.items()
    # as if vLLM had found no room yet: the prefetch is still plainly waiting when s0's request comes
    inflight.request.status = RequestStatus.WAITING
    inflight.request.num_computed_tokens = 0
    run.s.add_request(cpu_engine.make_request("b0", prompts[0] + [7] * 20, BS, max_tokens=4, session_id="s0"))
    stale = pf.stale(run.s.sessions, run.now)
    assert [(p.request.request_id, why) for p, why in stale] == [(rid, "arrived")]


def test_prefetcher_due_uses_the_forecast_distribution() -> None:
    view = SessionView(BS)
    on_gpu = {"soon": 0}
    pf = Prefetcher(PrefetchSettings(enabled=True, min_p_back=0.5, lead_s=1.0), 1e-6, BS, lambda r: on_gpu[r.key])
    for key, gaps in {"soon": (0.5,) * 11 + (100.0,) * 10, "late": (0.5,) * 5 + (100.0,) * 16}.items():
        view.on_arrival(f"r-{key}", key, "t", 100, 0.0)
        view.on_forecast(f"r-{key}", key, "t", Forecast(gaps))
        view.on_finished(f"r-{key}", 100, [], 10.0)
        view.set_residency(key, False, demoted=True)
        pf._last[key] = SimpleNamespace(key=key, num_tokens=100)  # a finished request to mirror (not built here)
    due = pf.due(view, 10.0)
    assert [d.state.key for d in due] == ["soon"]  # 11/21 quantiles within 1 s vs 5/21
    assert due[0].reuse_at == pytest.approx(10.5) and math.isfinite(due[0].expire_at)
    view.set_residency("soon", True)
    on_gpu["soon"] = 5
    assert [d.state.key for d in pf.due(view, 10.0)] == ["soon"]  # admitted, but 1 of its 6 full blocks left the GPU
    on_gpu["soon"] = 6
    assert pf.due(view, 10.0) == []  # its prefix is on the GPU: nothing to bring back
    view.set_residency("soon", False)
    on_gpu["soon"] = 0
    assert pf.due(view, 10.0) == []  # neither admitted nor demoted (expired, never admitted): not a prefetch target


def test_prefetch_settings_parse_and_reject_bad_values() -> None:
    parsed = CacheWiseSettings.from_mapping({"mode": "fallback", "prefetch": {"enabled": True, "min_p_back": 0.3}})
    assert parsed.prefetch == PrefetchSettings(enabled=True, min_p_back=0.3)
    for bad in ({"enabled": "yes"}, {"min_p_back": 0}, {"max_inflight": 0}, {"lead_s": -1}, {"typo": 1}):
        with pytest.raises(ConfigError):
            CacheWiseSettings.from_mapping({"mode": "fallback", "prefetch": bad})


def test_prefetch_is_off_without_the_cachewise_host_tier() -> None:
    assert build(policy="lru").prefetcher is None


def test_a_prefetch_error_turns_prefetch_off_and_serving_goes_on() -> None:
    run = Clocked(build())
    pf = run.s.prefetcher
    first_round(run, sessions=2)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    pf.due = broken
    run.s.add_request(cpu_engine.make_request("f", list(range(1000, 1100)), BS, max_tokens=5, session_id="f"))
    done = run.until_idle()
    assert [r.request_id for r in done] == ["f"] and done[0].num_output_tokens == 5
    assert run.s.prefetcher is None and run.s.prefetch_stats.errors == 1 and run.s.residency is not None


def test_a_request_arriving_while_its_prefetch_loads_waits_for_it_instead_of_loading_again() -> None:
    """vLLM's connector delays a request whose host chunks are being loaded: one load, the prefetch's."""
    run = Clocked(build())
    pf = run.s.prefetcher
    prompts = first_round(run)
    demote_all(run, {"s0": 0.9, "s1": 500.0, "s2": 500.0, "s3": 500.0})
    run.s.add_request(cpu_engine.make_request("f", list(range(1000, 1300)), BS, max_tokens=30, session_id="f"))
    loads = run.worker.load_jobs
    def loading() -> set[str]:
        return {p.session for p in pf.inflight.values() if p.request.status == RequestStatus.WAITING_FOR_REMOTE_KVS}

    for _ in range(50):
        run.step()
        if loading():
            break
    assert loading() == {"s0"} and run.worker.load_jobs == loads + 1
    run.s.add_request(cpu_engine.make_request("b0", prompts[0] + [7, 7, 7, 7] + [5] * 16, BS, max_tokens=4, session_id="s0"))
    run.until_idle()
    assert pf.stats.completed == 1 and run.worker.load_jobs == loads + 1  # one load: the prefetch's
    assert run.computed["b0"] <= 180 - 10 * BS + 3


def test_with_the_host_tier_admission_counts_gpu_plus_host_and_idle_residents_keep_their_admission() -> None:
    """Residency rule 6 on vLLM's scheduler: 4 idle admitted sessions (~44 blocks) exceed the GPU
    budget (0.9 x 39); a new session is admitted at once beside them, nobody is demoted. The old
    rule (GPU budget only) had to demote: the residents exceeded even the whole GPU (rule 3)."""
    run = Clocked(build())
    ctl = run.s.residency
    first_round(run)
    view = run.s.sessions
    assert sum(view.working_set(f"s{i}") for i in range(4)) > ctl.capacity
    new = cpu_engine.make_request("n", list(range(2000, 2160)), BS, max_tokens=4, session_id="n")
    run.s.add_request(new)
    run.step()
    assert ctl.following_model and ctl.passthrough_steps == 0
    assert new.num_computed_tokens > 0 and ctl.demotions == 0  # admitted in its first step, nothing demoted
    assert all(view.get(f"s{i}").resident for i in range(4))
    run.until_idle()
    assert ctl.host_blocks == 400 and ctl.admitted_budget == pytest.approx(ctl.budget + 400)
    assert build(policy="lru").residency.host_blocks == 0  # vLLM's own host policy: the GPU-only rule


def test_an_admitted_idle_session_whose_blocks_the_gpu_pool_evicted_is_prefetched() -> None:
    """The reloads left at 50%: s0 stays admitted (not demoted), a filler pushes its prefix off the
    GPU (to the host only); predicted back soon, it is loaded back before its request."""
    run = Clocked(build(forecasts={"s0": 0.9, "s1": 0.5, "s2": 0.5}))  # s0 back last: the learned order evicts it first
    pf = run.s.prefetcher
    prompts = first_round(run, sessions=3)  # 3 x 11 blocks: all cached on the GPU
    assert run.s.sessions.get("s0").resident and not run.s.sessions.get("s0").demoted
    filler = cpu_engine.make_request("f", [random.Random(1).randrange(1000, 30000) for _ in range(300)], BS, max_tokens=60, session_id="f")
    run.s.add_request(filler)
    probe = cpu_engine.make_request("probe", prompts[0] + [5] * 20, BS, max_tokens=4, session_id="x")
    evicted = loads = None
    for _ in range(300):
        run.step()
        if evicted is None and gpu_hit_blocks(run.s, probe) < 10:
            evicted, loads = run.now, run.worker.load_jobs  # the filler took s0's blocks
        mine = [p for p in pf.inflight.values() if p.session == "s0"]
        if evicted is not None and not mine and gpu_hit_blocks(run.s, probe) == 10:
            break
    else:
        raise AssertionError(f"s0's prefix never came back: {pf.stats}")
    assert run.worker.load_jobs > loads and filler.status == RequestStatus.RUNNING  # from the host, while the filler runs
    assert run.s.residency.demotions == 0 and run.s.residency.passthrough_steps == 0
    run.until_idle()
    assert pf.stats.issued == pf.stats.completed >= 1, pf.stats  # s0, and s1 / s2 where the filler evicted some of theirs
    assert pf.inflight == {} and run.s.sessions.get("s0").resident and not any(r.startswith(PREFIX) for r in run.output_ids)


def test_no_prefetch_while_the_guard_distrusts_the_model() -> None:
    """Prefetch acts on forecasts: with the guard on and no evidence yet (it starts serving vLLM's
    order) the residency controller passes through and nothing is prefetched, as due as s0 is."""
    run = Clocked(build(pool=PoolConfig()))
    first_round(run)
    demote_all(run, {"s0": 0.9, "s1": 500.0, "s2": 500.0, "s3": 500.0})
    run.s.add_request(cpu_engine.make_request("f", list(range(1000, 1300)), BS, max_tokens=30, session_id="f"))
    run.until_idle()
    assert not run.s.residency.following_model and run.s.prefetcher.stats.issued == 0
