"""Which agent sessions keep their KV on the GPU: admission and demotion, from the session view.

Pure decision logic (no vLLM imports): :class:`ResidencyController` reads a
:class:`~cachewise.runtime.sessions.SessionView`, writes only the ``resident`` /
``demoted`` flags through it, and returns a :class:`Plan` the scheduler applies
(:mod:`cachewise.runtime.scheduler`).

Rule, evaluated at each plan (:meth:`ResidencyController.plan`; the scheduler plans when the requests
changed and every ``replan_s``, :class:`~cachewise.runtime.scheduler.ResidencyMixin`):

1. A session whose request is admitted becomes *resident*; it stays resident while it has
   live requests and, when idle, until it is demoted or idle past its forecast's expiry.
   Waiting requests of resident sessions are never held (with a host tier, see rule 6).
2. Non-resident sessions with waiting requests are considered in the *admission order*
   (``admission_order``): ``area`` (default) -- the smallest predicted KV *area* first, the
   session's working set times the seconds the export's remaining-work model predicts it still
   runs (:meth:`SessionView.remaining_of <cachewise.runtime.sessions.SessionView.remaining_of>`:
   at its last finished call; the model's new-session label before its first), then as
   ``smallest`` -- or ``smallest``, the smallest working set first, then first arrival, then
   key -- or ``fcfs``, *program-level FCFS* (first arrival of the session, then key); sessions
   past the starvation bound (rule 4) first in all; with a host tier, ``area`` and ``smallest``
   put rule 6's returning admitted sessions before new ones (measured: 541 ± 59 s against
   635 ± 97 without, FCFS 575 ± 78; README "Host tier"). Without a remaining-work model every
   area is 0 and ``area`` *is* ``smallest``. The head is admitted when
   ``Σ resident working sets + its working set <= budget`` (the step's *budget*, below). Otherwise
   idle resident sessions are *demoted* — best first, and only those whose demotion pays
   (below) — when, and only when, that makes the head fit; else the head and every later
   session wait (strict order: a later session never overtakes). *Preemption by area*
   (``preempt_area_ratio``, default 3; ``area`` only, not for a head past the starvation bound):
   when the demotions that pay cannot make the head fit, idle residents whose area is more than
   ``preempt_area_ratio`` times the head's are demoted too, largest first, as far as that makes it
   fit. An idle session of a far larger area holds its room for far longer than the head needs it;
   giving it to the head is shortest-remaining-first *with* preemption, which lowers mean completion
   time below the non-preemptive order, at the price of the preempted session's recompute and wait
   (it rejoins the queue at its own area when back). The ratio keeps it to clear cases: the areas
   are predictions. Measured (docs/results/residency.md "Preemption by predicted KV area", Claude Code held-out, closed
   loop, ten seeds): C=32 −63 ± 25 s at 25% capacity, +3 ± 10 s at 50%; C=64 −70 ± 21 / −19 ± 10 s
   at 25 / 50%, but +8 ± 6 s at 75% (a preempted session's recompute costs more than the room is
   worth where the demand exceeds the capacity by less); a ratio of 1 was +21 ± 16 s worse at C=32
   50% (five seeds). *Readmission while the prefix is cached* (``readmit_cached``, default 0.5):
   a held session whose waiting request finds at least that share of its prompt still in the GPU's
   prefix cache (the scheduler reads it at each plan: :meth:`ResidencyMixin._held_cached
   <cachewise.runtime.scheduler.ResidencyMixin._held_cached>`) goes before the other held sessions,
   after those past the starvation bound; not with a host tier (rule 6), where a held session's prefix
   is stored on the host and loaded back, not lost while it waits. Typically a demoted
   session back before the pool evicted its blocks: they are the first evicted while it waits, so
   every step it waits can cost its whole prefix, and readmitted now it costs nothing to recompute.
   Measured (docs/results/residency.md "Readmission while the prefix is cached"; Claude Code held-out, closed loop, ten
   seeds): before it, 95% of the recomputed prompt tokens at C=32 50% capacity were on returns of
   sessions held for readmission, and a third of those blocks were still cached when the session came
   back and were evicted while it waited. With it: C=32 −7 ± 5 s at 50% (better on nine seeds of ten;
   recomputed prompt tokens 1.71 M against 1.95 M per run) and −16 ± 16 s at 25%; C=64 −14 ± 13 s at
   25%, +2 ± 12 s at 50% (no measurable difference). Why the smallest area first: a
   session holds its working set for as long as it runs, so its area is the room-time it takes
   from the sessions behind it; admitting the smallest first finishes the most sessions per
   unit of room, as shortest-job-first does for one resource, and falls back to the smallest
   working set where the model has no opinion. Measured (README "Session residency", Claude
   Code held-out, closed loop, ten seeds; ``area`` − ``smallest``, same model): C=32 −12 ± 5 s at
   50% capacity, +2 ± 21 s at 25%; C=64 (a model trained on half the tasks, 87 held-out sessions)
   −18 ± 9 s at 50%, −32 ± 25 s at 25%. Ordering by the predicted remaining time alone (no
   working set) was better at C=32 50% (−18 ± 7 s) but worse at C=64 (+51 ± 40 s at 25%):
   where the model ranks poorly (Spearman 0.37 against 0.54) it throws away the packing, and
   the area keeps it. A new-session label by first-prompt length (four equal-count bins of the
   training sessions) made C=32 worse (25%: 741 s against 611 s): new sessions then overtook the
   returning ones. Why smallest first (``smallest``, and ``area``'s ties): it packs
   the room that the residents leave (a session that fits now is not held behind one that
   does not) and finishes short sessions first, as shortest-job-first does; the starvation
   bound keeps the large ones' wait bounded. Measured (README "Session residency", Claude Code
   held-out, C=32, ten seeds): against FCFS, mean JCT −149 ± 44 s at 25% capacity (better on
   every seed; p99 and makespan lower too) and −12 ± 23 s at 50%; on SWE-agent sessions, where
   FCFS holding lost to vLLM (+5 ± 2 s at 25%), +1 ± 4 s. The pool learns of a
   non-resident session's request only when its session is admitted (the scheduler withholds
   it from the arrival rule, :meth:`ResidencyMixin.withhold_arrival
   <cachewise.runtime.scheduler.ResidencyMixin.withhold_arrival>`), so a held session's prefix
   is not kept as a queued request's while it waits.
3. Shedding: sessions are admitted at their working set *of the moment*, and an agent's
   prompt grows several-fold over its session, so the resident sessions outgrow the cache
   (thrashing: every resident session's prefix is evicted while it waits on a tool, as if
   no controller ran). While a session waits and ``Σ resident working sets > budget``, idle
   resident sessions whose demotion pays are demoted, best first, until
   the rest fit (or none is left); a session with a live request is never demoted. While
   the resident working sets exceed the whole ``capacity``, keeping them all is not an option
   (the pool evicts blocks of resident sessions anyway, and they thrash), so idle resident
   sessions are demoted best first *whether or not their demotion pays* until the rest fit
   the capacity: the forecast then chooses who gives up room, instead of the eviction order
   of a thrashing cache -- whether or not a session waits (until session 10 this too waited
   for a waiting session: in a closed loop whose sessions were all admitted while they were
   small, the residents then outgrew the cache with no one waiting and nothing was shed;
   measured, Claude Code held-out, C=32, 75% capacity, seeds 0-2: 530 / 561 / 409 s mean JCT,
   `learned`'s own on seeds 0-1, against 361 / 402 / 409 s shedding; README "Session residency").
4. Starvation bound: a session whose oldest waiting request arrived ``max_wait_s`` ago,
   or that was held in ``max_passes`` steps, goes first and is admitted even if it does
   not fit (vLLM's own KV admission still applies). When no resident session has a live
   request, the head is admitted even if it does not fit (the engine never idles on the
   controller). Both are counted as *forced* admissions. The bound is checked once per
   scheduler step: a session is forced at the first step that starts at or after
   ``max_wait_s``, so its wait can pass the bound by up to one step (the replay once measured
   1,801 s against 1,800 s), and by more only where vLLM's own KV admission holds it back.

5. The guard's verdict (:attr:`SessionView.trusted <cachewise.runtime.sessions.SessionView.trusted>`:
   the GPU pool's online guard, :mod:`cachewise.runtime.guard`, serves the learned order; and,
   below, the forecast judge's): while neither trusts the model, the controller *passes through*: every waiting
   session is admitted (marked resident), nothing is held or demoted, so the step is vLLM's
   own ``schedule()`` on vLLM's own eviction order -- identical to vLLM's scheduling, not
   merely no-model forecasts, because holding itself is what can lose on traffic the model
   does not know (README, "Never worse than vLLM"). Each change is logged once and counted
   (:attr:`ResidencyController.passthrough_steps`).

   *Restoring.* When the guard (or the judge, below) trusts the model again, the resident sessions are the ones vLLM's
   scheduling admitted -- every session that arrived -- not ones the budget admitted. Measured
   (README, "Session residency": Claude Code held-out, C=32, 50% capacity, seed 2): the guard
   first trusted the model at t = 81 s, when all 48 sessions had started and were resident
   with working sets of 1.5x the capacity; no session was ever non-resident again, so rule 3
   (which then shed only while a session waited) never ran: 0 demotions, the residents grew to 3.4x
   the capacity, and the run was vLLM's scheduling with the learned eviction order to its end.
   So on resuming the controller is *restoring* until ``Σ resident working sets <= budget``: at
   every step, idle resident sessions are demoted best first (the
   order of rule 3), whether or not a session waits and whether or not their demotion pays;
   a session with a live request is not demoted, so while those alone exceed the budget
   restoring goes on and each is demoted at the first step it is idle. Once the residents
   fit, restoring ends and a demotion is again only for a session that waits (rules 2-3).

   *Thrashing* (``act_when_thrashing``, off by default). The guard judges eviction *orders* on the
   GPU pool, and pass-through admits every session: once their working sets outgrow the cache, every
   order misses and neither can show an advantage, so the guard may never trust the model and the
   controller that would end the thrash never acts. Measured (README, "Host tier", Claude Code
   held-out, C=32, 25% GPU, host 2x): the guard first trusted the model at 20-35 s in three seeds and
   at 1,626 / 1,705 s in two, whose runs were then vLLM's (857 / 896 s mean JCT against 513 / 512 s
   with this exception). With it, the first step at which, passing through, ``Σ resident working
   sets > capacity + host_blocks`` (the residents exceed both tiers: rule 3's premise, keeping them
   all is not an option) latches the controller onto the model for the rest of the run, restoring
   as above; the guard's verdict still decides the pool's eviction order and the host policy's.
   This gives up rule 5's "exactly vLLM's scheduling" from that step on.

   *The forecast judge* (``judge``, on by default; :mod:`cachewise.runtime.forecast_judge`). The
   controller also acts while the judge trusts the model's *return forecasts*: scored at every
   return of an idle session against the no-model forecast of the same call (quantile loss),
   they are evidence that a thrashing cache does not erase. It starts trusting
   (``judge_start_trusted``) and distrusts from the first return at which the model's forecasts are
   measurably worse. Why not start distrusting, as the guard does: passing through lets the cache
   thrash, and the thrash itself degrades the model's forecasts -- its inputs include the engine's
   latencies and the sessions' elapsed times, which a thrashing engine stretches. Measured (Claude
   Code held-out, C=32, 25% capacity, seed 0): starting distrusted, the model's forecasts scored
   measurably *worse* than the no-model ones over the first ~500 returns (mean loss difference
   +0.06 ± 0.02 at 100, +0.04 at 300) and better only once the controller acted (first trusted at
   t = 1,147 s); with the controller acting from the start they scored better throughout (−0.017 at
   192 returns, −0.035 to −0.049 from 300 on). While either verdict trusts, the controller acts on
   the model's forecasts (the guard's verdict still decides the pool's eviction order and the host
   policy's).

   *Reference forecasts* (``judge_fallback``, on by default). The judge's verdict compares two
   forecasts of the same returns, so while it distrusts the model (and the guard does too) the
   controller acts on the other one -- the no-model reference forecast the judge scored the model
   against (:meth:`ResidencyController.forecast_of`: for the cost rule and the expiry of rule 1; the
   model's where a session has none) -- instead of passing through (:attr:`on_reference
   <ResidencyController.on_reference>`; prefetch, which acts on the model's forecasts, pauses).
   Passing through is what the judge's distrust used to mean, and it let the cache thrash until a
   verdict trusted the model again: measured (Claude Code held-out, C=32, ten seeds, README "Session
   residency"), one seed in ten at 25% and one at 50% ran at 1.5-2x the others (1,186 and 907 s
   mean JCT: the judge left at its 33rd-38th return, t = 16-18 s, the first calls of the batch
   start, and the controller passed through until t = 1,381 and 858 s), which the reference
   forecasts avoid. The model's
   forecasts are still scored at every return while the reference is acted on -- now on a cache that
   does not thrash -- so the judge trusts the model again when they score better (measured: at its
   ~200th return, t = 85-123 s). While no verdict exists -- no judge, a predictor that reports no
   reference (the no-model policies), or no return scored yet -- and the guard distrusts, the step
   is vLLM's. With ``judge_fallback`` false the controller passes through whenever both distrust
   (session 9's rule).

   *Which forecasts* (``forecasts``, default ``reference``). While acting, rules 1-3 read the no-model
   reference forecasts whatever the verdict (:meth:`ResidencyController.forecast_of`; the model's
   where a session has none, e.g. with the judge off); the verdicts still decide acting against
   passing through, and the pool's eviction order and the prefetcher still use the model's.
   ``model`` acts on the model's forecasts while a verdict trusts them (sessions 9-10). Why: the
   judge's quantile loss, a mean over every return, favours the model, yet its decisions are worse.
   Measured (README "Session residency", Claude Code held-out, C=32, closed loop, ten seeds, decision
   logs of the replay): at 50% capacity ``model`` demotes 217 sessions per run, 174 of them back while
   demoted (a median 2.5 s after the demotion), ``reference`` 190 and 147 (2.0 s); the run recomputes
   2.04 M prompt tokens against 1.42 M (harmful evictions 7,968 against 5,533; the residents fill the
   same 0.88-0.89 of the capacity on the mean): ``reference`` is 17 ± 5 s faster in mean JCT, on
   every seed. At 25% −12 ± 27 s, 75% and 100% (three seeds) −12 ± 14 and +1 ± 3 s, with a host tier
   −12 ± 29 s, SWE-agent sessions −1 ± 1 s: no measurable difference. So the model's return forecasts
   do not pay in residency here, and against ``cachewise_nomodel`` (per-tool forecasts, per-tool
   eviction order) this controller, with the model's eviction order, shows no measurable difference
   either (−6 ± 22 s at 25%, −1 ± 7 s at 50%).

6. Host tier (``host_blocks`` > 0: vLLM's offloading connector runs the CacheWise CPU-tier
   policy on this view, :func:`~cachewise.runtime.cpu_policy.host_capacity_blocks`). Admission
   counts two sets: the *admitted* sessions (all resident ones) and those that *need the GPU
   now*: resident sessions with a request scheduled by vLLM (all their live requests counted),
   returning admitted sessions once they pass (below), and the sessions whose prefetch is in
   flight (``loading``). The head is admitted
   when ``Σ GPU-set working sets + its working set <= GPU budget`` *and*
   ``Σ admitted working sets + its working set <= admitted budget`` (the budget of GPU +
   host: the reserve below, computed with ``capacity + host_blocks`` and the admitted set);
   rules 2-4 apply unchanged to the admitted set against that second budget (demotion makes
   room in it; shedding starts past it and, regardless of pay, past ``capacity +
   host_blocks``). Idle resident sessions are in the admitted set but not in the GPU set: the
   ones beyond the GPU room live on the host -- vLLM's connector stored their blocks as they
   were computed, and the GPU pool's learned order evicts idle sessions' blocks, predicted
   back last first, when live requests need the room -- and the prefetcher
   (:mod:`cachewise.runtime.prefetch`) loads them back before their predicted return. A
   demotion (leaving the admitted set) still costs what the cost rule below says, with the
   recompute priced as a host reload. A session whose head fails only the GPU check waits:
   demoting idle sessions frees no GPU room the live ones need. An admitted session that comes
   back (live, none of its requests scheduled yet) needs GPU room too: it takes its place in
   the FCFS order of rule 2 and passes when ``Σ GPU set + its working set <= capacity`` (it
   is admitted already; the headroom, kept for the growth of new admissions, is its to use)
   -- otherwise the admitted set, up to GPU + host, would crowd into the GPU at once and the
   pool would evict running sessions' prefixes (measured: 795 s mean JCT instead of 543 s at
   25% GPU; with the budget instead of the capacity here, 543 s instead of 502 s).
   Invariants: after a plan, unless a session was forced (rule 4) or the controller stands aside
   (below), ``plan.gpu <= capacity``
   whenever it held before the plan (only live sessions' growth raises it) and
   ``plan.used <= `` the step's admitted budget whenever some session waited (rule 3);
   ``plan.gpu <= plan.used`` (every GPU-set session is admitted). With ``host_blocks`` 0 (no
   tier) the GPU check is implied by the admitted one (the GPU set is a subset of the admitted
   set) and both budgets are the GPU's, so the rule *is* rules 1-5: the same plans, step for step.

*The budget* of a step is ``capacity - reserve``, ``reserve = min(headroom * capacity, max(demand -
capacity, 0))``, with ``demand`` the working sets of the resident sessions and of the waiting ones,
taken at the step's start (:meth:`ResidencyController.reserve`; with a host tier, the admitted budget
is ``capacity + host_blocks`` less the reserve against that, the GPU budget ``capacity`` less the
reserve against the capacity, both from the same demand). The headroom is
room kept for the residents' growth that a waiting session would otherwise take; while everyone who
wants the GPU fits, no one is held for it, and it grows to the whole ``headroom`` only once the
demand exceeds the capacity by that much. Measured (README "Session residency", Claude Code
held-out, closed loop, ten seeds): with a fixed ``(1 - headroom) * capacity``, C=64 at 100%
capacity ran 19 ± 5 s (3.6%) slower than ``learned`` (vLLM's scheduler with the learned eviction
order: the sessions fit, and the fixed headroom held some of them at the peak); with the reserve,
4 ± 3 s (0.8%); C=32 at 100% −1 ± 3 s against the fixed budget, at 75% −6 ± 4 s (five seeds), at 25%
and 50% (C=32 and C=64) no measurable difference (the demand exceeds the capacity by more than the
headroom there for most of a run). ``headroom`` 0, the other way to end the 100%
harm, was 26 ± 24 s slower at C=64 50% (five seeds). The prefetcher's room check keeps the fixed
budgets (the conservative ones).

*Standing aside* (``thrash_share``, default 0.1; ``None``: never). Until memory proves short, every plan
admits every waiting session and demotes no one -- vLLM's admission, on the pool's eviction order --
whatever the working sets add up to. Memory proves short (:attr:`ResidencyController.short`: the
engine's one latched test, the view's ``shortage``, :mod:`cachewise.runtime.memory_shortage`, which
the GPU pool's guard reads too; its share is this setting, set on the view by the residency
scheduler; until latched each step tests it, summing the live sessions' present KV,
:meth:`SessionView.live_blocks <cachewise.runtime.sessions.SessionView.live_blocks>`, unless the
recompute criterion already holds) at the first step at which either

* the sessions with live requests hold or need more blocks than the capacity (their present KV: the
  working sets without the predicted growth) -- they cannot all be on the GPU at once, whatever the
  eviction order; or
* the engine has *recomputed* more than ``thrash_share`` of the blocks it prefilled, and of the
  capacity, both summed with a half-life of one capacity of prefilled blocks: of each returning
  request's prompt, the full blocks its thread held after its last call that its first schedule did
  not find cached (:meth:`SessionView.on_scheduled <cachewise.runtime.sessions.SessionView.on_scheduled>`,
  from vLLM's ``num_computed_tokens``).

Why: the working sets are forecasts (latest prompt plus the last growth) of sessions that are mostly
idle, and where memory suffices their sum passes the capacity while the pool, evicting idle sessions'
tails as vLLM does, recomputes almost nothing; holding and shedding there only cost (the held session's
wait, the shed one's recompute). Recompute is the cost this controller exists to remove, and live
requests that do not fit are thrashing by definition, so either is the evidence that acting can pay.
Measured (Claude Code held-out, closed loop, ten seeds, against the same rule acting from the start;
docs/results/residency.md "Standing aside until memory proves short"): C=64 at 100% capacity, where the
controller demoted 84 sessions a run and held some for up to 33 s (p99 +11.1 ± 3.2 s above LRU's), it
stands aside the whole run: mean and p99 equal to LRU's and ``learned``'s on every seed (seed 0: the
admitted sessions' present KV reached 1.4x the capacity, the live requests' 0.93x, the recomputed share
of the prefill stayed under 0.1). C=32 and C=64 at 25-50%: the live requests exceed the capacity at t = 0,
identical runs on every seed. At 75%: +1.2 ± 4.7 s (C=32) and +6.4 ± 7.9 s (C=64), no measurable
difference (short at t = 148 s on C=32 seed 0, the pressure starting at ~120 s). The recompute
criterion alone cost 17 ± 7 s at C=64 50% (short at t = 77 s on C=32 50% seed 1): the live one is what
ends standing aside at once under a batch. ``thrash_share`` 0.5 latched at t = 197 s on C=32 75% seed 0
(+13 s on that seed); 0.2 was chosen on that seed (0.1: t = 145 s, no better); the recomputed share is
0.9 of the prefill under vLLM at 75%, 0.03 at 100%. The default became 0.1 in session 23, for the guard's
preview, which enters on the same latch (docs/results/guard.md "The preview once memory proves short,
shipped"): against 0.2, ten seeds, C=32 25-50% identical runs, 75% +0.4 ± 4.9 s, 100% +0.04 ± 0.09 s (seed
8 latched on recompute, 402 of 3,159 blocks prefilled: +0.4 s mean, +2.7 s p99 above LRU's; the other nine
LRU's), C=64 75% −7.0 ± 6.6 s, 100% identical; Poisson at 100% (seeds 0-2) C=32 ρ 1.0 LRU's, C=64 ρ 0.8
+0.3 ± 1.4 s (seed 2, the guard's one switch, as with 0.2). Standing aside on the admitted sessions' KV instead
(their working sets within 5% of the capacity) was +15 ± 5 s at C=32 75%, every seed.

Cost trade-off for demoting an idle resident session ``j`` with ``W_j`` blocks, idle ``e``
seconds, return forecast ``F_j`` (quantiles of its gap, read as a piecewise-linear quantile
function; remaining gap ``R_j`` = the gap minus ``e`` given it exceeds ``e``; no forecast:
``R_j = overdue_remaining(e)``, the one overdue rule of :mod:`cachewise.scoring.overdue`), while a
session waits for room. Demoting j now admits the waiting session now; if j is back while
demoted, ``R_j <= H``, j pays

    D_j(r) = Q + S * lost_j(r)    # its readmission wait, its recompute (stalling the engine)
    lost_j(r) = c(W_j) - c(W_j - m_j(r)),   m_j(r) = min(max(eps * r + N - A, 0), W_j)

with ``H = horizon_s`` and ``c(n tokens) = a0 + a_tok n + a_ctx n^2 / 2`` the measured prefill
cost model (no cached context; blocks count ``block_tokens`` tokens each). ``S`` counts what the
engine serves now: the requests running, those of resident sessions waiting for it, and the idle
resident sessions (j among them): see "A busy engine" below.

*Deferring* (the decision rule). Keeping j is not a decision for its whole idle time: the
rule runs again at every step, and j can be demoted later, ``τ`` seconds from now, if it is still
idle then. Compare demoting now with keeping j for ``τ`` and demoting it then. Keeping holds
the waiting session out of j's room until j is back or ``τ`` has passed, ``min(R_j, τ)`` seconds
(once j is back its room is in use by j either way); in return, j pays ``D_j`` only if it is
back after ``τ``. So demoting now costs, against deferring by ``τ``,

    E[1{R_j <= τ} D_j(R_j)] - E[min(R_j, τ)]    = drop_j(τ) - keep_j(τ)

and demoting now is the better choice iff no deferral is better: ``keep_j(τ) > drop_j(τ)`` for
*every* deferral ``τ <= H``. ``τ = H`` alone is the rule of session 7 (``E[min(R, H)]``
against ``E[1{R <= H} D]``), which a forecast's tail decides: a session back in 1-3 s with
probability 0.5 and gone for good otherwise has ``E[min(R, H)] ≈ H / 2`` against ``D / 2`` --
any return cost ``D`` under ``H`` "paid" -- though waiting 3 s would have saved ``D`` half of
the time at the cost of at most 3 s of one session's wait (measured at 50% capacity, session 7:
the keep term's median was 25 s for a median remaining gap of 3.4 s; 91% of the demoted
sessions came back, half within 1.3 s, and recomputed). Taking the least ``keep - drop`` over ``τ`` uses the forecast's CDF
``P(R <= τ)`` where it is steep: a session likely back soon is kept while that is likely;
once the short gaps have passed without a return, the conditioned forecast is the tail and the
same rule demotes it. The expectations are means over :data:`RETURN_POINTS` equal-mass
points of ``R_j`` (:meth:`~cachewise.runtime.sessions.Forecast.remaining_points`; one point per
5% of probability, the stored forecast's resolution), and the deferrals ``τ`` are those points
``<= H`` and ``H``: between two points ``keep - drop`` only grows (deferrals shorter than the
first point, the forecast's first 5%, are below its resolution) (:func:`deferral_keep_and_drop`). The
demotion's score ``keep_j(τ*) - drop_j(τ*)`` at the least ``τ*`` ranks candidates; a
session that has ended (``R = inf``) scores ``H``, the most.

*What a demotion loses.* Demoting j does not evict its blocks, it makes them the pool's first
evicted (:meth:`ScoredBlockPool.demote <cachewise.runtime.block_pool.ScoredBlockPool.demote>`:
"never reused, expired now" in :mod:`cachewise.runtime.eviction_order`, which evicts cached
blocks earliest expiry first, a chain deepest block first). They are lost only as far as the
pool evicts cached blocks before j is back. A block demoted now waits behind ``A`` cached
blocks: the free blocks already in the demoted state
(:attr:`EvictionOrder.demoted_free <cachewise.runtime.eviction_order.EvictionOrder.demoted_free>`).
The pool evicts ``eps`` cached blocks per second: its eviction count over the last
``pressure_window_s`` seconds (``ScoredBlockPool.eviction_pressure``, read live through
:attr:`SessionView.pressure <cachewise.runtime.sessions.SessionView.pressure>`). Taking the
recent rate as the rate of the next ``r`` seconds (a fluid approximation), ``eps r`` blocks
are evicted by then, so ``m_j(r)`` of j's blocks, its tail: recomputing a tail of ``m`` blocks
behind a cached prefix of ``W - m`` costs ``c(W) - c(W - m)`` (exact under the cost model:
``a_tok m + a_ctx m (2W - m) / 2``, plus ``a0`` when nothing is left). So the eviction chance
is the forecast's mass beyond ``(A - N) / eps`` (nil while the pool evicts nothing and ``N <= A``), and
the whole recompute is charged only to returns later than ``(A - N + W_j) / eps``
(:meth:`ResidencyController.return_costs`).
``N`` is the admission the demotion makes room for: the working set of the waiting session it is
for (rule 2: the session being admitted; rule 3: the FCFS head; 0 when restoring admits nobody).
That session's prompt is allocated at once, in the steps after the demotion, from the free
blocks -- the demoted ones first -- not at the past rate ``eps``: a demotion that makes room
for ``N`` blocks with only ``A < N`` demoted blocks ahead loses ``N - A`` of its tail whenever
the session returns (measured without ``N``, Claude Code held-out, C=32, 25% capacity, seed 0:
the rule priced the median demotion's loss at 0.87 s while 210 of its 237 paying demotions
came back, the run recomputed 6.3 M of its 7.8 M prefill tokens, and without the ``Q`` term
below it demoted 830 sessions and recomputed 21 M; README "Session residency"). Without a pool reader (a
pool that is not a ``ScoredBlockPool``: demotion reorders nothing) ``m_j = W_j``: every return
recomputes the whole working set. The estimate errs toward keeping: ``A`` leaves out the
blocks also evicted before j's (unhashed free blocks, expired predictions) and, for a step's
second and later demotions, the blocks demoted earlier in the same step (each candidate is
priced as if it alone took the whole ``N``, and ``N`` counts also what of the session's prompt is
still cached); ``W_j`` counts the
prefix j shares with other sessions, whose blocks are not demoted.

*What a demotion delays.* ``Q`` is the admission wait j meets when it is back, no longer
resident, whether or not its blocks survived: the mean admission wait of the last
:data:`QUEUE_WINDOW` admissions of *returning* sessions (sessions that finished a call before:
the "queueing delay induced by eviction" of Continuum, measured, not assumed). New sessions'
waits are left out: program-level FCFS puts a returning session ahead of every session that
started after it, so the waits of newly started sessions, which queue behind all of them,
are not what a demoted session meets.

*A busy engine.* Both sides are priced on the one engine that runs every session. A recompute is
prefill work that delays whatever the engine serves until it is done: the requests running, the
resident sessions' requests queued for the engine and the idle resident sessions, which come back
to it -- ``S`` in ``D_j``, j among them (until session 14 ``1 + n_run``, the batch alone). Held
sessions are not counted: they wait for room, which a recompute does not change (counting them was
measured worse where many are held: C=64, 25% capacity, +25 s against +13 s over five seeds).
And a held session's wait is not all lost: while it waits the engine runs the others, and one more
session in a decode batch gains the engine only the share of the step it amortises, ``w = b0 / (b0 +
b_seq n + b_ctx T)`` under the measured decode model (``n`` requests running, ``T`` tokens of the live
resident sessions' working sets; ``w`` = 1 with nothing running: an idle engine gains a whole session);
the rest of the admitted session's progress is the slowdown of the others, whose decode steps it
lengthens by its context. So ``keep_j(τ) = w E[min(R_j, τ)]`` (:meth:`ResidencyController.observe_batch`,
once per step). Measured (docs/results/residency.md "A busy engine"; Claude Code held-out, C=32, 50% capacity, seed 0, on a
patch with ``w`` alone, before ``S`` below) ``w`` was 0.49-0.71 (10th-90th percentile of the steps that
plan, median 0.57) on the H200 coefficients. The rule's loss estimate was not the part that erred: logged
demotion by demotion (the rule before ``w`` and ``S``, same seed), it predicted 0.46 of a returning demoted
session's working set lost and 0.24 was (0.31 by its readmission).

Candidates are taken in decreasing ``keep_j(τ*) - drop_j(τ*)``. The whole distribution is used: a
session predicted back in 2 s with a 10% chance of a 10-minute test run is kept while its 2 s
are likely (``τ`` of a few seconds: ``P(R <= τ) D_j`` against at most ``τ``), and demoted once
they have passed; one whose turn ended (the model predicts a long gap) scores ``≈ H`` with
``P(back) ≈ 0``.

Complexity per step: O(S (log S + RETURN_POINTS)) in the sessions known to the view plus
O(sum of live requests); memory O(sessions + pressure samples of one window) (pass counts
are dropped when a session is admitted; one pressure sample per step, those older than the
window dropped but the newest of them).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cachewise.runtime.config import ResidencySettings
from cachewise.runtime.sessions import Forecast, SessionState, SessionView
from cachewise.scoring.overdue import overdue_remaining


logger = logging.getLogger("vllm.cachewise")

QUEUE_WINDOW = 32
"""Admissions of returning sessions over which the queueing delay ``Q`` of the cost rule is averaged."""

RETURN_POINTS = 20
"""Equal-mass points of a forecast's remaining gap over which ``E[lost_j]`` is averaged (one per
5% of probability, the stored forecast's resolution: :data:`~cachewise.runtime.sessions.FORECAST_LEVELS`)."""


