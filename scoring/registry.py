"""Where the MLflow registry is: the tracking URI shared by training and serving.

``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the current working
directory (MLflow's own default store name; ``dvc repro`` runs in the repository root, so
the pipeline's registry is ``<repo>/mlflow.db``), made absolute so that logs name the file.
Pure function of the environment and the working directory; imports nothing heavy (no
MLflow), so the runtime can resolve a ``models:/`` URI without importing training code.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    """The MLflow tracking URI in use (module doc)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"
