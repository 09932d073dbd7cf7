"""The serving half of the model contract: what an exported model is and how it is scored.

Training writes through this package (:mod:`.exported` ``write_export``, the checksum and
structural check of :mod:`.model_text`, the idle conditioner of :mod:`.idle`) and the runtime
reads through it (``load_exported``), so the runtime never imports :mod:`cachewise.train`.
Nothing here imports pandas, matplotlib or MLflow at module level.
"""