@dataclass
class Plan:
    """One step's decision: sessions whose waiting requests may run, and those demoted now."""

    admitted: set[str] = field(default_factory=set)
    held: list[str] = field(default_factory=list)  # in the admission order (rule 2)
    demoted: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)  # admitted by the starvation bound or to avoid idling
    used: float = 0.0  # Σ working sets of the resident (admitted) sessions after this plan (blocks)
    gpu: float = 0.0  # Σ working sets of the sessions that need the GPU now: live ones, prefetches in flight (rule 6)


def area(view: SessionView, key: str, blocks: float) -> float:
    """A session's predicted KV area (rule 2): ``blocks`` x the seconds the remaining-work model predicts it
    still runs (0 for every session without that model). O(1)."""
    return blocks * math.expm1(view.remaining_of(key))


def threshold_blocks(share: float, blocks: int) -> int:
    """The fewest ``n`` in ``0..blocks`` with ``n / blocks >= share`` under float division (``blocks + 1``
    if none), so that ``c / blocks >= share`` iff ``c >= n`` for every count ``c`` (division by a
    positive number is monotone): a prefix lookup for rule 2's verdict may stop after ``n`` blocks. O(1)."""
    n = min(max(math.ceil(share * blocks), 0), blocks + 1)
    while n > 0 and (n - 1) / blocks >= share:
        n -= 1
    while n <= blocks and n / blocks < share:
        n += 1
    return n


