"""The replay benchmark: real agent sessions through vLLM's real scheduler, closed loop.

``cachewise replay`` (:mod:`.cli`) replays the sessions of an events table through vLLM
0.33's v1 ``Scheduler`` and ``KVCacheManager`` on the CPU (:mod:`.engine`), advancing a
simulated clock with a GPU cost model measured on real hardware (:mod:`.costmodel`), and
compares eviction policies (:mod:`.policies`) at chosen KV capacities and concurrencies.

Modules, in data-flow order: :mod:`.workload` (events -> call plans), :mod:`.tokens`
(token ids with the recorded prefix sharing), :mod:`.engine`, :mod:`.driver` (the closed
loop), :mod:`.metrics` with :mod:`.belady` (MIN of a run's own access sequence), :mod:`.runner`
(one run), :mod:`.selection` and :mod:`.provenance` (which sessions), :mod:`.sweep` (seeds x grid),
:mod:`.stats` (intervals, paired differences), :mod:`.targets`,
:mod:`.report`.

Importing this package selects vLLM's CPU platform (``VLLM_TARGET_DEVICE=cpu``) and
warning-level vLLM logs, unless those variables are already set.
"""

import os

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
