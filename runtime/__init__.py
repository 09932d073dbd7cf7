"""CacheWise inside vLLM 0.33: a learned eviction order for the GPU prefix cache.

Modules (import what you need; this package imports nothing so that ``replay`` stays light):

``policy``          ``ReusePrediction`` / ``ReusePredictor``: the predictor contract
``eviction_order``  ``EvictionOrder``: candidate heaps, chain links, time rule
``block_pool``      ``ScoredBlockPool``: vLLM's ``BlockPool`` with that order
``hooks``           ``use_policy`` / ``install_hooks``: how pools get into vLLM's KV-cache manager;
                    the scheduler hooks that write the request lifecycle into the session view
``plugin``          ``register``, ``wired``: the entry point and the one place an engine is wired
                    (it creates the engine's one ``SessionView``)
``sessions``        ``SessionView``: sessions, threads, the block-hash -> thread index, forecasts
``host_sets``       ``HostSets``: the view's host-tier working sets (which CPU chunks are whose)
``learned``         ``LearnedPredictor``: the exported LightGBM scorer as a predictor
``request_calls``   a finished ``Request`` as a ``FinishedCall`` (hints; threads named by the view)
``tool_calls``      tool-call parsers for decoded output (Hermes/Qwen, OpenAI JSON)
``scheduler``       prefix-aware and residency schedulers (``--scheduler-cls``)
``residency``       ``ResidencyController``: admission and demotion over the view
``prefetch``        host-tier prefetch of demoted sessions
``cpu_policy``      ``CacheWiseCachePolicy``: vLLM's CPU offloading policy by predicted next use
``config``          the ``cachewise`` settings
``metrics``         counters, Prometheus export, stat log lines
``cpu_engine``      the one CPU builder of vLLM's scheduler (tests, benchmark, replay, config check)
"""
