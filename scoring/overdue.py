"""The overdue rule: how much longer a prefix or session idle past its prediction stays idle.

One rule, stated and implemented here only, for everything that ranks idle prefixes or
sessions once their prediction has passed::

    remaining(e) = max(e, MIN_OVERDUE_STEP_S)      # e = seconds idle so far

"Idle as long again": the median of a Pareto tail with index 1 (``P(gap > x | gap > e) =
e / x``) is ``2 e``, so ``e`` more seconds; floored at :data:`MIN_OVERDUE_STEP_S` so that
something overdue right after it went idle still moves into the future. Users:

* :mod:`cachewise.scoring.idle`: past the whole residual range the conditioned gap is
  ``e + remaining(e)``;
* :mod:`cachewise.runtime.eviction_order` (and the guard's learned shadow,
  :mod:`cachewise.runtime.guard`): an overdue block is re-keyed to ``now + remaining(now -
  freed_at)``; each re-key at least doubles the idle horizon, so a block is re-keyed
  O(log(max_idle / MIN_OVERDUE_STEP_S)) times per free period;
* :meth:`cachewise.runtime.sessions.Forecast.remaining`: past every quantile of the
  forecast, the remaining gap is ``remaining(e)``;
* :mod:`cachewise.runtime.residency` and :mod:`cachewise.runtime.cpu_policy`: a session
  without a forecast has ``remaining(e)`` left.

``tests/test_overdue_rule.py`` checks that each of them gives this value. O(1); no imports.
"""

from __future__ import annotations

MIN_OVERDUE_STEP_S = 1.0
"""Smallest remaining idle time (s) of anything overdue (one freed and predicted back at once)."""


def overdue_remaining(idle_s: float) -> float:
    """Seconds an overdue prefix or session idle ``idle_s`` seconds is expected to stay idle (module doc)."""
    return idle_s if idle_s > MIN_OVERDUE_STEP_S else MIN_OVERDUE_STEP_S