def prefill_seconds(settings: ResidencySettings, tokens: int) -> float:
    """Recompute time of ``tokens`` tokens from scratch under the settings' cost model."""
    if tokens <= 0:
        return 0.0
    return settings.prefill_a0 + settings.prefill_a_tok * tokens + settings.prefill_a_ctx * tokens * tokens / 2


def deferral_keep_and_drop(
    points: list[float], costs: list[float], horizon: float, weight: float = 1.0
) -> tuple[float, float]:
    """``(keep(τ*), drop(τ*))`` with ``keep(τ) = weight E[min(R, τ)]``, ``drop(τ) = E[1{R <= τ} D(R)]`` and
    ``τ*`` the deferral minimising ``keep(τ) - drop(τ)`` among the points ``<= horizon`` and ``horizon``
    (module doc, "Deferring" and "A busy engine"), for a remaining gap ``R`` given as equal-mass ``points``
    (non-decreasing) with costs ``D`` at them. O(len(points))."""
    k = len(points)
    passed = 0  # points <= horizon seen so far
    below = cost = 0.0  # Σ r and Σ D(r) over them
    best = (math.inf, 0.0, 0.0)  # (keep - drop, keep, drop)
    for r, d in zip(points, costs):
        if r > horizon:
            break
        passed += 1
        below += r
        cost += d
        keep, drop = weight * (below + r * (k - passed)) / k, cost / k
        best = min(best, (keep - drop, keep, drop))
    keep = weight * (below + horizon * (k - passed)) / k
    best = min(best, (keep - cost / k, keep, cost / k))
    return best[1], best[2]


