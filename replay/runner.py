"""One replay run, and the KV capacities the runs are sized by.

:class:`Replayer` holds what every run of one workload shares (token synthesis, cost
model, engine shape, fitted policy statistics) and runs a policy at a given KV capacity
and session overlay. Capacities are fractions of the *peak live working set*
(:mod:`cachewise.replay.metrics`), measured by an infinite-cache run at the same
overlay; a capacity below one request's blocks is raised to that and flagged.

Policy CPU time is the wall time spent inside the block pool's entry points
(``get_new_blocks``, ``free_blocks``, ``touch``, and the runtime's ``on_request_released``,
which includes the predictor call): an upper bound on what the policy adds, since it
includes vLLM's own pool work (measured the same way for ``lru``, for reference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from cachewise.runtime.config import GuardConfig, PoolConfig, ResidencySettings
from cachewise.runtime.hooks import PolicyBinding
from cachewise.runtime.policy import ManualClock
from cachewise.runtime.prefetch import PrefetchStats
from cachewise.replay.costmodel import CostModel
from cachewise.replay.driver import ArrivalParams, ClosedLoopDriver
from cachewise.replay.engine import VOCAB_SIZE, EngineParams, VllmEngine
from cachewise.replay.host_tier import TransferWorker
from cachewise.replay.host_tier_policies import HostTierSettings, host_tier_for
from cachewise.replay.metrics import RunMetrics
from cachewise.replay.policies import Policy, PolicyContext, build_policy
from cachewise.replay.residency_policies import replay_settings
from cachewise.replay.tokens import TokenSynth
from cachewise.replay.workload import Workload

POOL_ENTRY_POINTS = ("get_new_blocks", "free_blocks", "touch", "on_request_released")
HASH_BLOCK_TOKENS = 512  # tokens per hash id in block-hash traces (Mooncake)


@dataclass(frozen=True)
class RunSpec:
    """One point of the comparison: a policy at a capacity under an overlay."""

    policy: str
    capacity_frac: float
    arrivals: ArrivalParams


class _PoolTimer:
    """Accumulates wall time spent in a pool's entry points (wraps the instance's methods)."""

    def __init__(self, pool: Any):
        self.seconds = 0.0
        for name in POOL_ENTRY_POINTS:
            method = getattr(pool, name, None)
            if method is not None:
                setattr(pool, name, self._timed(method))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class Replayer:
    """Runs policies over one workload (see module doc)."""

    def __init__(
        self,
        workload: Workload,
        cost: CostModel,
        engine: EngineParams,
        policy_context: PolicyContext,
        seed: int = 0,
        residency: ResidencySettings | None = None,
        scheduler_cls: str | type | None = None,
        host_tier: HostTierSettings | None = None,
        guard_start: str = GuardConfig.start,
    ):
        self.w = workload
        self.cost = cost
        self.engine_params = engine
        self.ctx = policy_context
        self.residency = residency  # controller settings of the residency policies (cost model: the replay's)
        self.scheduler_cls = scheduler_cls  # vLLM scheduler class of every run (None: vLLM's); a policy's own wins
        self.host_tier = host_tier  # host-memory tier of the *_offload policies (None or frac 0: none)
        self.guard_start = guard_start  # GuardConfig.start of the guarded policies
        self.synth = TokenSynth(workload, seed, VOCAB_SIZE, HASH_BLOCK_TOKENS // workload.params.token_scale)
        bs = engine.block_size
        self.max_model_len = bs * math.ceil((workload.max_request_tokens() + 1) / bs)
        self.min_blocks = math.ceil(self.max_model_len / bs) + 1
        self.infinite_blocks = workload.distinct_block_bound(bs) + 1
        self._infinite: dict[ArrivalParams, dict[str, Any]] = {}

    def _infinite_run(self, arrivals: ArrivalParams) -> dict[str, Any]:
        """The infinite-cache run under ``arrivals`` (run once, then cached)."""
        if arrivals not in self._infinite:
            self._infinite[arrivals] = self.run_at("infinite", self.infinite_blocks, arrivals)
        return self._infinite[arrivals]

    def peak_live_blocks(self, arrivals: ArrivalParams) -> int:
        """Peak live working set (blocks) under ``arrivals``, from the infinite-cache run."""
        return int(self._infinite_run(arrivals)["peak_live_blocks"])

    def num_blocks(self, capacity_frac: float, arrivals: ArrivalParams) -> tuple[int, bool]:
        """vLLM blocks (null block included) for ``capacity_frac``; True when raised to fit a request."""
        if capacity_frac <= 0:
            raise ValueError(f"capacity fraction must be > 0, got {capacity_frac}")
        wanted = math.ceil(capacity_frac * self.peak_live_blocks(arrivals)) + 1
        return max(wanted, self.min_blocks), wanted < self.min_blocks

    def run(self, spec: RunSpec, progress: bool = False) -> dict[str, Any]:
        """One run's results row: the spec, the capacity used, and :meth:`RunMetrics.summary`."""
        peak = self.peak_live_blocks(spec.arrivals)
        if spec.policy == "infinite":
            blocks, clamped = self.infinite_blocks, False
        else:
            blocks, clamped = self.num_blocks(spec.capacity_frac, spec.arrivals)
        row = {
            "policy": spec.policy,
            "capacity_frac": spec.capacity_frac,
            **asdict(spec.arrivals),
            "num_blocks": blocks,
            "peak_live_blocks_infinite": peak,
            "capacity_clamped": clamped,
            "block_tokens": self.engine_params.block_size * self.w.params.token_scale,
            "output_tokens": sum(c.output_len for c in self.w.calls) * self.w.params.token_scale,  # trace tokens
        }
        if spec.policy == "infinite":
            row.update(self._infinite_run(spec.arrivals))
        else:
            row.update(self.run_at(spec.policy, blocks, spec.arrivals, progress))
        return row

    def run_at(self, policy_name: str, num_blocks: int, arrivals: ArrivalParams, progress: bool = False) -> dict:
        """:meth:`RunMetrics.summary` of ``policy_name`` with exactly ``num_blocks`` vLLM blocks
        (Belady's MIN of the run's sequence at ``num_blocks - 1``, the null block excluded)."""
        clock = ManualClock()
        ctx = replace(
            self.ctx,
            residency=replay_settings(self.cost, self.w.params.token_scale, self.residency),
            capacity_tokens=num_blocks * self.engine_params.block_size,
        )
        policy: Policy = build_policy(policy_name, ctx, clock)
        scheduler_cls = policy.scheduler_cls or self.scheduler_cls
        served = min(arrivals.concurrency, policy.max_sessions or arrivals.concurrency)
        metrics = RunMetrics(token_scale=self.w.params.token_scale, block_size=self.engine_params.block_size)
        tier = host_tier_for(
            policy_name, self.host_tier, num_blocks - 1, self.engine_params.block_size, self.w.params.token_scale, scheduler_cls
        )
        kv_transfer = tier.kv_transfer_config if tier is not None else None
        scheduler_cls = tier.scheduler_cls if tier is not None else scheduler_cls
        binding = None
        if policy.predictor is not None:
            guard = GuardConfig(enabled=policy.guarded, start=self.guard_start)
            binding = PolicyBinding(policy.predictor, clock, PoolConfig(guard=guard))
        engine = VllmEngine(num_blocks, self.max_model_len, self.engine_params, scheduler_cls, binding, kv_transfer)
        engine.transfers = tier.worker if tier is not None else None
        timer = _PoolTimer(engine.block_pool)
        driver = ClosedLoopDriver(
            self.w,
            self.synth,
            engine,
            self.cost,
            replace(arrivals, concurrency=served),
            metrics,
            clock,
            client_hints=policy.client_hints,
        )
        driver.run(progress=progress)
        metrics.policy_cpu_s = timer.seconds
        summary = metrics.summary(capacity_blocks=None if policy_name == "infinite" else num_blocks - 1)
        summary["residency_cpu_s"] = getattr(engine.scheduler, "residency_cpu_s", 0.0)
        summary["residency_steps"] = getattr(engine.scheduler, "residency_steps", 0)  # scheduler steps that planned
        summary["residency_reused"] = getattr(engine.scheduler, "residency_reused", 0)  # that held the last plan's sessions
        controller = getattr(engine.scheduler, "residency", None)
        summary["demotions"] = getattr(controller, "demotions", 0)
        summary["forced_admissions"] = getattr(controller, "forced", 0)
        summary["longest_admission_wait_s"] = getattr(controller, "longest_wait_s", 0.0)
        summary["residency_off"] = bool(getattr(engine.scheduler, "_residency_off", False))  # an error turned it off
        stats = getattr(engine.block_pool, "stats", None)
        summary["predictor_cpu_s"] = stats.scorer_seconds if stats is not None else 0.0
        summary["predictor_fallbacks"] = stats.total_fallbacks if stats is not None else 0
        summary["guard_switches"] = stats.guard_switches if stats is not None else 0
        summary.update(engine.transfers.summary() if engine.transfers is not None else TransferWorker.empty_summary())
        prefetch = getattr(engine.scheduler, "prefetch_stats", None) or PrefetchStats()
        summary.update({f"prefetch_{k}": v for k, v in asdict(prefetch).items()})
        return summary
