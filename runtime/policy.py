"""The contract between a reuse predictor and the scored block pool.

A *predictor* is asked once per finished request (never per block, never per eviction):
"when will the prefix this request leaves in the KV cache be needed again?". It answers
with a :class:`ReusePrediction` on the pool's clock, or ``None`` for no opinion. The
learned scorer (:mod:`cachewise.runtime.learned`), per-tool means, TTLs and the recorded-gap
policy of the replay benchmark are all :class:`ReusePredictor` implementations.

How the pool turns predictions into an eviction order (in full:
:mod:`cachewise.runtime.eviction_order`):

1. free blocks that hold no prefix-cache hash are reused first (vLLM does the same);
2. then hashed blocks whose prefix has *expired*: ``expire_at <= now`` with no reuse since;
3. then hashed blocks with no prediction, in vLLM's LRU order;
4. then hashed blocks by reuse key (initially ``reuse_at``), farthest first, deeper block
   first on a tie, then vLLM's LRU order.

Only chain *leaves* (cached blocks with no cached child) are ever candidates, so an
ancestor is never evicted while a descendant is cached; when a leaf is evicted its
prediction is folded into its parent (soonest ``reuse_at``, latest ``expire_at``).

Time rule: when ``now`` passes a block's reuse key without a reuse, the key becomes
``now + max(time idle so far, 1 s)`` (expected to stay idle as long again), so an overdue
prefix sinks steadily; at ``expire_at`` it is evicted before anything predicted.
``expire_at`` is capped at ``free time + max_idle_s`` by the pool: no prefix is immortal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vllm.v1.request import Request


class ReusePrediction(NamedTuple):
    """When a finished request's prefix is expected back, on the pool's clock (seconds).

    ``reuse_at``: predicted absolute time of the next request reusing the prefix
    (``math.inf`` = never). ``expire_at``: after this time, with no reuse, the prefix counts
    as ended and is evicted first (``math.inf`` = never; the pool caps it).
    """

    reuse_at: float
    expire_at: float


@runtime_checkable
class ReusePredictor(Protocol):
    """Anything that predicts, per finished request, when its prefix will be reused."""

    def on_request_finished(self, request: Request, now: float) -> ReusePrediction | None:
        """Prediction for ``request``'s prefix, freed at ``now``; ``None`` = no opinion.

        Called once per request that finishes while holding KV blocks, before its blocks
        return to the free queue. May raise; the pool counts that as a fallback.
        """
        ...


class InvalidPrediction(ValueError):
    """A predictor returned something the pool cannot order by (NaN, -inf, wrong type)."""


def checked(prediction: object, now: float, max_idle_s: float) -> ReusePrediction:
    """``prediction`` validated and with ``expire_at`` capped at ``now + max_idle_s``.

    Raises :class:`InvalidPrediction` for a non-:class:`ReusePrediction`, a NaN field, a
    ``reuse_at`` of ``-inf`` or an ``expire_at`` of ``-inf``.
    """
    if not isinstance(prediction, tuple) or len(prediction) != 2:
        raise InvalidPrediction(f"expected a ReusePrediction, got {prediction!r}")
    reuse_at, expire_at = (float(x) for x in prediction)
    if math.isnan(reuse_at) or math.isnan(expire_at):
        raise InvalidPrediction(f"NaN in prediction {prediction!r}")
    if reuse_at == -math.inf or expire_at == -math.inf:
        raise InvalidPrediction(f"-inf in prediction {prediction!r}")
    return ReusePrediction(reuse_at, min(expire_at, now + max_idle_s))


#: The one clock of a served engine: wall-clock seconds, the clock vLLM stamps
#: ``Request.arrival_time`` with. The pool (predictions, expiry, guard), the scheduler (prefix
#: ranking's waits, residency) and request ages all read the *same* clock -- this one when
#: serving, the binding's (:class:`ManualClock`, simulated time) in the replay -- so a wait, an
#: age and a predicted return are always comparable. (``time.time`` itself: no call overhead.)
engine_clock: Callable[[], float] = time.time


class ManualClock:
    """A clock that moves only when told (``clock.now = t``): the pool's injectable clock for
    simulated time (the replay) and for tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
