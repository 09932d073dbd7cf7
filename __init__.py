"""CacheWise: learned, tool-call-aware KV-cache eviction for coding-agent serving on vLLM.

Subpackages (one folder each): ``data`` (trace loaders and the events table),
``features`` (the one feature definition shared by training and serving), ``train``
(LightGBM model, metrics, MLflow registry, export), ``runtime`` (the vLLM plugin).
"""

__version__ = "0.1.0"
