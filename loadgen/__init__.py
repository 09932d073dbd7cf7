"""``cachewise.loadgen``: real agent clients against an OpenAI-compatible server (``cachewise agents``).

Not loaded by vLLM (that is :mod:`cachewise.runtime`). Modules: :mod:`.filler` (prompt text
of a given length), :mod:`.tiny_model` (a local model for serving tests), :mod:`.client`
(the asyncio agents), :mod:`.prom` (scraping ``/metrics``), :mod:`.server` (starting a vLLM
server with the plugin).
"""