class ResidencyController:
    """Admission and demotion over a :class:`SessionView` (module doc).

    ``capacity_blocks``: KV blocks of the GPU pool; ``block_tokens``: tokens per block (for
    the cost model; pass trace tokens per block when blocks stand for scaled tokens);
    ``host_blocks``: the host tier's capacity in GPU blocks (rule 6; 0: no tier).
    """

    def __init__(
        self,
        settings: ResidencySettings,
        capacity_blocks: int,
        block_tokens: int,
        recompute_s: Callable[[int], float] | None = None,
        host_blocks: int = 0,
    ) -> None:
        if capacity_blocks < 1 or block_tokens < 1 or host_blocks < 0:
            raise ValueError("capacity_blocks and block_tokens must be >= 1, host_blocks >= 0")
        self.settings = settings
        self.capacity = capacity_blocks
        self.budget = (1.0 - settings.headroom) * capacity_blocks  # the GPU set's budget with the whole reserve (the prefetcher's check)
        self.host_blocks = host_blocks
        self.admitted_capacity = capacity_blocks + host_blocks
        self.admitted_budget = self.budget + host_blocks  # the admitted set's, likewise (rule 6; no tier: = budget)
        self.block_tokens = block_tokens
        self._recompute = recompute_s or (lambda tokens: prefill_seconds(settings, tokens))
        self._passes: dict[str, int] = {}
        self.demotions = 0
        self.forced = 0
        self.longest_wait_s = 0.0
        self._recent_waits: deque[float] = deque(maxlen=QUEUE_WINDOW)
        self._pressure_samples: deque[tuple[float, int]] = deque()  # (time, evictions so far), one per step
        self.eviction_rate = 0.0  # eps: cached blocks evicted per second over the last pressure window
        self.wait_weight = 1.0  # w: the engine's gain from one more session in its batch, b0 / step (module doc)
        self.served = 0  # S of the last plan: requests running or queued and idle resident sessions (module doc)
        self.demoted_ahead: float | None = None  # A: demoted free blocks now; None: no pool reader (m_j = W_j)
        self.following_model = True  # acts on the model's forecasts (rule 5)
        self.on_reference = False  # acts on the no-model reference forecasts: the judge distrusts the model (rule 5)
        self.passthrough_steps = 0
        self.restoring = False  # resumed from pass-through, the residents not yet within the budget (rule 5)
        self.thrash_latched = False  # rule 5's thrashing exception latched: acts on the model whatever the guard says
        self.short = settings.thrash_share is None  # memory has proved short (the view's latch): no longer standing aside

    @property
    def queueing_delay_s(self) -> float:
        """``Q``: mean admission wait of the last :data:`QUEUE_WINDOW` admissions of returning sessions (0 before any)."""
        waits = self._recent_waits
        return sum(waits) / len(waits) if waits else 0.0

    def observe_pressure(self, view: SessionView, now: float) -> None:
        """Read the pool's eviction pressure (module doc): ``A`` now and ``eps`` over the last
        ``pressure_window_s`` (from the newest sample at least that old, or the oldest kept). O(1) amortised."""
        pressure = view.pressure
        if pressure is None:
            self.demoted_ahead, self.eviction_rate = None, 0.0
            return
        evicted, ahead = pressure
        self.demoted_ahead = float(ahead)
        samples = self._pressure_samples
        samples.append((now, evicted))
        start = now - self.settings.pressure_window_s
        while len(samples) > 2 and samples[1][0] <= start:
            samples.popleft()
        t0, e0 = samples[0]
        self.eviction_rate = (evicted - e0) / (now - t0) if now > t0 else 0.0

    def observe_batch(self, running: int, context_blocks: float) -> None:
        """Read the batch's decode step (module doc, "A busy engine"): ``w = b0 / (b0 + b_seq n + b_ctx T)``
        for ``running`` sequences holding ``context_blocks`` blocks; 1 with nothing running or a zero step
        model (the engine gains a whole session). O(1)."""
        s = self.settings
        step = s.decode_b0 + s.decode_b_seq * running + s.decode_b_ctx * context_blocks * self.block_tokens
        self.wait_weight = s.decode_b0 / step if running and step > 0 else 1.0

    def lost_s(self, blocks: float, gap: float, ahead: float) -> float:
        """``lost_j(gap)``: recompute seconds of the tail of ``blocks`` evicted ``gap`` s after a
        demotion behind ``ahead`` blocks, at the last observed eviction rate (module doc)."""
        lost = min(max(self.eviction_rate * gap - ahead, 0.0), blocks)
        if lost <= 0.0:
            return 0.0
        tokens = int(blocks * self.block_tokens)
        return self._recompute(tokens) - self._recompute(tokens - int(lost * self.block_tokens))

    def return_costs(
        self, blocks: float, points: list[float], served: int, incoming: float = 0.0
    ) -> list[float]:
        """``D_j(r)`` of the module doc at each remaining gap ``r`` in ``points``: what j pays if it is back
        ``r`` s after a demotion that makes room for ``incoming`` blocks, its readmission wait ``Q`` plus its
        recompute, which stalls the ``served`` requests and idle resident sessions (j among them, at least 1);
        0 beyond the horizon ``H`` (no return within it is charged). O(len(points))."""
        h = self.settings.horizon_s
        ahead = None if self.demoted_ahead is None else self.demoted_ahead - incoming
        if ahead is None:  # no pool reader: every return recomputes the whole working set
            whole = self._recompute(int(blocks * self.block_tokens))
            lost = [whole] * len(points)
        elif self.eviction_rate * h <= ahead:
            lost = [0.0] * len(points)  # nothing of j's is evicted within the horizon
        else:
            lost = [self.lost_s(blocks, r, ahead) if r <= h else 0.0 for r in points]
        q = self.queueing_delay_s
        stalled = max(served, 1)
        return [q + stalled * x if r <= h else 0.0 for r, x in zip(points, lost)]

    def keep_and_drop(
        self, state: SessionState, blocks: float, now: float, served: int, incoming: float = 0.0
    ) -> tuple[float, float]:
        """``(keep_j(τ*), drop_j(τ*))`` of the module doc for idle session ``state`` holding ``blocks``, with
        ``served`` = ``S`` of the module doc (requests running or queued, idle residents): the deferral
        ``τ*`` (a point of the forecast ``<= H``, or ``H``) that argues most for keeping j; j's demotion pays
        iff ``keep > drop``. Priced under the pressure last read by :meth:`observe_pressure` (none read: every
        return recomputes all) and the batch last read by :meth:`observe_batch` (none: ``w`` = 1), for an
        admission that allocates ``incoming`` blocks at once (``N``: they are taken ahead of the fluid rate,
        the demoted blocks first). O(RETURN_POINTS)."""
        assert state.idle_since is not None
        elapsed = now - state.idle_since
        forecast = self.forecast_of(state)
        if forecast is None:
            points = [overdue_remaining(elapsed)]
        else:
            points = forecast.remaining_points(elapsed, RETURN_POINTS)
        costs = self.return_costs(blocks, points, served, incoming)
        return deferral_keep_and_drop(points, costs, self.settings.horizon_s, self.wait_weight)

    def plan(
        self,
        view: SessionView,
        now: float,
        running: int,
        loading: Collection[str] = (),
        cached: Mapping[str, float] | None = None,
    ) -> Plan:
        """Decide this step's admissions and demotions; updates the view's residency flags.
        ``loading``: sessions whose prefetch is in flight (rule 6; they need the GPU now); ``cached``:
        per held session, the share of its waiting request's prompt the GPU's prefix cache holds now (rule 2)."""
        plan = Plan()
        for state in view:  # idle past the forecast's expiry: no longer resident
            if state.resident and not state.live and self._expired(state, now):
                view.set_residency(state.key, False)
        for key in view.forget(now):
            self._passes.pop(key, None)
        model = view.trusted or view.forecasts_trusted or self._thrashing(view)
        reference = not model and self.settings.judge_fallback and view.reference_preferred
        if (model, reference) != (self.following_model, self.on_reference):
            if not self.acting:
                self.restoring = True  # resumed: the residents are what vLLM's scheduling admitted, not the budget
            elif not (model or reference):
                self.restoring = False
            self.following_model, self.on_reference = model, reference
            logger.info(
                "CacheWise residency: %s",
                "the model's return forecasts score worse than the no-model ones: admission and demotion act on the no-model forecasts"
                if reference
                else "the guard serves vLLM's order: passing every request through as vLLM's scheduler (no hold, no demotion)"
                if not model
                else "the guard trusts the model: admission and demotion act on its forecasts"
                if view.trusted
                else "the model's return forecasts score better than the no-model ones: admission and demotion act on them"
                if view.forecasts_trusted
                else "passing through let the residents outgrow GPU + host: admission and demotion act on the model from now on",
            )
        if not self.acting:
            self.passthrough_steps += 1
            for state in view:  # rule 5: vLLM's scheduling; what it admits counts as resident
                if state.waiting:
                    view.set_residency(state.key, True)
                    plan.admitted.add(state.key)
                    self._passes.pop(state.key, None)
            return plan
        self.observe_pressure(view, now)
        capacity = self.admitted_capacity  # the admitted set's (rule 6; no tier: the GPU's)
        used = 0.0  # admitted set
        gpu = 0.0  # GPU set (rule 6)
        active = False
        served = running  # S: requests running or queued for the engine, and idle resident sessions (a recompute stalls them all)
        idle: list[tuple[SessionState, float]] = []
        waiting: list[SessionState] = []
        needs: dict[str, float] = {}  # the waiting sessions' working sets
        for state in view:
            served += (len(state.waiting) + (not state.live)) if state.resident else 0
            if state.resident:
                blocks = view.working_set(state.key)
                used += blocks
                if self.host_blocks and state.live and state.waiting == state.live:
                    waiting.append(state)  # rule 6: admitted, back, nothing of it on the GPU yet
                    needs[state.key] = blocks
                elif state.live:
                    active = True
                    gpu += blocks
                    if state.waiting:
                        plan.admitted.add(state.key)
                elif state.key in loading:  # its prefetch is in flight: it needs the GPU, it is no candidate
                    gpu += blocks
                else:
                    idle.append((state, blocks))
            elif state.waiting:
                waiting.append(state)
                needs[state.key] = view.working_set(state.key)
        self.observe_batch(running, gpu)
        self.served = served
        demand = used + sum(needs[s.key] for s in waiting if not s.resident)
        budget = capacity - self.reserve(demand, capacity)
        gpu_budget = self.capacity - self.reserve(demand, self.capacity)
        if not self.short:
            self.short = view.shortage.check(view.live_blocks, self.capacity, "residency controller", self.settings.thrash_share)
        aside = not self.short  # "Standing aside" (module doc): vLLM's admission, no demotion
        waited = {}
        for s in waiting:
            since = view.waiting_since(s.key)
            waited[s.key] = 0.0 if since is None else now - since
        order = self.settings.admission_order
        smallest = order != "fcfs"  # "area" breaks its ties smallest first

        by_area = order == "area"
        readmit, cached = self.readmit_cached, cached or {}

        def rank(s: SessionState) -> tuple:
            blocks = needs[s.key] if smallest else 0.0
            return (
                not self._aged(s.key, waited[s.key]),
                smallest and not s.resident,  # rule 6's returning admitted sessions before new ones
                not (readmit and cached.get(s.key, 0.0) >= readmit),  # prefix still cached: readmitted first
                area(view, s.key, blocks) if by_area else 0.0,
                blocks,
                s.first_arrival,
                s.key,
            )

        waiting.sort(key=rank)
        candidates: list[tuple[float, SessionState, float]] | None = None
        restoring = self.restoring and used > budget
        if not aside and (waiting or restoring or used > capacity) and used > budget:  # rule 3 (and rule 5's restoring; rule 6: the admitted budget)
            head = needs[waiting[0].key] if waiting else 0.0  # restoring alone admits nothing
            ranked = self._candidates(idle, now, served, head)
            while ranked and (used > capacity or restoring or (waiting and used > budget and ranked[0][0] > 0)):
                _, cand, blocks = ranked.pop(0)
                self._demote(view, cand.key, plan)
                used -= blocks
                restoring = restoring and used > budget
            candidates = [c for c in ranked if c[0] > 0]
        self.restoring = self.restoring and used > budget
        blocked = False
        for state in waiting:
            key, admitted = state.key, state.resident  # admitted: rule 6's returning admitted session
            need = needs[key]
            if not blocked:
                aged = self._aged(key, waited[key])
                # a returning admitted session may use the headroom, kept for new admissions' growth;
                # without a tier no session is both admitted and waiting here, and this is implied by the admitted check
                gpu_fits = gpu + need <= (self.capacity if admitted else gpu_budget)
                fits = aside or (gpu_fits and (admitted or used + need <= budget))
                if gpu_fits and not fits:
                    if candidates is None:
                        candidates = [c for c in self._candidates(idle, now, served, need) if c[0] > 0]
                    pool = candidates
                    ratio = self.settings.preempt_area_ratio
                    if ratio and by_area and not aged:  # rule 2's preemption: idle residents of a far larger area
                        floor, listed = ratio * area(view, key, need), {id(p[1]) for p in candidates}
                        sized = ((area(view, c.key, blocks), c, blocks) for c, blocks in idle if c.resident and id(c) not in listed)
                        larger = [c for c in sized if c[0] > floor]
                        pool = candidates + sorted(larger, key=lambda c: (-c[0], c[1].first_arrival, c[1].key))
                    freed, chosen = 0.0, []
                    for _, cand, blocks in pool:
                        if used - freed + need <= budget:
                            break
                        freed += blocks
                        chosen.append(cand)
                    if used - freed + need <= budget:
                        for cand in chosen:
                            self._demote(view, cand.key, plan)
                        gone = {id(c) for c in chosen}
                        candidates = [c for c in candidates if id(c[1]) not in gone]
                        used -= freed
                        fits = True
                if fits or aged or not active:
                    if not fits:
                        plan.forced.append(key)
                        self.forced += 1
                    if not admitted:
                        view.set_residency(key, True)
                        used += need
                    plan.admitted.add(key)
                    gpu += need
                    active = True
                    self._passes.pop(key, None)
                    self.longest_wait_s = max(self.longest_wait_s, waited[key])
                    if state.finished_calls and not admitted:  # a returning session: its wait is what a demoted one meets (Q)
                        self._recent_waits.append(waited[key])
                    continue
                blocked = True
            plan.held.append(key)
            self._passes[key] = self._passes.get(key, 0) + 1
        plan.used, plan.gpu = used, gpu
        return plan

    @property
    def readmit_cached(self) -> float:
        """Rule 2's ``readmit_cached`` in force: the setting, 0 with a host tier (a held session's prefix
        is stored there, not lost while it waits). O(1)."""
        return 0.0 if self.host_blocks else self.settings.readmit_cached

    def reserve(self, demand: float, capacity: float) -> float:
        """Blocks of ``capacity`` kept free of resident working sets this step: the ``headroom``, but no more
        than ``demand`` (the residents' and the waiting sessions' working sets) exceeds ``capacity``. O(1)."""
        return min(max(demand - capacity, 0.0), self.capacity - self.budget)

    @property
    def acting(self) -> bool:
        """Whether the controller admits and demotes (on the model's or the reference forecasts), not passing through."""
        return self.following_model or self.on_reference

    def forecast_of(self, state: SessionState) -> Forecast | None:
        """The forecast the controller acts on for ``state``: the no-model reference while acting on it
        (rule 5) or always with ``forecasts`` ``reference`` (the model's where a session has none), else
        the model's. O(1)."""
        if (self.on_reference or self.settings.forecasts == "reference") and state.reference is not None:
            return state.reference
        return state.forecast

    def _expired(self, state: SessionState, now: float) -> bool:
        """Idle past the expiry of the forecast acted on (:meth:`forecast_of`)."""
        forecast = self.forecast_of(state)
        return state.idle_since is not None and forecast is not None and now - state.idle_since >= forecast.expiry

    def _thrashing(self, view: SessionView) -> bool:
        """Rule 5's thrashing exception (module doc): latched at the first step at which, with
        ``act_when_thrashing`` and passing through, the resident working sets exceed the GPU plus the
        host tier. O(sessions) per step until latched, O(1) after."""
        if not self.thrash_latched and self.settings.act_when_thrashing and not self.acting:
            used = sum(view.working_set(state.key) for state in view if state.resident)
            self.thrash_latched = used > self.admitted_capacity
        return self.thrash_latched

    def _demote(self, view: SessionView, key: str, plan: Plan) -> None:
        view.set_residency(key, False, demoted=True)
        plan.demoted.append(key)
        self.demotions += 1

    def _aged(self, key: str, waited: float) -> bool:
        """Past the starvation bound: waited ``max_wait_s`` or held in ``max_passes`` steps."""
        return waited >= self.settings.max_wait_s or self._passes.get(key, 0) >= self.settings.max_passes

    def _candidates(
        self, idle: list[tuple[SessionState, float]], now: float, served: int, incoming: float
    ) -> list[tuple[float, SessionState, float]]:
        """Idle resident sessions as ``(keep - drop, state, blocks)``, best first, their demotion
        making room for an admission of ``incoming`` blocks; those with ``keep - drop > 0`` are the
        ones whose demotion pays."""
        out = []
        for state, blocks in idle:
            keep, drop = self.keep_and_drop(state, blocks, now, served, incoming)
            out.append((keep - drop, state, blocks))
        out.sort(key=lambda c: (-c[0], c[1].first_arrival, c[1].key))
        return out
